package agent

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"strings"
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
//
// The path manager's work runs on a goroutine of its own, toward the
// latest plan: adding or removing an endpoint makes the kernel visit every
// Multipath TCP connection of the namespace, which takes seconds with
// thousands open, and new connections must not wait for it.
type endpointSync struct {
	log *slog.Logger

	mu   sync.Mutex
	want map[netip.Addr]mptcppm.Endpoint // the latest plan's; replaced, never changed
	wake chan struct{}                   // a new want, for the worker
	stop chan struct{}
	done chan struct{} // closed when the worker has cleaned up

	// Owned by the worker.
	pm        pathManager
	ours      map[netip.Addr]mptcppm.Endpoint
	removeAt  time.Time     // removals wait until then for the subflows of endpoints just added
	retry     time.Duration // the backoff after failed requests; 0 after a clean run
	oldLimits mptcppm.Limits
	// limitsFile holds oldLimits while the agent runs.
	limitsFile string
	// oursFile holds ours (ID and address of each endpoint), so that a
	// run after a crash removes what the crashed run added.
	oursFile  string
	oursSaved bool // oursFile matches ours
}

// pathManager is what endpointSync needs of the kernel's path manager
// (*mptcppm.Client).
type pathManager interface {
	Endpoints() ([]mptcppm.Endpoint, error)
	AddEndpoint(mptcppm.Endpoint) (mptcppm.Endpoint, error)
	DeleteEndpoint(id uint8) error
	SetFlags(id uint8, f mptcppm.Flags) error
	SetLimits(mptcppm.Limits) error
	Close() error
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
//
// The endpoints it adds are listed in oursFile while the agent runs: the
// next run removes those a crashed one left, wanted or not (an on-demand
// uplink's, say, that would otherwise carry a subflow of every leg).
func newEndpointSync(maxSubflows int, limitsFile, oursFile string, log *slog.Logger) (*endpointSync, error) {
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
	return startEndpointSync(pm, old, limitsFile, oursFile, log), nil
}

// startEndpointSync starts the worker that applies plans to pm; close
// restores oldLimits and closes pm.
func startEndpointSync(pm pathManager, oldLimits mptcppm.Limits, limitsFile, oursFile string, log *slog.Logger) *endpointSync {
	e := &endpointSync{
		log:        log,
		wake:       make(chan struct{}, 1),
		stop:       make(chan struct{}),
		done:       make(chan struct{}),
		pm:         pm,
		ours:       map[netip.Addr]mptcppm.Endpoint{},
		oldLimits:  oldLimits,
		limitsFile: limitsFile,
		oursFile:   oursFile,
	}
	go e.run()
	return e
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
// uplink used as use says (same order). It does not wait for the path
// manager.
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
	e.want = want
	e.mu.Unlock()
	select {
	case e.wake <- struct{}{}:
	default: // the worker has yet to read the previous want: it will read this one
	}
}

// run is the worker: it reconciles the endpoints with the latest want, and
// again when deferred removals are due, until close.
func (e *endpointSync) run() {
	defer close(e.done)
	defer e.teardown()
	e.adoptLeftovers()
	due := time.NewTimer(0)
	due.Stop() // armed when removals wait
	for {
		select {
		case <-e.stop:
			return
		case <-e.wake:
		case <-due.C:
		}
		e.mu.Lock()
		want := e.want
		e.mu.Unlock()
		wait := e.reconcile(want)
		if !e.saveOurs() && wait == 0 {
			wait = retryMin
		}
		if wait > 0 {
			due.Reset(wait)
		}
	}
}

// reconcile changes, adds and removes endpoints toward want. It returns how
// long until it must run again, or 0: deferred removals wait for the
// subflows of endpoints just added, and a request the path manager failed
// (no memory, its limit of endpoints) is tried again with a backoff.
func (e *endpointSync) reconcile(want map[netip.Addr]mptcppm.Endpoint) time.Duration {
	failed := false
	var gone []netip.Addr
	for a, ep := range e.ours {
		w, ok := want[a]
		switch {
		case !ok || w.IfIndex != ep.IfIndex:
			gone = append(gone, a)
		case w.Flags != ep.Flags:
			// The kernel sends MP_PRIO on the subflows of the address.
			if err := e.pm.SetFlags(ep.ID, w.Flags&mptcppm.FlagBackup); err != nil {
				e.log.Warn("set MPTCP endpoint flags", "addr", a, "flags", w.Flags, "err", err)
				failed = true
				continue
			}
			ep.Flags = w.Flags
			e.ours[a] = ep
			e.log.Info("MPTCP endpoint flags changed", "addr", a, "flags", w.Flags)
		}
	}
	added, addFailed := e.add(want)
	failed = failed || addFailed
	if added {
		e.removeAt = time.Now().Add(makeBeforeBreak)
	}
	var wait time.Duration // until the deferred removals are due
	if len(gone) > 0 {
		if wait = time.Until(e.removeAt); wait <= 0 {
			wait = 0
			for _, a := range gone {
				failed = e.remove(a) || failed
			}
			// An address that moved to another interface comes back
			// bound to the new one.
			_, addFailed := e.add(want)
			failed = failed || addFailed
		}
	}
	if !failed {
		e.retry = 0
		return wait
	}
	e.retry = min(max(2*e.retry, retryMin), retryMax)
	if wait > 0 {
		return min(wait, e.retry)
	}
	return e.retry
}

// Bounds of the backoff of failed path-manager requests.
const (
	retryMin = time.Second
	retryMax = time.Minute
)

// remove deletes our endpoint of address a and reports whether that
// failed. A failed deletion keeps the endpoint ours, to be tried again and
// removed on stop, unless the kernel no longer has it.
func (e *endpointSync) remove(a netip.Addr) (failed bool) {
	ep := e.ours[a]
	if err := e.pm.DeleteEndpoint(ep.ID); err != nil {
		if e.stillThere(ep) {
			e.log.Warn("delete MPTCP endpoint", "addr", a, "id", ep.ID, "err", err)
			return true
		}
		e.log.Info("MPTCP endpoint already gone", "addr", a, "id", ep.ID)
	}
	delete(e.ours, a)
	e.oursSaved = false
	e.log.Info("MPTCP endpoint removed", "addr", a)
	return false
}

// stillThere reports whether the path manager lists ep, or cannot tell.
func (e *endpointSync) stillThere(ep mptcppm.Endpoint) bool {
	existing, err := e.pm.Endpoints()
	if err != nil {
		return true
	}
	for _, x := range existing {
		if x.ID == ep.ID && x.Addr == ep.Addr {
			return true
		}
	}
	return false
}

// add adds the endpoints of want that are not there yet. It reports
// whether it added any, and whether a request failed.
func (e *endpointSync) add(want map[netip.Addr]mptcppm.Endpoint) (added, failed bool) {
	var missing []mptcppm.Endpoint
	for a, w := range want {
		if _, ok := e.ours[a]; !ok {
			missing = append(missing, w)
		}
	}
	if len(missing) == 0 {
		return false, false
	}
	existing, err := e.pm.Endpoints()
	if err != nil {
		e.log.Warn("list MPTCP endpoints", "err", err)
		return false, true
	}
	for _, ep := range existing {
		// A leftover of a run that was killed: replace it with ours.
		if _, ok := want[ep.Addr]; ok && e.ours[ep.Addr].ID == 0 {
			if err := e.pm.DeleteEndpoint(ep.ID); err != nil {
				e.log.Warn("delete stale MPTCP endpoint", "addr", ep.Addr, "err", err)
			}
		}
	}
	for _, w := range missing {
		ep, err := e.pm.AddEndpoint(w)
		if err != nil {
			e.log.Warn("add MPTCP endpoint", "addr", w.Addr, "err", err)
			failed = true
			continue
		}
		e.ours[w.Addr] = ep
		e.oursSaved = false
		added = true
		e.log.Info("MPTCP endpoint added", "addr", w.Addr, "id", ep.ID, "ifindex", ep.IfIndex, "flags", ep.Flags)
	}
	return added, failed
}

// adoptLeftovers takes as ours the endpoints that oursFile lists, as a run
// that did not stop cleanly left it, that the kernel still has: the first
// reconcile keeps those still wanted and removes the others, with its
// retries, and teardown removes what is left. If the kernel cannot list
// them, the file is kept for the next run.
func (e *endpointSync) adoptLeftovers() {
	b, err := os.ReadFile(e.oursFile)
	if err != nil {
		return // none: the last run stopped cleanly, or never ran
	}
	listed := parseOurs(b)
	existing, err := e.pm.Endpoints()
	if err != nil {
		e.log.Warn("list MPTCP endpoints; those the last run left stay listed", "err", err)
		for id, a := range listed {
			e.ours[a] = mptcppm.Endpoint{ID: id, Addr: a}
		}
		return
	}
	for _, ep := range existing {
		if listed[ep.ID] == ep.Addr {
			e.ours[ep.Addr] = ep
			e.log.Info("MPTCP endpoint left by the last run", "addr", ep.Addr, "id", ep.ID)
		}
	}
	e.oursSaved = false
}

// parseOurs reads what saveOurs wrote: one "ID ADDRESS" line per endpoint.
// Lines it cannot read are skipped: a leftover they name stays.
func parseOurs(b []byte) map[uint8]netip.Addr {
	out := map[uint8]netip.Addr{}
	for _, line := range strings.Split(string(b), "\n") {
		id, addr, ok := strings.Cut(line, " ")
		n, err := strconv.ParseUint(id, 10, 8)
		a, aerr := netip.ParseAddr(addr)
		if ok && err == nil && n > 0 && aerr == nil {
			out[uint8(n)] = a
		}
	}
	return out
}

// saveOurs writes ours to oursFile if it changed, replacing the file
// atomically, and reports whether the file is up to date.
func (e *endpointSync) saveOurs() bool {
	if e.oursSaved {
		return true
	}
	var b []byte
	for _, ep := range e.ours {
		b = fmt.Appendf(b, "%d %s\n", ep.ID, ep.Addr)
	}
	tmp := e.oursFile + ".tmp"
	err := os.WriteFile(tmp, b, 0o600)
	if err == nil {
		err = os.Rename(tmp, e.oursFile)
	}
	if err != nil {
		e.log.Warn("save the list of MPTCP endpoints", "err", err)
		return false
	}
	e.oursSaved = true
	return true
}

// close stops the worker, once it has finished what the path manager is
// doing, then removes the endpoints it added and restores the limits.
func (e *endpointSync) close() {
	close(e.stop)
	<-e.done
}

// teardown removes the endpoints the worker added and restores the limits.
func (e *endpointSync) teardown() {
	for a, ep := range e.ours {
		if err := e.pm.DeleteEndpoint(ep.ID); err != nil && e.stillThere(ep) {
			e.log.Warn("delete MPTCP endpoint", "addr", a, "id", ep.ID, "err", err)
			continue // listed for the next run
		}
		delete(e.ours, a)
		e.oursSaved = false
	}
	if len(e.ours) == 0 {
		os.Remove(e.oursFile)
	} else {
		e.saveOurs()
	}
	if err := e.pm.SetLimits(e.oldLimits); err != nil {
		e.log.Warn("restore MPTCP limits", "err", err)
	} else {
		os.Remove(e.limitsFile)
	}
	e.pm.Close()
}
