package agent

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mcpagent/mcpagent/config"
	"github.com/mcpagent/mcpagent/route"
)

// TestInformerKicks: an uplink is asked again when it comes up or its
// addresses change while up, never while down, and one kick is pending at
// most.
func TestInformerKicks(t *testing.T) {
	a1 := []netip.Prefix{netip.MustParsePrefix("10.0.1.2/24")}
	a2 := []netip.Prefix{netip.MustParsePrefix("10.0.1.3/24")}
	steps := []struct {
		dsl, lte route.UplinkState
		want     []int // kicks pending per uplink after the step
	}{
		{dsl: route.UplinkState{Up: true, Addrs: a1}, lte: route.UplinkState{}, want: []int{1, 0}},
		{dsl: route.UplinkState{Up: true, Addrs: a1}, lte: route.UplinkState{Addrs: a2}, want: []int{0, 0}},
		{dsl: route.UplinkState{Up: true, Addrs: a2}, lte: route.UplinkState{Up: true, Addrs: a2}, want: []int{1, 1}},
		{dsl: route.UplinkState{Up: false}, lte: route.UplinkState{Up: true, Addrs: a2}, want: []int{1, 1}},
	}
	cfg := &config.Config{Uplinks: []config.Uplink{{Name: "dsl", Interface: "wan0"}, {Name: "lte", Interface: "wan1"}}}
	prov := newProvisioner(cfg, func([]netip.AddrPort) bool { return true }, discardLog())
	in := &informer{prov: prov, kicks: []chan struct{}{make(chan struct{}, 1), make(chan struct{}, 1)}, last: make([]route.UplinkState, 2)}
	for i, s := range steps {
		in.uplinksChanged([]route.UplinkState{s.dsl, s.lte})
		got := []int{len(in.kicks[0]), len(in.kicks[1])}
		if diff := cmp.Diff(s.want, got); diff != "" {
			t.Errorf("step %d: pending kicks (-want +got):\n%s", i, diff)
		}
		if i == 0 {
			<-in.kicks[0] // the loop took it
		}
	}
	var none *informer
	none.uplinksChanged([]route.UplinkState{{Up: true}}) // must not panic
}

// TestInformerWithdrawsWhenDown: an uplink that goes down takes its lists
// with it, both families; the other uplink's stay.
func TestInformerWithdrawsWhenDown(t *testing.T) {
	cfg := &config.Config{
		Uplinks: []config.Uplink{{Name: "dsl", Interface: "wan0"}, {Name: "lte", Interface: "wan1"}},
		MCP:     config.MCP{Port: 5124},
	}
	var got []netip.AddrPort
	prov := newProvisioner(cfg, func(l []netip.AddrPort) bool { got = l; return true }, discardLog())
	in := &informer{prov: prov, kicks: []chan struct{}{make(chan struct{}, 2), make(chan struct{}, 2)}, last: make([]route.UplinkState, 2)}
	up := route.UplinkState{Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("10.0.1.2/24")}}
	in.uplinksChanged([]route.UplinkState{up, up})
	prov.informed(0, 4, []netip.Addr{netip.MustParseAddr("198.51.100.1")}, nil)
	prov.informed(0, 6, []netip.Addr{netip.MustParseAddr("2001:db8:4::1")}, nil)
	prov.informed(1, 4, []netip.Addr{netip.MustParseAddr("198.51.100.2")}, nil)
	if len(got) != 3 {
		t.Fatalf("learned %v, want three MCPs", got)
	}
	in.uplinksChanged([]route.UplinkState{{Up: false}, up})
	if diff := cmp.Diff([]string{"198.51.100.2:5124"}, apStrings(got)); diff != "" {
		t.Errorf("after dsl went down (-want +got):\n%s", diff)
	}
}

// TestJitter: within a fifth either way, and not always the same.
func TestJitter(t *testing.T) {
	const d = 10 * time.Minute
	seen := map[time.Duration]bool{}
	for range 100 {
		j := jitter(d)
		if j < d-d/5 || j > d+d/5 {
			t.Fatalf("jitter(%v) = %v, beyond a fifth", d, j)
		}
		seen[j] = true
	}
	if len(seen) < 50 {
		t.Errorf("100 jitters of %v gave %d values", d, len(seen))
	}
}
