package policy

import (
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Flow is what the policy knows of a new LAN connection: its SYN.
type Flow struct {
	Src, Dst netip.AddrPort
	// NativeMPTCP reports whether the SYN already carries MP_CAPABLE or
	// MP_JOIN: the LAN host speaks Multipath TCP itself.
	NativeMPTCP bool
}

// Action is what to do with a flow.
type Action uint8

const (
	// Pass lets the SYN through unconverted.
	Pass Action = iota
	// Convert carries the connection over a leg to Decision.MCP.
	Convert
	// Reject answers the SYN with a TCP reset.
	Reject
)

func (a Action) String() string {
	switch a {
	case Pass:
		return "pass"
	case Convert:
		return "convert"
	case Reject:
		return "reject"
	}
	return "unknown"
}

// Decision is the policy's answer for one flow.
type Decision struct {
	Action Action
	MCP    netip.AddrPort // set when Action is Convert
	Reason string         // a stable word for logs and counters
}

// Reasons given in decisions.
const (
	ReasonNative   = "native-mptcp" // the LAN host speaks MPTCP: §7 of the plain-mode draft
	ReasonConvert  = "convert"      // a usable MCP was found
	ReasonMCPDown  = "mcp-down"     // every MCP is known to be down
	ReasonNoMCP    = "no-mcp"       // the MCP list is empty (none learned yet)
	ReasonLegSetup = "leg-timeout"  // the leg did not come up in time
)

// DefaultRetry is how long an MCP that failed stays skipped before a probe
// may bring it back, when Config.Retry is zero.
const DefaultRetry = 5 * time.Second

// Config configures a Policy.
type Config struct {
	// MCPs are the downstream MCPs in order of preference.
	MCPs []netip.AddrPort
	// Fallback is the action for flows that cannot be converted: Pass
	// (the default, fail-open) or Reject.
	Fallback Action
	// Retry is how long a failed MCP is skipped before it is probed
	// again; zero means DefaultRetry.
	Retry time.Duration
}

// Policy decides flows. It is safe for concurrent use.
type Policy struct {
	fallback Action
	retry    time.Duration

	mu     sync.Mutex
	mcps   []netip.AddrPort
	downAt map[netip.AddrPort]time.Time // MCPs that failed, and when
}

// New returns a Policy with every MCP presumed up.
func New(cfg Config) *Policy {
	p := &Policy{fallback: cfg.Fallback, retry: cfg.Retry, downAt: map[netip.AddrPort]time.Time{}}
	if p.fallback != Reject {
		p.fallback = Pass
	}
	if p.retry <= 0 {
		p.retry = DefaultRetry
	}
	p.mcps = append([]netip.AddrPort(nil), cfg.MCPs...)
	return p
}

// Decide returns what to do with a new flow.
func (p *Policy) Decide(f Flow) Decision {
	if f.NativeMPTCP {
		return Decision{Action: Pass, Reason: ReasonNative}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if m, ok := p.preferredLocked(); ok {
		return Decision{Action: Convert, MCP: m, Reason: ReasonConvert}
	}
	if len(p.mcps) == 0 {
		return Decision{Action: p.fallback, Reason: ReasonNoMCP}
	}
	return Decision{Action: p.fallback, Reason: ReasonMCPDown}
}

// Preferred returns the MCP that new flows are converted toward: the first
// of the list that is presumed up. It reports false if there is none.
func (p *Policy) Preferred() (netip.AddrPort, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.preferredLocked()
}

func (p *Policy) preferredLocked() (netip.AddrPort, bool) {
	for _, m := range p.mcps {
		if _, down := p.downAt[m]; !down {
			return m, true
		}
	}
	return netip.AddrPort{}, false
}

// SetMCPs replaces the MCP list, in order of preference, for the flows
// decided from now on. An MCP that stays in the list keeps its health; one
// that leaves it is forgotten, and one that joins it is presumed up.
// Decisions already made, and the connections they started, are not
// affected. It reports whether the list changed.
func (p *Policy) SetMCPs(mcps []netip.AddrPort) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if slices.Equal(p.mcps, mcps) {
		return false
	}
	p.mcps = append([]netip.AddrPort(nil), mcps...)
	for m := range p.downAt {
		if !slices.Contains(p.mcps, m) {
			delete(p.downAt, m)
		}
	}
	return true
}

// Fallback returns the decision for a flow whose leg failed to come up.
func (p *Policy) Fallback() Decision {
	return Decision{Action: p.fallback, Reason: ReasonLegSetup}
}

// Failed records that a leg to mcp could not be opened at now: new flows
// skip it until a probe succeeds.
func (p *Policy) Failed(mcp netip.AddrPort, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, down := p.downAt[mcp]; !down {
		p.downAt[mcp] = now
	}
}

// Succeeded records that a leg or probe to mcp came up.
func (p *Policy) Succeeded(mcp netip.AddrPort) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.downAt, mcp)
}

// Up reports whether mcp is presumed reachable.
func (p *Policy) Up(mcp netip.AddrPort) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, down := p.downAt[mcp]
	return !down
}

// DueProbes returns the MCPs that are down and whose last failure or probe
// is at least Retry old at now, and restarts their clocks: the caller
// probes each and reports Succeeded or Failed.
func (p *Policy) DueProbes(now time.Time) []netip.AddrPort {
	p.mu.Lock()
	defer p.mu.Unlock()
	var due []netip.AddrPort
	for _, m := range p.mcps {
		if at, down := p.downAt[m]; down && now.Sub(at) >= p.retry {
			p.downAt[m] = now
			due = append(due, m)
		}
	}
	return due
}
