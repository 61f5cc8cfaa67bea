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
	if d := New(Config{}).Decide(Flow{}); d.Action != Pass || d.Reason != ReasonMCPDown {
		t.Fatalf("no MCP: Decide = %+v", d)
	}
}
