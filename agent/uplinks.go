package agent

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcpagent/mcpagent/config"
	"github.com/mcpagent/mcpagent/internal/sockopt"
	"github.com/mcpagent/mcpagent/mptcppm"
	"github.com/mcpagent/mcpagent/policy"
	"github.com/mcpagent/mcpagent/route"
)

// uplinkManager turns the uplinks' states (from package route) and health
// (from the probes) into a policy.UplinkPlan, applies it to the path
// manager's endpoints, and tells each new leg which addresses to try for its
// initial subflow. It is safe for concurrent use.
type uplinkManager struct {
	cfg         []config.Uplink
	maxSubflows int
	eps         *endpointSync
	log         *slog.Logger

	mu     sync.Mutex
	states []route.UplinkState // in config order; nil before the first
	health []policy.UplinkHealth
	// idleSince is when each uplink last went out of use.
	idleSince []time.Time
	plan      policy.UplinkPlan
}

func newUplinkManager(cfg *config.Config, eps *endpointSync, log *slog.Logger) *uplinkManager {
	m := &uplinkManager{cfg: cfg.Uplinks, maxSubflows: cfg.MaxSubflows, eps: eps, log: log, health: make([]policy.UplinkHealth, len(cfg.Uplinks)), idleSince: make([]time.Time, len(cfg.Uplinks))}
	for i := range m.health {
		m.health[i].Failures = cfg.Probe.Failures
	}
	return m
}

// refresh applies the state get returns, read under the lock so that a
// concurrent update with a newer state cannot be overwritten by an older one.
func (m *uplinkManager) refresh(get func() []route.UplinkState) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.states = get()
	m.replanLocked()
}

// update takes new uplink states; it is route.Config.OnChange's.
func (m *uplinkManager) update(states []route.UplinkState) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.states = states
	m.replanLocked()
}

// probed records the outcome of one probe of uplink i.
func (m *uplinkManager) probed(i int, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.recordLocked(i, err)
}

// legOpened records that the initial subflow of a leg came up from src:
// its uplink reaches the MCP, as a probe that succeeded would show. Under
// load a probe's SYN can be lost in the MCP's full accept queue while legs
// come up over the same uplink, and a few such losses in a row must not
// take a working uplink out of the plan.
func (m *uplinkManager) legOpened(src netip.Addr) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if i := m.uplinkOfLocked(src); i >= 0 {
		m.recordLocked(i, nil)
	}
}

// recordLocked takes the outcome of a probe, or the news of a leg, for
// uplink i; m.mu is held.
func (m *uplinkManager) recordLocked(i int, err error) {
	if !m.health[i].Record(err == nil) {
		return
	}
	if err != nil {
		m.log.Warn("uplink unhealthy: its probes toward the MCP fail", "uplink", m.cfg[i].Name, "err", err)
	} else {
		m.log.Info("uplink healthy again", "uplink", m.cfg[i].Name)
	}
	m.replanLocked()
}

func (m *uplinkManager) replanLocked() {
	if len(m.states) != len(m.cfg) {
		return
	}
	ups := make([]policy.Uplink, len(m.cfg))
	for i, u := range m.cfg {
		ups[i] = policy.Uplink{
			Role:      u.PolicyRole(),
			Priority:  u.Priority,
			Community: u.Community,
			Up:        hasLink(m.states[i]),
			Healthy:   m.health[i].Healthy(),
		}
	}
	plan := policy.PlanUplinks(ups, m.maxSubflows)
	for i, use := range plan.Use {
		if len(m.plan.Use) != len(plan.Use) || m.plan.Use[i] != use {
			m.log.Info("uplink use", "uplink", m.cfg[i].Name, "role", m.cfg[i].Role, "use", use.String())
			if use == policy.UseNone {
				m.idleSince[i] = time.Now()
			}
		}
	}
	m.plan = plan
	m.eps.apply(m.states, plan.Use)
}

// idleRetry is how long an on-demand uplink that failed while in use stays
// idle before it is presumed healthy again.
const idleRetry = time.Minute

// presumeIdleHealthy is called every probe interval. An idle on-demand
// uplink is not probed (it must stay silent), so failures it had while in
// use would count against it for good, and the next outage of the primary
// would find no uplink to take over. Once idle for idleRetry it is
// presumed healthy again. Not at once: with every uplink failing (the
// MCP down), the plan keeps the primary, and the on-demand uplink would
// otherwise be taken back into use at every replan.
func (m *uplinkManager) presumeIdleHealthy(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	presumed := false
	for i, u := range m.cfg {
		idle := len(m.plan.Use) <= i || m.plan.Use[i] == policy.UseNone
		if u.PolicyRole() == policy.RoleOnDemand && idle && !m.health[i].Healthy() && now.Sub(m.idleSince[i]) >= idleRetry {
			m.health[i].Record(true)
			presumed = true
			m.log.Info("idle on-demand uplink presumed healthy again", "uplink", u.Name)
		}
	}
	if presumed {
		m.replanLocked()
	}
}

// hasLink reports whether the uplink is up with an address to send from:
// what the plan calls up.
func hasLink(s route.UplinkState) bool { return s.Up && len(s.Addrs) > 0 }

// initialSources returns the addresses, of remote's family, to try in turn
// as the source of a new leg's initial subflow: one per uplink of the plan's
// Initial order. Empty means none is known: routing chooses.
func (m *uplinkManager) initialSources(remote netip.Addr) []netip.Addr {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []netip.Addr
	for _, i := range m.plan.Initial {
		if a, ok := sourceAddr(m.states[i], remote.Is4()); ok {
			out = append(out, a)
		}
	}
	return out
}

// sourceAddr returns the uplink's first global address of the family.
func sourceAddr(s route.UplinkState, v4 bool) (netip.Addr, bool) {
	for _, p := range s.Addrs {
		if a := p.Addr(); a.Is4() == v4 && a.IsGlobalUnicast() {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// probeTargets returns, for each uplink that is up, the address to probe
// target from (invalid for the others). An on-demand uplink is not probed
// while it is unused: it must send nothing then, and it is presumed
// healthy when it is needed.
func (m *uplinkManager) probeTargets(target netip.Addr) []netip.Addr {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]netip.Addr, len(m.cfg))
	for i, s := range m.states {
		idle := m.cfg[i].PolicyRole() == policy.RoleOnDemand && (len(m.plan.Use) <= i || m.plan.Use[i] == policy.UseNone)
		if s.Up && !idle {
			out[i], _ = sourceAddr(s, target.Is4())
		}
	}
	return out
}

// probeUplinks probes, every interval until ctx ends, each uplink's path to
// the MCP that target returns (none: no probe this round): a TCP handshake
// from the uplink's address, which its source rule routes out of that
// uplink. A handshake says more than ICMP would: a captive portal or a
// filter on the way answers pings too (RFC 8041 section 3.10). An uplink
// received from kick is probed at once, at most once per timeout.
func (m *uplinkManager) probeUplinks(ctx context.Context, target func() (netip.AddrPort, bool), interval, timeout time.Duration, kick *probeKicks) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	probe := func(only int) {
		mcp, ok := target()
		if !ok {
			return
		}
		for i, src := range m.probeTargets(mcp.Addr()) {
			if !src.IsValid() || only >= 0 && i != only {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := probeHandshake(ctx, src, mcp, timeout)
				if ctx.Err() == nil {
					m.probed(i, err)
				}
			}()
		}
	}
	probe(-1)
	kicked := make([]time.Time, len(m.cfg)) // when each uplink was last probed on a kick
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			m.presumeIdleHealthy(now)
			probe(-1)
		case i := <-kick.ch:
			kick.pending[i].Store(false)
			// Subflows close with errors in bursts (a leg reset closes
			// all of its subflows): one extra probe per uplink and
			// timeout is enough.
			if now := time.Now(); now.Sub(kicked[i]) >= timeout {
				kicked[i] = now
				probe(i)
			}
		}
	}
}

// probeHandshake completes a plain TCP handshake from src (invalid: as
// routing chooses) to dst within timeout and resets the connection: the MCP
// reads no header from it and drops it, and no TIME_WAIT is left on either
// side.
func probeHandshake(ctx context.Context, src netip.Addr, dst netip.AddrPort, timeout time.Duration) error {
	d := net.Dialer{Timeout: timeout}
	if src.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
		d.Control = sockopt.BindAddressNoPort
	}
	d.SetMultipathTCP(false)
	c, err := d.DialContext(ctx, "tcp", dst.String())
	if err != nil {
		return err
	}
	abort(c.(*net.TCPConn))
	return nil
}

// eventSource is the path manager's event stream (*mptcppm.EventConn).
type eventSource interface {
	Receive() ([]mptcppm.Event, error)
}

// watchSubflows follows, from the path manager's events, each subflow that
// closes, until events fails for good (its Close ends it). A subflow that
// closed with an error over an uplink in use sends that uplink to kick,
// for a probe at once: a reset from the network says sooner than the next
// probe that the path may be gone. Other events are ignored; the agent
// subscribes to sub_closed only (see Run), so that the several events of
// every connection do not each wake it up.
func (m *uplinkManager) watchSubflows(events eventSource, kick *probeKicks) {
	for {
		evs, err := events.Receive()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			// Lost or undecodable events only cost log lines and kicks.
			m.log.Debug("path manager events", "err", err)
		}
		for _, ev := range evs {
			if ev.Type != mptcppm.EventSubClosed {
				continue
			}
			i, used := m.uplinkOf(ev.Saddr)
			name := "?"
			if i >= 0 {
				name = m.cfg[i].Name
			}
			m.log.Debug("subflow closed", "uplink", name, "token", ev.Token,
				"local", netip.AddrPortFrom(ev.Saddr, ev.Sport), "remote", netip.AddrPortFrom(ev.Daddr, ev.Dport), "backup", ev.Backup, "errno", ev.Error)
			if ev.Error != 0 && used {
				kick.send(i)
			}
		}
	}
}

// probeKicks carries the uplinks to probe at once, each at most once until
// the prober has taken it: a burst of one uplink's kicks does not crowd out
// another's.
type probeKicks struct {
	ch      chan int
	pending []atomic.Bool
}

func newProbeKicks(uplinks int) *probeKicks {
	return &probeKicks{ch: make(chan int, uplinks), pending: make([]atomic.Bool, uplinks)}
}

// send asks for a probe of uplink i, unless one is pending. It never
// blocks: the channel holds one kick per uplink.
func (k *probeKicks) send(i int) {
	if k.pending[i].CompareAndSwap(false, true) {
		k.ch <- i
	}
}

// uplinkOf returns the uplink whose address a is, and whether the plan
// uses it; -1 if a is no uplink's.
func (m *uplinkManager) uplinkOf(a netip.Addr) (int, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	i := m.uplinkOfLocked(a)
	return i, i >= 0 && i < len(m.plan.Use) && m.plan.Use[i] != policy.UseNone
}

// uplinkOfLocked returns the uplink whose address a is, -1 if none; m.mu
// is held.
func (m *uplinkManager) uplinkOfLocked(a netip.Addr) int {
	for i, s := range m.states {
		for _, p := range s.Addrs {
			if p.Addr() == a {
				return i
			}
		}
	}
	return -1
}
