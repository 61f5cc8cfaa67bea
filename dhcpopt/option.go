package dhcpopt

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv6"
)

// DefaultV4Code is the DHCPv4 option code of the MCP list when none is
// configured. draft-boucadair-mptcp-dhc never got a code from IANA, so the
// default lies in the range 224–254, which RFC 3942 leaves site-specific:
// IANA assigns no code there.
const DefaultV4Code uint8 = 224

// DefaultV6Code is the DHCPv6 option code of the MCP list when none is
// configured. The IANA DHCPv6 "Option Codes" registry, unlike DHCPv4's, has
// no site-specific or private-use range: every code may be assigned (by
// expert review and standards action), and IANA assigns them upwards from
// the low end, so far all below 200. A code near the top of the 16-bit space
// is therefore the least likely to collide with a future assignment.
// Operators who agree on another code configure it.
const DefaultV6Code uint16 = 65001

// MaxAddrs bounds the addresses one option may carry. A DHCPv4 option holds
// at most 63 addresses (255 octets); RFC 3396 lets a server split a longer
// one, which the DHCPv4 decoder concatenates.
const MaxAddrs = 64

// Reasons an option is rejected, stable words for logs and counters.
const (
	ReasonEmpty       = "empty"           // no address at all
	ReasonLength      = "length"          // not a whole number of addresses
	ReasonTooLong     = "too-long"        // more than MaxAddrs addresses, or hex longer than that
	ReasonHex         = "hex"             // FromHex: not an even number of hex digits and nothing else
	ReasonRepeated    = "repeated"        // the DHCPv6 option appears more than once (RFC 8415 §21.1)
	ReasonDuplicate   = "duplicate"       // an address is listed twice
	ReasonFamily      = "family"          // AppendV4 given a non-IPv4 address, AppendV6 a non-IPv6 or zoned one
	ReasonUnspecified = "unspecified"     // 0.0.0.0 or ::
	ReasonThisNetwork = "this-network"    // 0.0.0.0/8 (RFC 1122 §3.2.1.3)
	ReasonLoopback    = "loopback"        // 127.0.0.0/8 or ::1
	ReasonMulticast   = "multicast"       // 224.0.0.0/4 or ff00::/8
	ReasonBroadcast   = "broadcast"       // 255.255.255.255
	ReasonReserved    = "reserved"        // 240.0.0.0/4, "class E" (RFC 1112 §4)
	ReasonLinkLocal   = "link-local"      // 169.254.0.0/16 or fe80::/10: meaningless off the link
	ReasonV4Mapped    = "ipv4-mapped"     // ::ffff:0:0/96 (RFC 4291 §2.5.5.2)
	ReasonV4Compat    = "ipv4-compatible" // ::/96, deprecated by RFC 4291 §2.5.5.1
)

// ErrAbsent reports that a DHCP message does not carry the MCP-list option.
var ErrAbsent = errors.New("mcp list option absent")

// Error is why an MCP-list option, or a hex string holding one, was
// rejected. A rejected option is rejected as a whole: the caller keeps the
// list it had.
type Error struct {
	// Reason is one of the Reason constants.
	Reason string
	// Addr is the offending address for the reasons about one address
	// (ReasonDuplicate, ReasonFamily and the address classes); otherwise it
	// is the zero Addr.
	Addr netip.Addr
	msg  string
}

func (e *Error) Error() string { return e.msg }

func newError(reason, format string, args ...any) *Error {
	return &Error{Reason: reason, msg: fmt.Sprintf(format, args...)}
}

func addrError(reason string, a netip.Addr) *Error {
	msg := fmt.Sprintf("%s address %s in mcp list", reason, a)
	if reason == ReasonFamily {
		msg = fmt.Sprintf("address %q is of the wrong family for the mcp list", a)
	}
	return &Error{Reason: reason, Addr: a, msg: msg}
}

// ParseV4 decodes the payload of a DHCPv4 MCP-list option: one or more
// IPv4 addresses of 4 octets each, every one usable as a unicast
// destination and none listed twice. Anything else is an *Error.
func ParseV4(payload []byte) ([]netip.Addr, error) {
	return parse(payload, 4, v4Reason)
}

// ParseV6 decodes the payload of a DHCPv6 MCP-list option: one or more
// IPv6 addresses of 16 octets each, every one usable as a global unicast
// destination and none listed twice. Anything else is an *Error.
func ParseV6(payload []byte) ([]netip.Addr, error) {
	return parse(payload, 16, v6Reason)
}

// AppendV4 appends the DHCPv4 option payload listing addrs to b. It
// rejects, with an *Error, every list that ParseV4 would reject, so that
// ParseV4 returns addrs for the bytes appended.
func AppendV4(b []byte, addrs []netip.Addr) ([]byte, error) {
	return appendAddrs(b, addrs, v4Reason)
}

// AppendV6 appends the DHCPv6 option payload listing addrs to b, as AppendV4
// does for DHCPv4.
func AppendV6(b []byte, addrs []netip.Addr) ([]byte, error) {
	return appendAddrs(b, addrs, v6Reason)
}

func parse(payload []byte, size int, reason func(netip.Addr) string) ([]netip.Addr, error) {
	if len(payload)%size != 0 {
		return nil, newError(ReasonLength, "mcp list of %d octets is not a whole number of %d-octet addresses", len(payload), size)
	}
	// Check the count before allocating: the payload may be long.
	if err := checkCount(len(payload) / size); err != nil {
		return nil, err
	}
	addrs := make([]netip.Addr, 0, len(payload)/size)
	for i := 0; i < len(payload); i += size {
		a, _ := netip.AddrFromSlice(payload[i : i+size])
		addrs = append(addrs, a)
	}
	if err := checkAddrs(addrs, reason); err != nil {
		return nil, err
	}
	return addrs, nil
}

func appendAddrs(b []byte, addrs []netip.Addr, reason func(netip.Addr) string) ([]byte, error) {
	if err := checkCount(len(addrs)); err != nil {
		return b, err
	}
	if err := checkAddrs(addrs, reason); err != nil {
		return b, err
	}
	for _, a := range addrs {
		b = append(b, a.AsSlice()...)
	}
	return b, nil
}

func checkCount(n int) error {
	switch {
	case n == 0:
		return newError(ReasonEmpty, "mcp list option carries no address")
	case n > MaxAddrs:
		return newError(ReasonTooLong, "mcp list of %d addresses is longer than %d", n, MaxAddrs)
	}
	return nil
}

func checkAddrs(addrs []netip.Addr, reason func(netip.Addr) string) error {
	for i, a := range addrs {
		if r := reason(a); r != "" {
			return addrError(r, a)
		}
		for _, b := range addrs[:i] {
			if a == b {
				return addrError(ReasonDuplicate, a)
			}
		}
	}
	return nil
}

// v4Reason names why a is no usable MCP address, or returns "".
func v4Reason(a netip.Addr) string {
	if !a.Is4() {
		return ReasonFamily
	}
	b := a.As4()
	switch {
	case a.IsUnspecified():
		return ReasonUnspecified
	case b[0] == 0:
		return ReasonThisNetwork
	case a.IsLoopback():
		return ReasonLoopback
	case a.IsMulticast():
		return ReasonMulticast
	case b == [4]byte{255, 255, 255, 255}:
		return ReasonBroadcast
	case b[0] >= 240:
		return ReasonReserved
	case a.IsLinkLocalUnicast():
		return ReasonLinkLocal
	}
	return ""
}

// v6Reason names why a is no usable MCP address, or returns "".
func v6Reason(a netip.Addr) string {
	if !a.Is6() || a.Zone() != "" {
		return ReasonFamily
	}
	b := a.As16()
	switch {
	case a.IsUnspecified():
		return ReasonUnspecified
	case a.IsLoopback():
		return ReasonLoopback
	case a.Is4In6():
		return ReasonV4Mapped
	case [12]byte(b[:12]) == [12]byte{}:
		return ReasonV4Compat
	case a.IsMulticast():
		return ReasonMulticast
	case a.IsLinkLocalUnicast():
		return ReasonLinkLocal
	}
	return ""
}

// maxHex bounds FromHex: the hex form of the longest valid option.
const maxHex = 2 * 16 * MaxAddrs

// FromHex decodes an option value as OpenWrt's DHCP clients pass it to
// their hook scripts: udhcpc as optN=<hex>, odhcp6c as OPTION_N=<hex>
// (N decimal). It accepts an even number of hex digits of either case and
// nothing else — no separators, no spaces — up to the length of the longest
// valid option; the empty string is an empty option. Errors are *Error.
func FromHex(s string) ([]byte, error) {
	if len(s) > maxHex {
		return nil, newError(ReasonTooLong, "hex option value of %d digits is longer than %d", len(s), maxHex)
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil, newError(ReasonHex, "hex option value: %v", err)
	}
	return b, nil
}

// FromDHCPv4 returns the MCP list that option code of m carries, with
// instances split per RFC 3396 already concatenated by the decoder. It
// returns an error wrapping ErrAbsent when m lacks the option, and one
// wrapping an *Error when the option is rejected. m must not be nil.
func FromDHCPv4(m *dhcpv4.DHCPv4, code uint8) ([]netip.Addr, error) {
	if err := checkV4Code(code); err != nil {
		return nil, err
	}
	oc := dhcpv4.GenericOptionCode(code)
	if !m.Options.Has(oc) {
		return nil, fmt.Errorf("dhcpv4 option %d: %w", code, ErrAbsent)
	}
	addrs, err := ParseV4(m.Options.Get(oc))
	if err != nil {
		return nil, fmt.Errorf("dhcpv4 option %d: %w", code, err)
	}
	return addrs, nil
}

// FromDHCPv6 returns the MCP list that option code of m carries, looking
// into the client message that relay messages wrap. It returns an error
// wrapping ErrAbsent when the message lacks the option, and one wrapping an
// *Error when the option is rejected, or repeated (RFC 8415 §21.1 allows an
// option once). m must not be nil.
func FromDHCPv6(m dhcpv6.DHCPv6, code uint16) ([]netip.Addr, error) {
	if err := checkV6Code(code); err != nil {
		return nil, err
	}
	inner, err := m.GetInnerMessage()
	if err != nil {
		return nil, fmt.Errorf("dhcpv6 option %d: unwrap relay message: %w", code, err)
	}
	opts := inner.Options.Get(dhcpv6.OptionCode(code))
	switch len(opts) {
	case 0:
		return nil, fmt.Errorf("dhcpv6 option %d: %w", code, ErrAbsent)
	case 1:
	default:
		return nil, fmt.Errorf("dhcpv6 option %d: %w", code, newError(ReasonRepeated, "mcp list option appears %d times", len(opts)))
	}
	addrs, err := ParseV6(opts[0].ToBytes())
	if err != nil {
		return nil, fmt.Errorf("dhcpv6 option %d: %w", code, err)
	}
	return addrs, nil
}

// checkV4Code rejects the DHCPv4 codes that are no options: Pad and End
// (RFC 2132 §3.1, §3.2).
func checkV4Code(code uint8) error {
	if code == 0 || code == 255 {
		return fmt.Errorf("dhcpv4 option code %d is not an option (pad or end)", code)
	}
	return nil
}

// checkV6Code rejects DHCPv6 option code 0, which is reserved.
func checkV6Code(code uint16) error {
	if code == 0 {
		return errors.New("dhcpv6 option code 0 is reserved")
	}
	return nil
}
