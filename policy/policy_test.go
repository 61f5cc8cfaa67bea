package policy

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var (
	mcp1 = netip.MustParseAddrPort("198.51.100.1:5124")
	mcp2 = netip.MustParseAddrPort("198.51.100.2:5124")
	mcp3 = netip.MustParseAddrPort("[2001:db8:4::1]:5124")
	lan  = netip.MustParseAddrPort("192.168.1.2:40000")
	srv  = netip.MustParseAddrPort("203.0.113.10:80")
)

func TestDecide(t *testing.T) {
	t0 := time.Unix(1000, 0)
	tests := []struct {
		name     string
		fallback Action
		failed   []netip.AddrPort
		flow     Flow
		want     Decision
	}{
		{name: "first mcp", flow: Flow{Src: lan, Dst: srv},
			want: Decision{Action: Convert, MCP: mcp1, Reason: ReasonConvert}},
		{name: "native mptcp passes", flow: Flow{Src: lan, Dst: srv, NativeMPTCP: true},
			want: Decision{Action: Pass, Reason: ReasonNative}},
		{name: "native passes even with reject fallback", fallback: Reject, flow: Flow{Src: lan, Dst: srv, NativeMPTCP: true},
			want: Decision{Action: Pass, Reason: ReasonNative}},
		{name: "first down, second used", failed: []netip.AddrPort{mcp1}, flow: Flow{Src: lan, Dst: srv},
			want: Decision{Action: Convert, MCP: mcp2, Reason: ReasonConvert}},
		{name: "all down, direct", failed: []netip.AddrPort{mcp1, mcp2}, flow: Flow{Src: lan, Dst: srv},
			want: Decision{Action: Pass, Reason: ReasonMCPDown}},
		{name: "all down, reject", fallback: Reject, failed: []netip.AddrPort{mcp2, mcp1}, flow: Flow{Src: lan, Dst: srv},
			want: Decision{Action: Reject, Reason: ReasonMCPDown}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := New(Config{MCPs: []netip.AddrPort{mcp1, mcp2}, Fallback: tt.fallback})
			for _, m := range tt.failed {
				p.Failed(m, t0)
			}
			if diff := cmp.Diff(tt.want, p.Decide(tt.flow), cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Errorf("Decide (-want +got):\n%s", diff)
			}
		})
	}
}

func TestProbeCycle(t *testing.T) {
	t0 := time.Unix(1000, 0)
	p := New(Config{MCPs: []netip.AddrPort{mcp1, mcp2}, Retry: 5 * time.Second})
	p.Failed(mcp1, t0)
	p.Failed(mcp1, t0.Add(time.Second)) // a second failure does not push the probe back
	if p.Up(mcp1) || !p.Up(mcp2) {
		t.Fatal("mcp1 should be down and mcp2 up")
	}
	if got := p.DueProbes(t0.Add(4 * time.Second)); len(got) != 0 {
		t.Fatalf("probes due early: %v", got)
	}
	if got := p.DueProbes(t0.Add(5 * time.Second)); len(got) != 1 || got[0] != mcp1 {
		t.Fatalf("DueProbes = %v, want [mcp1]", got)
	}
	if got := p.DueProbes(t0.Add(6 * time.Second)); len(got) != 0 {
		t.Fatalf("a probe is due again right after one started: %v", got)
	}
	p.Succeeded(mcp1)
	if d := p.Decide(Flow{Src: lan, Dst: srv}); d.MCP != mcp1 {
		t.Fatalf("after recovery Decide picked %v, want mcp1", d.MCP)
	}
}

func TestFallbackDefaultsToPass(t *testing.T) {
	if d := New(Config{}).Fallback(); d.Action != Pass || d.Reason != ReasonLegSetup {
		t.Fatalf("Fallback() = %+v", d)
	}
	if d := New(Config{MCPs: []netip.AddrPort{mcp1}}).Decide(Flow{}); d.Action != Convert {
		t.Fatalf("Decide = %+v", d)
	}
	if d := New(Config{}).Decide(Flow{}); d.Action != Pass || d.Reason != ReasonNoMCP {
		t.Fatalf("no MCP: Decide = %+v", d)
	}
}

// TestSetMCPs replaces the list of a policy whose first MCP is down: the
// health of MCPs that stay is kept, that of MCPs that leave is forgotten.
func TestSetMCPs(t *testing.T) {
	t0 := time.Unix(1000, 0)
	tests := []struct {
		name        string
		set         []netip.AddrPort
		wantChanged bool
		want        Decision         // the next decision
		wantDue     []netip.AddrPort // probes due Retry later
	}{
		{name: "same list: nothing changes", set: []netip.AddrPort{mcp1, mcp2},
			want:    Decision{Action: Convert, MCP: mcp2, Reason: ReasonConvert},
			wantDue: []netip.AddrPort{mcp1}},
		{name: "reordered: the down mcp stays down", set: []netip.AddrPort{mcp2, mcp1}, wantChanged: true,
			want:    Decision{Action: Convert, MCP: mcp2, Reason: ReasonConvert},
			wantDue: []netip.AddrPort{mcp1}},
		{name: "down mcp alone: fallback at once", set: []netip.AddrPort{mcp1}, wantChanged: true,
			want:    Decision{Action: Pass, Reason: ReasonMCPDown},
			wantDue: []netip.AddrPort{mcp1}},
		{name: "new first mcp is presumed up", set: []netip.AddrPort{mcp3, mcp1}, wantChanged: true,
			want:    Decision{Action: Convert, MCP: mcp3, Reason: ReasonConvert},
			wantDue: []netip.AddrPort{mcp1}},
		{name: "down mcp leaves: forgotten, no probe", set: []netip.AddrPort{mcp2}, wantChanged: true,
			want: Decision{Action: Convert, MCP: mcp2, Reason: ReasonConvert}},
		{name: "empty list: fallback, the down mcp forgotten", set: nil, wantChanged: true,
			want: Decision{Action: Pass, Reason: ReasonNoMCP}},
	}
	apEqual := cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := New(Config{MCPs: []netip.AddrPort{mcp1, mcp2}, Retry: time.Second})
			p.Failed(mcp1, t0)
			if got := p.SetMCPs(tt.set); got != tt.wantChanged {
				t.Errorf("SetMCPs = %v, want %v", got, tt.wantChanged)
			}
			if diff := cmp.Diff(tt.want, p.Decide(Flow{Src: lan, Dst: srv}), apEqual); diff != "" {
				t.Errorf("Decide (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantDue, p.DueProbes(t0.Add(time.Second)), apEqual); diff != "" {
				t.Errorf("DueProbes (-want +got):\n%s", diff)
			}
			if len(tt.set) == 0 {
				// An MCP that was forgotten comes back presumed up.
				p.SetMCPs([]netip.AddrPort{mcp1})
				if d := p.Decide(Flow{Src: lan, Dst: srv}); d.MCP != mcp1 {
					t.Errorf("after re-adding mcp1 Decide = %+v, want mcp1", d)
				}
			}
		})
	}
}

// TestSetMCPsCopies checks that the caller's slice is not kept.
func TestSetMCPsCopies(t *testing.T) {
	p := New(Config{})
	list := []netip.AddrPort{mcp1}
	p.SetMCPs(list)
	list[0] = mcp2
	if d := p.Decide(Flow{}); d.MCP != mcp1 {
		t.Fatalf("Decide = %+v after the caller changed its slice, want mcp1", d)
	}
}
