package agent

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/mcpagent/mcpagent/mptcppm"
	"github.com/mcpagent/mcpagent/policy"
	"github.com/mcpagent/mcpagent/route"
)

// endpointSync keeps one MPTCP "subflow" endpoint per address of each
// uplink that the uplink plan uses, flagged backup for a backup use, so the
// kernel's path manager opens a subflow over every such uplink of each leg.
// Removing an endpoint closes its subflows on every leg, and the peer
// learns it with REMOVE_ADDR over a subflow that still works, so data in
// flight on it is sent again on the others at once. It removes only the
// endpoints it added, and restores the limits it set.
//
// It makes before it breaks: when a change adds endpoints, those it
// removes go makeBeforeBreak later, once the new subflows have joined.
// Linux does not close the only subflow of a leg, and the REMOVE_ADDR
// needs a subflow to travel on.
type endpointSync struct {
	log *slog.Logger

	mu        sync.Mutex
	pm        *mptcppm.Client // nil after close
	ours      map[netip.Addr]mptcppm.Endpoint
	want      map[netip.Addr]mptcppm.Endpoint
	later     *time.Timer // deferred removals; nil when none is due
	oldLimits mptcppm.Limits
	// limitsFile holds oldLimits while the agent runs.
	limitsFile string
}

// makeBeforeBreak is how long removals wait for the subflows of the
// endpoints added with them: a few round trips, and one lost SYN.
const makeBeforeBreak = 1500 * time.Millisecond

// newEndpointSync sets the path manager's limits for legs of at most
// maxSubflows subflows, the initial one included. The kernel counts the
// additional subflows it opened, less those it removed, but a dead initial
// subflow frees no place: the limit is one higher than the plan needs, so
// that a leg that lost its initial subflow gets one back on every uplink in
// use (the plan uses at most maxSubflows uplinks, one endpoint each per
// family). A leg accepts maxSubflows-1 addresses the MCP announces.
//
// The limits found are saved in limitsFile until close restores them, so
// that a run after a crash restores the system's, not the crashed run's.
func newEndpointSync(maxSubflows int, limitsFile string, log *slog.Logger) (*endpointSync, error) {
	pm, err := mptcppm.Dial()
	if err != nil {
		return nil, fmt.Errorf("open MPTCP path manager: %w", err)
	}
	old, err := savedLimits(pm, limitsFile)
	if err != nil {
		pm.Close()
		return nil, err
	}
	want := mptcppm.Limits{Subflows: uint32(maxSubflows), AddAddrAccepted: uint32(maxSubflows - 1)}
	if err := pm.SetLimits(want); err != nil {
		pm.Close()
		return nil, fmt.Errorf("set MPTCP limits to %+v: %w", want, err)
	}
	return &endpointSync{log: log, pm: pm, ours: map[netip.Addr]mptcppm.Endpoint{}, oldLimits: old, limitsFile: limitsFile}, nil
}

// savedLimits returns the limits a crashed run saved in file, or else the
// kernel's, which it saves there.
func savedLimits(pm *mptcppm.Client, file string) (mptcppm.Limits, error) {
	var l mptcppm.Limits
	if b, err := os.ReadFile(file); err == nil {
		if _, err := fmt.Sscanf(string(b), "add_addr_accepted %d subflows %d\n", &l.AddAddrAccepted, &l.Subflows); err == nil && l.AddAddrAccepted <= 8 && l.Subflows <= 8 {
			return l, nil
		}
	}
	l, err := pm.Limits()
	if err != nil {
		return l, fmt.Errorf("read MPTCP limits: %w", err)
	}
	if err := os.WriteFile(file, fmt.Appendf(nil, "add_addr_accepted %d subflows %d\n", l.AddAddrAccepted, l.Subflows), 0o600); err != nil {
		return l, fmt.Errorf("save MPTCP limits: %w", err)
	}
	return l, nil
}

// apply makes the endpoints match the uplinks' addresses in states, each
// uplink used as use says (same order).
func (e *endpointSync) apply(states []route.UplinkState, use []policy.Use) {
	want := map[netip.Addr]mptcppm.Endpoint{}
	for i, s := range states {
		if !s.Up || use[i] == policy.UseNone {
			continue
		}
		flags := mptcppm.FlagSubflow
		if use[i] == policy.UseBackup {
			flags |= mptcppm.FlagBackup
		}
		for _, p := range s.Addrs {
			if a := p.Addr(); a.IsGlobalUnicast() {
				want[a] = mptcppm.Endpoint{Addr: a, IfIndex: s.Index, Flags: flags}
			}
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.want = want
	e.reconcileLocked()
}

// reconcileLocked changes, adds and removes endpoints toward e.want; e.mu
// is held.
func (e *endpointSync) reconcileLocked() {
	if e.pm == nil {
		return
	}
	var gone []netip.Addr
	for a, ep := range e.ours {
		w, ok := e.want[a]
		switch {
		case !ok || w.IfIndex != ep.IfIndex:
			gone = append(gone, a)
		case w.Flags != ep.Flags:
			// The kernel sends MP_PRIO on the subflows of the address.
			if err := e.pm.SetFlags(ep.ID, w.Flags&mptcppm.FlagBackup); err != nil {
				e.log.Warn("set MPTCP endpoint flags", "addr", a, "flags", w.Flags, "err", err)
				continue
			}
			ep.Flags = w.Flags
			e.ours[a] = ep
			e.log.Info("MPTCP endpoint flags changed", "addr", a, "flags", w.Flags)
		}
	}
	if e.addLocked() && len(gone) > 0 {
		if e.later == nil {
			e.later = time.AfterFunc(makeBeforeBreak, func() {
				e.mu.Lock()
				defer e.mu.Unlock()
				e.later = nil
				e.reconcileLocked()
			})
		}
		return
	}
	for _, a := range gone {
		if err := e.pm.DeleteEndpoint(e.ours[a].ID); err != nil {
			e.log.Warn("delete MPTCP endpoint", "addr", a, "id", e.ours[a].ID, "err", err)
		}
		delete(e.ours, a)
		e.log.Info("MPTCP endpoint removed", "addr", a)
	}
	if len(gone) > 0 {
		// An address that moved to another interface comes back bound
		// to the new one.
		e.addLocked()
	}
}

// addLocked adds the endpoints of e.want that are not there yet and
// reports whether it added any; e.mu is held.
func (e *endpointSync) addLocked() bool {
	var missing []mptcppm.Endpoint
	for a, w := range e.want {
		if _, ok := e.ours[a]; !ok {
			missing = append(missing, w)
		}
	}
	if len(missing) == 0 {
		return false
	}
	existing, err := e.pm.Endpoints()
	if err != nil {
		e.log.Warn("list MPTCP endpoints", "err", err)
		return false
	}
	for _, ep := range existing {
		// A leftover of a run that was killed: replace it with ours.
		if _, ok := e.want[ep.Addr]; ok && e.ours[ep.Addr].ID == 0 {
			if err := e.pm.DeleteEndpoint(ep.ID); err != nil {
				e.log.Warn("delete stale MPTCP endpoint", "addr", ep.Addr, "err", err)
			}
		}
	}
	added := false
	for _, w := range missing {
		ep, err := e.pm.AddEndpoint(w)
		if err != nil {
			e.log.Warn("add MPTCP endpoint", "addr", w.Addr, "err", err)
			continue
		}
		e.ours[w.Addr] = ep
		added = true
		e.log.Info("MPTCP endpoint added", "addr", w.Addr, "id", ep.ID, "ifindex", ep.IfIndex, "flags", ep.Flags)
	}
	return added
}

// close removes the endpoints it added and restores the limits.
func (e *endpointSync) close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.pm == nil {
		return
	}
	if e.later != nil {
		e.later.Stop()
	}
	for a, ep := range e.ours {
		if err := e.pm.DeleteEndpoint(ep.ID); err != nil {
			e.log.Warn("delete MPTCP endpoint", "addr", a, "id", ep.ID, "err", err)
		}
	}
	if err := e.pm.SetLimits(e.oldLimits); err != nil {
		e.log.Warn("restore MPTCP limits", "err", err)
	} else {
		os.Remove(e.limitsFile)
	}
	e.pm.Close()
	e.pm = nil
}
