package agent

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
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
	in := &informer{kicks: []chan struct{}{make(chan struct{}, 1), make(chan struct{}, 1)}, last: make([]route.UplinkState, 2)}
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
