package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Rules describes what the agent needs from netfilter. The zero value is
// not valid; see Validate.
type Rules struct {
	// LANInterfaces are the interfaces whose forwarded TCP is intercepted.
	LANInterfaces []string
	// Queue is the NFQUEUE number the agent reads SYNs from.
	Queue uint16
	// TProxyPort is the port of the agent's transparent listeners, which
	// listen on the addresses TProxyListeners returns.
	TProxyPort uint16
	// ConvertMark, RejectMark and TProxyMark are packet marks within
	// MarkMask: the agent sets ConvertMark or RejectMark on a SYN it releases
	// with NF_REPEAT; TProxyMark is the mark the policy routing rule of
	// package route matches to deliver packets locally. They must be
	// distinct and non-zero.
	ConvertMark, RejectMark, TProxyMark uint32
	// MarkMask is the part of the packet mark the agent owns; the rules
	// neither read nor change bits outside it.
	MarkMask uint32
	// AliveTimeout is how long SYNs are queued after the agent's last
	// heartbeat (see Heartbeat), a whole number of seconds of at least
	// one. An agent that holds the queue but no longer runs (stopped,
	// frozen) would otherwise hold up every new connection of the LAN: the
	// queue's bypass applies only once nobody holds it.
	AliveTimeout time.Duration
}

// TProxyListeners returns where the agent's transparent listeners must
// listen: TPROXY delivers to the loopback address of each family at
// TProxyPort. Not to the any-address: a transparent listener there is the
// socket that nft's socket expression finds for every connection to
// TProxyPort, whatever its destination, and would take connections the
// agent never converted away from their servers.
func (r Rules) TProxyListeners() []netip.AddrPort {
	return []netip.AddrPort{
		netip.AddrPortFrom(tproxyAddr(false), r.TProxyPort),
		netip.AddrPortFrom(tproxyAddr(true), r.TProxyPort),
	}
}

// tproxyAddr is the address TPROXY delivers to in the family of v6.
func tproxyAddr(v6 bool) netip.Addr {
	if v6 {
		return netip.IPv6Loopback()
	}
	return netip.AddrFrom4([4]byte{127, 0, 0, 1})
}

// Validate reports whether r describes a usable rule set.
func (r Rules) Validate() error {
	if len(r.LANInterfaces) == 0 {
		return errors.New("no LAN interfaces")
	}
	seen := map[string]bool{}
	for _, name := range r.LANInterfaces {
		if err := ValidInterfaceName(name); err != nil {
			return fmt.Errorf("LAN %w", err)
		}
		if seen[name] {
			return fmt.Errorf("LAN interface %q listed twice", name)
		}
		seen[name] = true
	}
	if r.TProxyPort == 0 {
		return errors.New("TPROXY port 0")
	}
	if r.MarkMask == 0 {
		return errors.New("mark mask 0")
	}
	if r.AliveTimeout < time.Second || r.AliveTimeout%time.Second != 0 {
		return fmt.Errorf("alive timeout %v is not a whole number of seconds", r.AliveTimeout)
	}
	marks := []struct {
		name string
		v    uint32
	}{{"convert", r.ConvertMark}, {"reject", r.RejectMark}, {"tproxy", r.TProxyMark}}
	for i, m := range marks {
		if m.v == 0 {
			return fmt.Errorf("%s mark is 0", m.name)
		}
		if m.v&^r.MarkMask != 0 {
			return fmt.Errorf("%s mark %#x is outside mark mask %#x", m.name, m.v, r.MarkMask)
		}
		for _, o := range marks[:i] {
			if o.v == m.v {
				return fmt.Errorf("%s mark and %s mark are both %#x", o.name, m.name, m.v)
			}
		}
	}
	return nil
}

// ValidInterfaceName reports whether name may name an interface in a rule.
// It follows the kernel's dev_valid_name (net/core/dev.c), and also
// refuses '+', which iptables reads as a wildcard, and quotes, which no
// rule syntax should have to escape.
func ValidInterfaceName(name string) error {
	const ifNameSize = 16 // IFNAMSIZ, including the terminating NUL
	switch {
	case name == "":
		return errors.New("interface name is empty")
	case len(name) >= ifNameSize:
		return fmt.Errorf("interface name %q is longer than %d bytes", name, ifNameSize-1)
	case name == "." || name == "..":
		return fmt.Errorf("invalid interface name %q", name)
	case strings.ContainsAny(name, "/:+\"'\\") || strings.IndexFunc(name, isSpace) >= 0:
		return fmt.Errorf("invalid character in interface name %q", name)
	}
	return nil
}

func isSpace(r rune) bool { return r <= ' ' || r == 0x7f }

// The rule set below is described independently of the netfilter backend;
// iptables.go renders it for iptables, nftables.go for nftables.

// hook is where the kernel passes packets into a chain.
type hook int

const (
	// hookPrerouting sees packets as they arrive, before the routing
	// decision, where marks can still steer routing and TPROXY applies
	// (iptables: mangle PREROUTING).
	hookPrerouting hook = iota
	// hookForward sees packets being forwarded (iptables: filter FORWARD).
	hookForward
	// hookOutput sees packets this host sends (iptables: mangle OUTPUT).
	hookOutput
)

// chain is one of the agent's chains.
type chain struct {
	name string
	// hook is the hook whose packets reach the chain, directly or through
	// a jump from another of the agent's chains.
	hook hook
	// entry lists the packets the hook passes into the chain, one match per
	// entry; it is empty for a chain reached only by jumps.
	entry []match
	rules []rule
}

// match selects packets; every condition that is set must hold.
type match struct {
	inInterface  string
	outInterface string
	tcp          bool
	// udpDstPort selects UDP datagrams to this port.
	udpDstPort uint16
	// syn selects TCP segments with SYN set and ACK, RST and FIN clear.
	syn bool
	// dstLocal selects packets to an address of this host.
	dstLocal bool
	// transparentSocket selects packets that belong to a local socket with
	// IP_TRANSPARENT: later packets of connections delivered by TPROXY.
	transparentSocket bool
	// mark selects packets whose mark, masked with mark.mask, equals
	// mark.value.
	mark *markValue
	// alive selects packets only while the agent's heartbeats have come
	// within this time (see actBeat); zero selects packets regardless.
	alive time.Duration
}

type markValue struct{ value, mask uint32 }

type actionKind int

const (
	actJump actionKind = iota
	actReturn
	actAccept
	actSetMark // set the bits mark.mask to mark.value
	actQueue   // NFQUEUE to queue, accepting the packet when nobody listens
	actTProxy  // deliver to the local listener on the family's tproxyAddr and port, setting mark
	actRejectWithReset
	// actBeat drops the packet, a heartbeat, and records that the agent
	// is alive: the family of the packet's address counts as alive for
	// the alive match.
	actBeat
)

type action struct {
	kind  actionKind
	chain string // actJump
	queue uint16 // actQueue
	port  uint16 // actTProxy
	mark  markValue
}

type rule struct {
	match
	action
}

// Names of the agent's chains.
const (
	chainIntercept = "MCPAGENT"
	chainDivert    = "MCPAGENT_DIVERT"
	chainReject    = "MCPAGENT_REJECT"
	chainAlive     = "MCPAGENT_ALIVE"
)

// loopbackInterface is where heartbeats leave: the agent sends them to the
// loopback address of each family.
const loopbackInterface = "lo"

// ruleset returns the agent's chains for r, which must be valid. The rules
// are the same for IPv4 and IPv6.
func ruleset(r Rules) []chain {
	var fromLAN []match
	for _, name := range r.LANInterfaces {
		fromLAN = append(fromLAN, match{inInterface: name, tcp: true})
	}
	tproxyMark := markValue{r.TProxyMark, r.MarkMask}
	return []chain{
		{
			name:  chainIntercept,
			hook:  hookPrerouting,
			entry: fromLAN,
			rules: []rule{
				// The router's own traffic is never intercepted.
				{match{dstLocal: true}, action{kind: actReturn}},
				// Later packets of converted connections.
				{match{tcp: true, transparentSocket: true}, action{kind: actJump, chain: chainDivert}},
				// A SYN the agent released with the convert mark.
				{match{tcp: true, mark: &markValue{r.ConvertMark, r.MarkMask}},
					action{kind: actTProxy, port: r.TProxyPort, mark: tproxyMark}},
				// A new SYN without any of the agent's marks: a SYN released
				// with a mark must not be queued again. Only while the
				// agent beats: otherwise it flows on unconverted.
				{match{syn: true, mark: &markValue{0, r.MarkMask}, alive: r.AliveTimeout}, action{kind: actQueue, queue: r.Queue}},
			},
		},
		{
			name: chainDivert,
			hook: hookPrerouting,
			rules: []rule{
				{match{}, action{kind: actSetMark, mark: tproxyMark}},
				{match{}, action{kind: actAccept}},
			},
		},
		{
			name:  chainReject,
			hook:  hookForward,
			entry: fromLAN,
			rules: []rule{
				{match{tcp: true, mark: &markValue{r.RejectMark, r.MarkMask}}, action{kind: actRejectWithReset}},
			},
		},
		{
			name: chainAlive,
			hook: hookOutput,
			entry: []match{{outInterface: loopbackInterface, udpDstPort: r.TProxyPort,
				mark: &markValue{r.TProxyMark, r.MarkMask}}},
			rules: []rule{{match{}, action{kind: actBeat}}},
		},
	}
}
