package agent

import (
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/mcpagent/mcpagent/config"
	"github.com/mcpagent/mcpagent/mptcppm"
	"github.com/mcpagent/mcpagent/policy"
	"github.com/mcpagent/mcpagent/route"
)

// fakeEvents hands out canned batches of events, then net.ErrClosed.
type fakeEvents [][]mptcppm.Event

func (f *fakeEvents) Receive() ([]mptcppm.Event, error) {
	if len(*f) == 0 {
		return nil, net.ErrClosed
	}
	evs := (*f)[0]
	*f = (*f)[1:]
	return evs, nil
}

// testUplinks is an uplink manager over dsl (active, up) and lte (on-demand,
// up but unused), with no path manager behind it.
func testUplinks(t *testing.T) *uplinkManager {
	t.Helper()
	cfg, err := config.Parse([]byte("lan_interfaces: [lan0]\nuplinks: [{name: dsl, interface: wan0}, {name: lte, interface: wan1, role: on-demand}]\nmcp: {servers: [198.51.100.1]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	m := newUplinkManager(cfg, &endpointSync{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	m.update([]route.UplinkState{
		{Name: "dsl", Interface: "wan0", Index: 3, Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("10.0.1.2/24")}},
		{Name: "lte", Interface: "wan1", Index: 4, Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("100.64.0.2/24")}},
	})
	return m
}

func TestWatchSubflowsKicksTheProbe(t *testing.T) {
	m := testUplinks(t)
	dsl, lte := netip.MustParseAddr("10.0.1.2"), netip.MustParseAddr("100.64.0.2")
	events := &fakeEvents{
		{{Type: mptcppm.EventSubEstablished, Saddr: dsl}},                                   // no kick: it joined
		{{Type: mptcppm.EventSubClosed, Saddr: dsl}},                                        // no kick: closed cleanly
		{{Type: mptcppm.EventSubClosed, Saddr: lte, Error: 104}},                            // no kick: lte is not in use
		{{Type: mptcppm.EventSubClosed, Saddr: dsl, Error: 104}},                            // kick dsl
		{{Type: mptcppm.EventSubClosed, Saddr: dsl, Error: 110}},                            // a kick is already due
		{{Type: mptcppm.EventCreated, Saddr: dsl, Error: 110}},                              // not sub_closed
		{{Type: mptcppm.EventSubClosed, Saddr: netip.MustParseAddr("192.0.2.9"), Error: 1}}, // no uplink's
	}
	kick := newProbeKicks(2)
	m.watchSubflows(events, kick)
	select {
	case i := <-kick.ch:
		if i != 0 {
			t.Errorf("kicked uplink %d, want 0 (dsl)", i)
		}
	default:
		t.Fatal("no kick for a subflow of dsl closed with an error")
	}
	if len(kick.ch) != 0 {
		t.Error("more than one kick")
	}
}

// A kick pending for one uplink does not keep another's out; each uplink
// has one pending at most until the prober takes it.
func TestProbeKicks(t *testing.T) {
	k := newProbeKicks(2)
	k.send(0)
	k.send(0)
	k.send(1)
	if got := []int{<-k.ch, <-k.ch}; got[0] != 0 || got[1] != 1 || len(k.ch) != 0 {
		t.Fatalf("kicks %v then %d more, want [0 1] and none", got, len(k.ch))
	}
	k.send(0) // still pending: the prober has not cleared it
	if len(k.ch) != 0 {
		t.Fatal("a second kick of uplink 0 while one was pending")
	}
	k.pending[0].Store(false) // the prober took it
	k.send(0)
	if len(k.ch) != 1 {
		t.Fatal("no kick of uplink 0 after the prober took the last")
	}
}

func TestInitialSourcesAndProbeTargets(t *testing.T) {
	m := testUplinks(t)
	mcp := netip.MustParseAddr("198.51.100.1")
	if got := m.initialSources(mcp); len(got) != 1 || got[0] != netip.MustParseAddr("10.0.1.2") {
		t.Errorf("initial sources %v, want only dsl's address", got)
	}
	if got := m.initialSources(netip.MustParseAddr("2001:db8::1")); len(got) != 0 {
		t.Errorf("initial sources for an IPv6 MCP %v, want none (no uplink has IPv6)", got)
	}
	// The unused on-demand uplink is not probed: it must stay silent.
	if got := m.probeTargets(mcp); got[0] != netip.MustParseAddr("10.0.1.2") || got[1].IsValid() {
		t.Errorf("probe sources %v, want dsl's address and none for lte", got)
	}
	m.probed(0, net.ErrClosed)
	m.probed(0, net.ErrClosed)
	if m.plan.Use[0] != policy.UseNone || m.plan.Use[1] != policy.UseActive {
		t.Fatalf("after dsl failed its probes the plan is %v, want lte taking over", m.plan.Use)
	}
	if got := m.probeTargets(mcp); !got[0].IsValid() || !got[1].IsValid() {
		t.Errorf("probe sources %v, want both: dsl to see it return, lte now that it is used", got)
	}
	if got := m.initialSources(mcp); len(got) != 1 || got[0] != netip.MustParseAddr("100.64.0.2") {
		t.Errorf("initial sources %v, want only lte's address", got)
	}
}

// An on-demand uplink that failed its probes while in use is presumed
// healthy after idleRetry idle: it is not probed then, and must not be left
// out of the next outage for failures of the last. Not sooner: with every
// uplink failing, the plan keeps the primary rather than flip back.
func TestIdleOnDemandIsPresumedHealthy(t *testing.T) {
	m := testUplinks(t)
	fail := func(i int) {
		m.probed(i, net.ErrClosed)
		m.probed(i, net.ErrClosed)
	}
	fail(0) // dsl's path fails: lte takes over
	fail(1) // the MCP is down: lte fails too
	if m.plan.Use[0] != policy.UseActive || m.plan.Use[1] != policy.UseNone {
		t.Fatalf("with both failing the plan is %v, want dsl active (fail open), lte unused", m.plan.Use)
	}
	m.presumeIdleHealthy(time.Now().Add(idleRetry / 2))
	if m.health[1].Healthy() || m.plan.Use[1] != policy.UseNone {
		t.Fatalf("lte presumed healthy after %v idle: plan %v", idleRetry/2, m.plan.Use)
	}
	m.presumeIdleHealthy(time.Now().Add(idleRetry))
	if !m.health[1].Healthy() || m.plan.Use[1] != policy.UseActive {
		t.Fatalf("after %v idle: lte healthy %v, plan %v; want lte presumed healthy and taking over from failing dsl", idleRetry, m.health[1].Healthy(), m.plan.Use)
	}
	m.probed(0, nil) // dsl is back: lte idle again, and healthy
	if m.plan.Use[0] != policy.UseActive || m.plan.Use[1] != policy.UseNone {
		t.Fatalf("with dsl back the plan is %v, want dsl active, lte unused", m.plan.Use)
	}
	fail(0) // the next outage of dsl
	if m.plan.Use[0] != policy.UseNone || m.plan.Use[1] != policy.UseActive {
		t.Errorf("at dsl's next outage the plan is %v, want lte taking over", m.plan.Use)
	}
}

// A leg that came up over an uplink counts as a probe that succeeded: lost
// probes around it do not add up to the limit.
func TestLegOpenedCountsAsProbe(t *testing.T) {
	m := testUplinks(t)
	dsl := netip.MustParseAddr("10.0.1.2")
	m.probed(0, net.ErrClosed)
	m.legOpened(dsl)
	m.probed(0, net.ErrClosed)
	if !m.health[0].Healthy() || m.plan.Use[0] != policy.UseActive {
		t.Fatalf("dsl failed two probes with a leg up between them: healthy %v, use %v; want healthy, active", m.health[0].Healthy(), m.plan.Use[0])
	}
	m.probed(0, net.ErrClosed)
	if m.health[0].Healthy() {
		t.Fatal("dsl failed two probes in a row and is still healthy")
	}
	m.legOpened(netip.MustParseAddr("192.0.2.1")) // no uplink's address
	if m.health[0].Healthy() {
		t.Fatal("a leg from another address made dsl healthy")
	}
	m.legOpened(dsl)
	if !m.health[0].Healthy() || m.plan.Use[0] != policy.UseActive {
		t.Errorf("a leg came up over dsl: healthy %v, use %v; want healthy, active", m.health[0].Healthy(), m.plan.Use[0])
	}
}
