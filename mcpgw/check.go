package mcpgw

import (
	"errors"
	"net"
	"net/netip"

	"github.com/mcpagent/mcpagent/mptcpleg"
)

// Reason says why a leg was torn down. The values are stable: they appear
// as the reason= key of log lines and as the keys of Stats.TornDown.
type Reason string

// Reasons for tearing a leg down.
const (
	// ReasonClientLimit: the client already had MaxConnsPerClient legs open.
	ReasonClientLimit Reason = "client-limit"
	// ReasonServerLimit: MaxConns legs were open.
	ReasonServerLimit Reason = "server-limit"
	// ReasonHandshake: the client did not complete its handshake within
	// HeaderTimeout, or reset it: a SYN with data from a forged address,
	// for one (see Config.TrustSYNData).
	ReasonHandshake Reason = "handshake"
	// ReasonHeaderTimeout: no complete header within HeaderTimeout.
	ReasonHeaderTimeout Reason = "header-timeout"
	// ReasonHeaderTruncated: the client closed before a complete header.
	ReasonHeaderTruncated Reason = "header-truncated"
	// ReasonReadError: reading the header failed (for example a reset).
	ReasonReadError Reason = "read-error"
	// ReasonMalformed: the first bytes are not MP_CONVERT options and EOL.
	ReasonMalformed Reason = "malformed"
	// ReasonNoDestination: no destination (D=0) option, or no option at all
	// before the EOL.
	ReasonNoDestination Reason = "no-destination"
	// ReasonEmptyOption: the destination option of a leg to a listen
	// address carries no address. That is the on-path form (§6.2.1), for
	// an MCP on the path to the destination, not one addressed directly.
	ReasonEmptyOption Reason = "empty-option"
	// ReasonAddressOnPath: a leg an on-path listener took over names a
	// destination; only the empty option asks an on-path MCP to convert.
	ReasonAddressOnPath Reason = "address-on-path"
	// ReasonDuplicateOption: two options with the same D bit, or more than
	// two options (§4 forbids both).
	ReasonDuplicateOption Reason = "duplicate-option"
	// ReasonProtocol: an option names a protocol other than TCP (6).
	ReasonProtocol Reason = "protocol"
	// ReasonUnspecified: 0.0.0.0/8 or ::, which Linux connects to the
	// host itself.
	ReasonUnspecified Reason = "unspecified"
	// ReasonLoopback: 127.0.0.0/8 or ::1 (§4 of the draft).
	ReasonLoopback Reason = "loopback"
	// ReasonMulticast: 224.0.0.0/4 or ff00::/8 (§4 of the draft).
	ReasonMulticast Reason = "multicast"
	// ReasonBroadcast: 255.255.255.255 or the directed broadcast address of
	// one of the host's IPv4 subnets (§4 of the draft).
	ReasonBroadcast Reason = "broadcast"
	// ReasonLinkLocal: 169.254.0.0/16 or fe80::/10. An MP_CONVERT address
	// has no zone, so an IPv6 link-local one is ambiguous on a host with
	// several links; and a link-local destination can only be a neighbour
	// of the MCP itself, such as a cloud metadata service at
	// 169.254.169.254 that hands out the host's credentials. No remote
	// client has a legitimate reason to reach one.
	ReasonLinkLocal Reason = "link-local"
	// ReasonOwnAddress: one of the host's own addresses, not in AllowLocal.
	// Services that listen only on the MCP's addresses must not become
	// reachable through it.
	ReasonOwnAddress Reason = "own-address"
	// ReasonDenied: the destination is in a Deny prefix.
	ReasonDenied Reason = "denied"
	// ReasonDialFailed: the connection to the destination failed (refused,
	// unreachable, timed out); §5.2: the client then sees a reset.
	ReasonDialFailed Reason = "dial-failed"
	// ReasonShutdown: Serve was stopping before the leg was relayed.
	ReasonShutdown Reason = "shutdown"
)

// thisNetwork is 0.0.0.0/8, "this host on this network" (RFC 6890), never
// a valid destination.
var thisNetwork = netip.MustParsePrefix("0.0.0.0/8")

// limitedBroadcast is 255.255.255.255.
var limitedBroadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// destination picks the destination out of a header that ParseHeader
// accepted, so there are at most two options with different D bits. It
// requires every option to name TCP and a destination (D=0) option. Off
// path, that option must carry an address; the port is the option's, or
// else the port the client connected to (§5.2). On path, the option must be
// empty and the destination is local, where the client connected (§6.2.1).
// The address is returned unmapped.
func destination(opts []mptcpleg.Option, local netip.AddrPort, onPath bool) (netip.AddrPort, Reason) {
	var dst *mptcpleg.Option
	for i := range opts {
		if opts[i].Protocol != mptcpleg.ProtocolTCP {
			return netip.AddrPort{}, ReasonProtocol
		}
		if !opts[i].Source {
			dst = &opts[i]
		}
	}
	switch {
	case dst == nil:
		return netip.AddrPort{}, ReasonNoDestination
	case onPath && dst.Addr.IsValid():
		return netip.AddrPort{}, ReasonAddressOnPath
	case onPath:
		return netip.AddrPortFrom(local.Addr().Unmap(), local.Port()), ""
	case !dst.Addr.IsValid():
		return netip.AddrPort{}, ReasonEmptyOption
	}
	port := dst.Port
	if port == 0 {
		port = local.Port()
	}
	return netip.AddrPortFrom(dst.Addr.Unmap(), port), ""
}

// source returns the address of the header's source (D=1) option if it is
// of dst's family and in one of the allowed prefixes (normalized), else
// the zero Addr: the connection to dst is then made from this host's own
// address. A source port is never used: two connections from one client
// port would collide.
func source(opts []mptcpleg.Option, dst netip.AddrPort, allowed []netip.Prefix) netip.Addr {
	for _, o := range opts {
		a := o.Addr.Unmap()
		if o.Source && a.IsValid() && a.Is4() == dst.Addr().Is4() && containsAddr(allowed, a) {
			return a
		}
	}
	return netip.Addr{}
}

// headerReason maps a ParseHeader error other than ErrTruncated to a Reason.
func headerReason(err error) Reason {
	switch {
	case errors.Is(err, mptcpleg.ErrNoOption):
		return ReasonNoDestination
	case errors.Is(err, mptcpleg.ErrSameDirection), errors.Is(err, mptcpleg.ErrTooManyOptions):
		return ReasonDuplicateOption
	}
	return ReasonMalformed
}

// addrSet is a snapshot of the host's own addresses and of the directed
// broadcast addresses of its IPv4 subnets. The zero value is empty.
type addrSet struct {
	own       map[netip.Addr]bool
	broadcast map[netip.Addr]bool
}

// newAddrSet builds an addrSet from interface addresses (as returned by
// net.InterfaceAddrs) and extra own addresses (the listen addresses).
func newAddrSet(ifaddrs []net.Addr, extra []netip.Addr) addrSet {
	s := addrSet{own: make(map[netip.Addr]bool), broadcast: make(map[netip.Addr]bool)}
	for _, a := range extra {
		s.own[a.Unmap()] = true
	}
	for _, ia := range ifaddrs {
		var ipn net.IPNet
		switch v := ia.(type) {
		case *net.IPNet:
			ipn = *v
		case *net.IPAddr:
			ipn = net.IPNet{IP: v.IP}
		default:
			continue
		}
		a, ok := netip.AddrFromSlice(ipn.IP)
		if !ok {
			continue
		}
		a = a.Unmap()
		s.own[a] = true
		ones, bits := ipn.Mask.Size()
		// /31 (RFC 3021) and /32 have no broadcast address.
		if a.Is4() && bits == 32 && ones < 31 {
			b := a.As4()
			for i := range b {
				b[i] |= ^ipn.Mask[i]
			}
			s.broadcast[netip.AddrFrom4(b)] = true
		}
	}
	return s
}

// checkDestination reports why mcpgw must refuse to connect to dst, or ""
// if it may. The fixed classes come first and cannot be overridden; then
// deny; then own addresses, unless in allowLocal. Prefixes must already be
// normalized by normPrefix; dst may be IPv4-mapped.
func checkDestination(dst netip.Addr, own addrSet, deny, allowLocal []netip.Prefix) Reason {
	a := dst.Unmap()
	switch {
	case !a.IsValid() || a.IsUnspecified() || thisNetwork.Contains(a):
		return ReasonUnspecified
	case a.IsLoopback():
		return ReasonLoopback
	case a.IsMulticast():
		return ReasonMulticast
	case a == limitedBroadcast || own.broadcast[a]:
		return ReasonBroadcast
	case a.IsLinkLocalUnicast():
		return ReasonLinkLocal
	case containsAddr(deny, a):
		return ReasonDenied
	case own.own[a] && !containsAddr(allowLocal, a):
		return ReasonOwnAddress
	}
	return ""
}

func containsAddr(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// normPrefix masks p and turns an IPv4-mapped IPv6 prefix of /96 or longer
// into the IPv4 prefix it covers, so that it matches unmapped addresses.
func normPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked()
}
