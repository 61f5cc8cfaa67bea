package mcpgw

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/mcpagent/mcpagent/firewall"
	"github.com/mcpagent/mcpagent/intercept"
)

// Defaults for an OnPath whose fields are zero. The marks avoid OpenWrt's
// fw4 and mwan3 bits, as the agent's do.
const (
	DefaultOnPathQueue       = 5125
	DefaultOnPathMarkMask    = 0x0f000000
	DefaultOnPathConvertMark = 0x01000000
	DefaultOnPathRejectMark  = 0x02000000
	DefaultOnPathTProxyMark  = 0x03000000
	DefaultOnPathTable       = 5125
	DefaultOnPathRulePref    = 900
	DefaultOnPathMaxPorts    = 256
	DefaultOnPathPortIdle    = time.Minute
)

// OnPath makes a Server an on-path MCP (draft-boucadair-mptcp-plain-mode
// sections 6.2.1 and 7): it runs on a router on the forwarding path and
// terminates only the Multipath TCP connections whose SYN carries MP_CAPABLE
// and, in its data, an empty MP_CONVERT destination option; it converts them
// to plain TCP toward the SYN's own destination. Every other packet,
// including native MPTCP connections and their MP_JOIN subflows, is
// forwarded untouched.
//
// Serve queues the forwarded MPTCP SYNs (TCP option 30) to Queue. A
// terminated SYN gets ConvertMark and is delivered by TPROXY into a
// transparent MPTCP listener on 127.0.0.1 (::1 for IPv6) and the SYN's
// destination port, opened on first use: Linux accepts an MP_JOIN only on a
// listener of the connection's own port (net/mptcp/subflow.c,
// subflow_use_different_sport). An MP_JOIN is delivered the same way when
// its token names a connection this host terminated, as the kernel's
// MPTCP socket diagnostics tell. A terminated SYN whose listener cannot be
// opened (a local service holds the port) gets RejectMark and a TCP reset:
// forwarded, its MP_CONVERT would reach the server as data. TProxyMark,
// Table and RulePriority deliver the terminated connections' packets
// locally. Zero fields take the defaults.
//
// Interfaces, if not empty, are the only interfaces whose forwarded SYNs
// are taken over: the customers' side. Otherwise SYNs from every side
// are, also from hosts on the Internet toward the customers. Connections
// the MCP terminates pass its INPUT and OUTPUT hooks, not FORWARD: the
// router's forwarding rules do not see them; Config.Deny limits where
// they go.
//
// Any host on the path can ask for a listener on every port, with SYNs
// whose source it may forge, so the listeners are bounded: at most
// MaxPorts are open at once. A SYN for one more port closes the listener
// whose port has seen no SYN for the longest time, if that is at least
// PortIdle ago; otherwise it is reset. Connections a closed listener
// accepted go on, but cannot add subflows. A listener holds its port on
// the loopback address, so a local service that binds the port while it
// is open fails: start local services first.
type OnPath struct {
	Queue                               uint16
	ConvertMark, RejectMark, TProxyMark uint32
	MarkMask                            uint32
	Table, RulePriority                 int
	Interfaces                          []string
	MaxPorts                            int
	PortIdle                            time.Duration
}

// withDefaults returns o with its zero fields set to the defaults.
func (o OnPath) withDefaults() OnPath {
	if o.Queue == 0 {
		o.Queue = DefaultOnPathQueue
	}
	if o.MarkMask == 0 {
		o.MarkMask = DefaultOnPathMarkMask
	}
	if o.ConvertMark == 0 {
		o.ConvertMark = DefaultOnPathConvertMark
	}
	if o.RejectMark == 0 {
		o.RejectMark = DefaultOnPathRejectMark
	}
	if o.TProxyMark == 0 {
		o.TProxyMark = DefaultOnPathTProxyMark
	}
	if o.Table == 0 {
		o.Table = DefaultOnPathTable
	}
	if o.RulePriority == 0 {
		o.RulePriority = DefaultOnPathRulePref
	}
	if o.MaxPorts == 0 {
		o.MaxPorts = DefaultOnPathMaxPorts
	}
	if o.PortIdle == 0 {
		o.PortIdle = DefaultOnPathPortIdle
	}
	return o
}

// validate checks an OnPath that has its defaults.
func (o OnPath) validate() error {
	marks := []struct {
		name string
		v    uint32
	}{{"convert", o.ConvertMark}, {"reject", o.RejectMark}, {"tproxy", o.TProxyMark}}
	for i, m := range marks {
		if m.v&^o.MarkMask != 0 {
			return fmt.Errorf("on-path %s mark %#x is outside mark mask %#x", m.name, m.v, o.MarkMask)
		}
		for _, p := range marks[:i] {
			if p.v == m.v {
				return fmt.Errorf("on-path %s and %s marks are both %#x", p.name, m.name, m.v)
			}
		}
	}
	switch {
	case o.Table < 1 || int64(o.Table) > 0xfffffffe || o.Table >= 253 && o.Table <= 255:
		return fmt.Errorf("on-path routing table %d is reserved or out of range", o.Table)
	case o.RulePriority < 1 || o.RulePriority >= 32766:
		return fmt.Errorf("on-path rule priority %d is not in 1-32765", o.RulePriority)
	case o.MaxPorts < 1 || o.MaxPorts > 2*65535:
		return fmt.Errorf("on-path port limit %d is not in 1-131070", o.MaxPorts)
	case o.PortIdle < 0:
		return fmt.Errorf("on-path port idle time %v is negative", o.PortIdle)
	}
	for i, name := range o.Interfaces {
		if err := firewall.ValidInterfaceName(name); err != nil {
			return fmt.Errorf("on-path %w", err)
		}
		if slices.Contains(o.Interfaces[:i], name) {
			return fmt.Errorf("on-path interface %q listed twice", name)
		}
	}
	return nil
}

// onPathAction is what an on-path MCP does with a queued SYN.
type onPathAction uint8

const (
	// forward lets the SYN continue untouched.
	forward onPathAction = iota
	// terminate delivers the SYN to the listener of its port.
	terminate
	// checkJoin terminates an MP_JOIN if its token is local, else forwards it.
	checkJoin
	// ignoreConvert forwards a SYN whose MP_CONVERT must be ignored: it
	// has no MP_CAPABLE (section 4 of the draft).
	ignoreConvert
)

// decideOnPath is the on-path MCP's pure decision for a SYN.
func decideOnPath(s intercept.SYN) onPathAction {
	switch {
	case s.MPTCP == intercept.NativeCapable && s.MPConvert == intercept.MPConvertEmpty:
		return terminate
	case s.MPTCP == intercept.NativeJoin:
		return checkJoin
	case s.MPTCP != intercept.NativeCapable && s.MPConvert != intercept.MPConvertNone:
		return ignoreConvert
	}
	// Native MPTCP (no MP_CONVERT), and MP_CONVERT with an address: the
	// latter is addressed to an off-path MCP, which may be further on.
	return forward
}

// Names of the on-path MCP's iptables chains.
const (
	chainOnPath       = "MCPGW"
	chainOnPathDivert = "MCPGW_DIVERT"
	chainOnPathReject = "MCPGW_REJECT"
)

// tproxyAddr returns the address the transparent listeners bind and the
// TPROXY rule names.
func tproxyAddr(v6 bool) netip.Addr {
	if v6 {
		return netip.IPv6Loopback()
	}
	return netip.AddrFrom4([4]byte{127, 0, 0, 1})
}

// onPathRules returns the iptables-restore script that installs the on-path
// rules of o (with its defaults) for IPv4 or IPv6, replacing the chains'
// contents if they exist. removeOnPathRules undoes it.
//
// In mangle PREROUTING, for TCP to another host: packets of a local
// transparent socket (later packets of terminated connections, and replies
// to a preserved source address) get TProxyMark and are accepted; a SYN the
// on-path MCP released with ConvertMark goes to TPROXY on its own port; a
// new SYN carrying an MPTCP option (kind 30), from one of Interfaces if
// any are given, is queued, or passes when nobody reads the queue. In
// filter FORWARD, a SYN released with RejectMark is answered with a reset.
func onPathRules(o OnPath, v6 bool) string {
	mask := func(v uint32) string { return fmt.Sprintf("%#x/%#x", v, o.MarkMask) }
	var b strings.Builder
	fmt.Fprintf(&b, "# mcpgw on-path %s rules\n", familyName(v6))
	fmt.Fprintf(&b, "*mangle\n:%s - [0:0]\n:%s - [0:0]\n", chainOnPath, chainOnPathDivert)
	fmt.Fprintf(&b, "-A %s -m addrtype --dst-type LOCAL -j RETURN\n", chainOnPath)
	fmt.Fprintf(&b, "-A %s -p tcp -m socket --transparent -j %s\n", chainOnPath, chainOnPathDivert)
	fmt.Fprintf(&b, "-A %s -p tcp -m mark --mark %s -j TPROXY --on-port 0 --on-ip %s --tproxy-mark %s\n",
		chainOnPath, mask(o.ConvertMark), tproxyAddr(v6), mask(o.TProxyMark))
	in := []string{""} // match options: none, or one rule per interface
	if len(o.Interfaces) > 0 {
		in = make([]string, len(o.Interfaces))
		for i, name := range o.Interfaces {
			in[i] = "-i " + name + " "
		}
	}
	for _, i := range in {
		fmt.Fprintf(&b, "-A %s %s-p tcp --syn -m tcp --tcp-option 30 -m mark --mark %s -j NFQUEUE --queue-num %d --queue-bypass\n",
			chainOnPath, i, mask(0), o.Queue)
	}
	fmt.Fprintf(&b, "-A %s -j MARK --set-xmark %s\n-A %s -j ACCEPT\n", chainOnPathDivert, mask(o.TProxyMark), chainOnPathDivert)
	fmt.Fprintf(&b, "-I PREROUTING 1 -p tcp -j %s\nCOMMIT\n", chainOnPath)
	fmt.Fprintf(&b, "*filter\n:%s - [0:0]\n", chainOnPathReject)
	fmt.Fprintf(&b, "-A %s -p tcp -m mark --mark %s -j REJECT --reject-with tcp-reset\n", chainOnPathReject, mask(o.RejectMark))
	fmt.Fprintf(&b, "-I FORWARD 1 -p tcp -j %s\nCOMMIT\n", chainOnPathReject)
	return b.String()
}

// removeOnPathRules returns the iptables-restore script that removes what
// onPathRules installed. It fails as a whole if the jumps are missing.
func removeOnPathRules(v6 bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# mcpgw on-path %s rules, removed\n", familyName(v6))
	fmt.Fprintf(&b, "*mangle\n-D PREROUTING -p tcp -j %s\n:%s - [0:0]\n:%s - [0:0]\n-X %s\n-X %s\nCOMMIT\n",
		chainOnPath, chainOnPath, chainOnPathDivert, chainOnPath, chainOnPathDivert)
	fmt.Fprintf(&b, "*filter\n-D FORWARD -p tcp -j %s\n:%s - [0:0]\n-X %s\nCOMMIT\n",
		chainOnPathReject, chainOnPathReject, chainOnPathReject)
	return b.String()
}

func familyName(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

// errOnPathUnsupported is returned where the on-path MCP and source
// preservation cannot run.
var errOnPathUnsupported = errors.New("not supported on this OS: the on-path MCP and source preservation need Linux netfilter and Multipath TCP")
