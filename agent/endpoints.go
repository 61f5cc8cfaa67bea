package agent

import (
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/mcpagent/mcpagent/mptcppm"
	"github.com/mcpagent/mcpagent/route"
)

// endpointSync keeps one MPTCP "subflow" endpoint per uplink address, so
// the kernel's path manager opens a subflow over every uplink of each leg,
// and follows the uplinks as their addresses come and go. It removes only
// the endpoints it added, and restores the limits it raised.
type endpointSync struct {
	log *slog.Logger

	mu        sync.Mutex
	pm        *mptcppm.Client
	ours      map[netip.Addr]uint8 // address → endpoint ID
	oldLimits mptcppm.Limits
}

func newEndpointSync(uplinks int, log *slog.Logger) (*endpointSync, error) {
	pm, err := mptcppm.Dial()
	if err != nil {
		return nil, fmt.Errorf("open MPTCP path manager: %w", err)
	}
	old, err := pm.Limits()
	if err != nil {
		pm.Close()
		return nil, fmt.Errorf("read MPTCP limits: %w", err)
	}
	// One subflow per extra uplink at least; never lower what the system
	// already allows.
	want := old
	if n := uint32(uplinks); want.Subflows < n {
		want.Subflows = n
	}
	if want != old {
		if err := pm.SetLimits(want); err != nil {
			pm.Close()
			return nil, fmt.Errorf("set MPTCP limits to %+v: %w", want, err)
		}
	}
	return &endpointSync{log: log, pm: pm, ours: map[netip.Addr]uint8{}, oldLimits: old}, nil
}

// refresh applies the state get returns, read under the lock so that a
// concurrent apply of a newer state cannot be overwritten by an older one.
func (e *endpointSync) refresh(get func() []route.UplinkState) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.applyLocked(get())
}

// apply makes the endpoints match the uplinks' addresses in states. It is
// route.Config.OnChange.
func (e *endpointSync) apply(states []route.UplinkState) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.applyLocked(states)
}

func (e *endpointSync) applyLocked(states []route.UplinkState) {
	want := map[netip.Addr]int{} // address → ifindex
	for _, s := range states {
		if !s.Up {
			continue
		}
		for _, p := range s.Addrs {
			if a := p.Addr(); a.IsGlobalUnicast() {
				want[a] = s.Index
			}
		}
	}
	if e.pm == nil {
		return
	}
	for a, id := range e.ours {
		if _, ok := want[a]; !ok {
			if err := e.pm.DeleteEndpoint(id); err != nil {
				e.log.Warn("delete MPTCP endpoint", "addr", a, "id", id, "err", err)
			}
			delete(e.ours, a)
			e.log.Info("MPTCP endpoint removed", "addr", a)
		}
	}
	if len(want) == len(e.ours) {
		return
	}
	existing, err := e.pm.Endpoints()
	if err != nil {
		e.log.Warn("list MPTCP endpoints", "err", err)
		return
	}
	for _, ep := range existing {
		// A leftover of a run that was killed: replace it with ours.
		if _, ok := want[ep.Addr]; ok && e.ours[ep.Addr] == 0 {
			if err := e.pm.DeleteEndpoint(ep.ID); err != nil {
				e.log.Warn("delete stale MPTCP endpoint", "addr", ep.Addr, "err", err)
			}
		}
	}
	for a, ifindex := range want {
		if _, ok := e.ours[a]; ok {
			continue
		}
		ep, err := e.pm.AddEndpoint(mptcppm.Endpoint{Addr: a, IfIndex: ifindex, Flags: mptcppm.FlagSubflow})
		if err != nil {
			e.log.Warn("add MPTCP endpoint", "addr", a, "err", err)
			continue
		}
		e.ours[a] = ep.ID
		e.log.Info("MPTCP endpoint added", "addr", a, "id", ep.ID, "ifindex", ifindex)
	}
}

// close removes the endpoints it added and restores the limits.
func (e *endpointSync) close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.pm == nil {
		return
	}
	for a, id := range e.ours {
		if err := e.pm.DeleteEndpoint(id); err != nil {
			e.log.Warn("delete MPTCP endpoint", "addr", a, "id", id, "err", err)
		}
	}
	if err := e.pm.SetLimits(e.oldLimits); err != nil {
		e.log.Warn("restore MPTCP limits", "err", err)
	}
	e.pm.Close()
	e.pm = nil
}
