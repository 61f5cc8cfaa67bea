package route

import (
	"fmt"
	"math/rand"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/mcpagent/mcpagent/internal/golden"
)

func validConfig(t *testing.T, c Config) Config {
	t.Helper()
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestDesired renders what the package wants for snapshots of the kernel.
func TestDesired(t *testing.T) {
	tests := []struct {
		name string
		cfg  func() Config
		snap func() snapshot
	}{
		{
			// Two uplinks, IPv6 on DSL, a LAN that is not copied.
			name: "testbed",
			cfg:  testConfig,
			snap: testbedSnapshot,
		},
		{
			// PPPoE: a peer address and a default route without a gateway.
			name: "pppoe",
			cfg: func() Config {
				c := testConfig()
				c.Uplinks = []Uplink{{Name: "dsl", Interface: "pppoe-wan", Table: 10}}
				c.RulePriority = 1300
				return c
			},
			snap: func() snapshot {
				return snapshot{
					links: []link{{index: 1, name: "lo", up: true}, {index: 9, name: "pppoe-wan", up: true}},
					addrs: []address{{linkIndex: 9, prefix: p4("198.51.100.7/32"), global: true}},
					routes: []route{
						{table: tableMain, typ: rtnUnicast, dst: p4("0.0.0.0/0"), linkIndex: 9, scope: scopeLink},
						{table: tableMain, typ: rtnUnicast, dst: p4("198.51.100.1/32"), linkIndex: 9, scope: scopeLink, prefSrc: a4("198.51.100.7")},
					},
				}
			},
		},
		{
			// LTE's interface does not exist yet; DSL is down and the kernel
			// dropped its routes, but it keeps its address.
			name: "missing_and_down",
			cfg:  testConfig,
			snap: func() snapshot {
				return snapshot{
					links: []link{{index: 1, name: "lo", up: true}, {index: 2, name: "wan0"}},
					addrs: []address{tbWan0Addr4},
				}
			},
		},
		{
			// What is never copied or reported: tentative and link-local
			// addresses, multipath routes, routes with a gateway that are not
			// default routes, other tables, routes of other types. Of two
			// default routes the lower metric gives the gateway.
			name: "filtered",
			cfg:  testConfig,
			snap: func() snapshot {
				s := testbedSnapshot()
				s.addrs = append(s.addrs,
					address{linkIndex: 2, prefix: p4("2001:db8:1::99/64"), global: true, tentative: true},
					address{linkIndex: 2, prefix: p4("2001:db8:1::1:98/64"), global: true, deprecated: true}, // a rule, no source
					address{linkIndex: 3, prefix: p4("100.64.0.2/24"), global: true},                         // duplicate report
				)
				s.routes = append(s.routes,
					route{table: tableMain, typ: rtnUnicast, dst: p4("0.0.0.0/0"), gw: a4("100.64.0.254"), linkIndex: 3, metric: 5},
					route{table: tableMain, typ: rtnUnicast, dst: p4("0.0.0.0/0"), gw: a4("100.64.0.253"), linkIndex: 3, metric: 5},
					route{table: tableMain, typ: rtnUnicast, dst: p4("0.0.0.0/0"), linkIndex: 3, multipath: true},
					route{table: tableMain, typ: rtnUnicast, dst: p4("203.0.113.0/24"), gw: a4("100.64.0.1"), linkIndex: 3},
					route{table: tableMain, typ: 6 /* RTN_BLACKHOLE */, dst: p4("192.0.2.0/24"), linkIndex: 3},
					route{table: 100, typ: rtnUnicast, dst: p4("0.0.0.0/0"), gw: a4("100.64.0.9"), linkIndex: 3},
					route{table: 2126, typ: rtnUnicast, dst: p4("0.0.0.0/0"), gw: a4("100.64.0.8"), linkIndex: 3, ours: true},
					// A VPN's half of the Internet: not thrown (no LAN link).
					route{table: tableMain, typ: rtnUnicast, dst: p4("0.0.0.0/1"), linkIndex: 9, scope: scopeLink},
					// A LAN subnet behind a router in the LAN: thrown.
					route{table: tableMain, typ: rtnUnicast, dst: p4("10.50.0.0/16"), gw: a4("192.168.1.254"), linkIndex: 4},
				)
				s.links = append(s.links, link{index: 9, name: "wg0", up: true})
				return s
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := validConfig(t, tt.cfg())
			s := tt.snap()
			p := desired(cfg, s)
			got := render(p.rules, p.routes, p.states)
			golden.Check(t, "desired_"+tt.name+".golden", got)

			// The order of the snapshot does not matter.
			rnd := rand.New(rand.NewSource(1))
			for i := 0; i < 20; i++ {
				rnd.Shuffle(len(s.links), func(i, j int) { s.links[i], s.links[j] = s.links[j], s.links[i] })
				rnd.Shuffle(len(s.addrs), func(i, j int) { s.addrs[i], s.addrs[j] = s.addrs[j], s.addrs[i] })
				rnd.Shuffle(len(s.routes), func(i, j int) { s.routes[i], s.routes[j] = s.routes[j], s.routes[i] })
				p := desired(cfg, s)
				if diff := cmp.Diff(got, render(p.rules, p.routes, p.states)); diff != "" {
					t.Fatalf("shuffled snapshot gives another plan (-want +got):\n%s", diff)
				}
			}
		})
	}
}

func TestDiff(t *testing.T) {
	cfg := validConfig(t, testConfig())
	s := testbedSnapshot()
	// Ours and still wanted, ours and stale, someone else's in our table
	// and at our preference.
	wanted := route{table: 2125, typ: rtnUnicast, dst: p4("0.0.0.0/0"), gw: a4("10.0.1.1"), linkIndex: 2, metric: 10, ours: true}
	s.routes = append(s.routes, wanted,
		route{table: 2126, typ: rtnUnicast, dst: p4("0.0.0.0/0"), gw: a4("100.64.0.99"), linkIndex: 3, ours: true},
		route{table: 2126, typ: rtnUnicast, dst: p4("203.0.113.0/24"), gw: a4("100.64.0.1"), linkIndex: 3},
	)
	s.rules = append(s.rules,
		rule{priority: 902, src: p4("100.64.0.2/32"), table: 2126, ours: true},
		rule{priority: 902, src: p4("100.64.0.9/32"), table: 2126, ours: true},
		rule{priority: 902, src: p4("100.64.0.9/32"), table: 2126, ours: true}, // listed twice
		rule{priority: 902, src: p4("192.0.2.0/24"), table: 2126},
	)
	c := diff(desired(cfg, s), s)
	var b strings.Builder
	for _, r := range c.delRules {
		fmt.Fprintf(&b, "del rule %s\n", r)
	}
	for _, r := range c.delRoutes {
		fmt.Fprintf(&b, "del route %s\n", r)
	}
	for _, r := range c.addRoutes {
		fmt.Fprintf(&b, "add route %s\n", r)
	}
	for _, r := range c.addRules {
		fmt.Fprintf(&b, "add rule %s\n", r)
	}
	golden.Check(t, "diff.golden", b.String())

	foreign := testbedSnapshot()
	foreign.routes = append(foreign.routes, s.routes[len(s.routes)-1])
	foreign.rules = s.rules[len(s.rules)-1:]
	if c := diff(plan{}, foreign); !c.empty() {
		t.Errorf("diff of an empty plan with nothing of ours = %+v, want no changes", c)
	}
}

// TestReplay builds the testbed in random orders, with transient changes
// in between, reconciling after every event the way the watcher would:
// the package's rules and routes must always end up the same, and a
// reconcile of the final state must find nothing to do.
func TestReplay(t *testing.T) {
	cfg := validConfig(t, testConfig())
	transient := [][]event{
		{addAddress(address{linkIndex: 3, prefix: p4("100.64.0.9/24"), global: true}), delAddress(address{linkIndex: 3, prefix: p4("100.64.0.9/24"), global: true})},
		{addMainRoute(route{typ: rtnUnicast, dst: p4("0.0.0.0/0"), gw: a4("100.64.0.254"), linkIndex: 3, metric: 5}),
			delMainRoute(route{typ: rtnUnicast, dst: p4("0.0.0.0/0"), gw: a4("100.64.0.254"), linkIndex: 3, metric: 5})},
		{setLink(7, "wan9", true), setLink(7, "wan9", false)},
	}
	var want string
	for seed := int64(0); seed < 50; seed++ {
		rnd := rand.New(rand.NewSource(seed))
		events := testbedEvents()
		rnd.Shuffle(len(events), func(i, j int) { events[i], events[j] = events[j], events[i] })
		for _, pair := range transient {
			// Insert the pair in order at random places.
			i := rnd.Intn(len(events) + 1)
			events = append(events[:i], append([]event{pair[0]}, events[i:]...)...)
			j := i + 1 + rnd.Intn(len(events)-i)
			events = append(events[:j], append([]event{pair[1]}, events[j:]...)...)
		}
		k := newFakeKernel()
		r := &Router{cfg: cfg, log: cfg.Logger, sys: k}
		for _, e := range events {
			k.apply(e)
			r.reconcile(true) // errors are expected while interfaces are missing
		}
		if err := r.reconcile(true); err != nil {
			t.Fatalf("seed %d: final reconcile: %v", seed, err)
		}
		s, _ := k.snapshot()
		if c := diff(desired(cfg, s), s); !c.empty() {
			t.Fatalf("seed %d: reconcile did not converge: %+v", seed, c)
		}
		rules, routes := k.ours()
		got := render(rules, routes, r.State())
		if seed == 0 {
			want = got
			golden.Check(t, "replay_testbed.golden", got)
			continue
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("seed %d gives other state (-seed 0 +seed %d):\n%s", seed, seed, diff)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Config)
		err    string
	}{
		{name: "valid", modify: func(*Config) {}},
		{name: "no uplinks", modify: func(c *Config) { c.Uplinks = nil }},
		{name: "mask 0", modify: func(c *Config) { c.MarkMask = 0 }, err: "within mark mask"},
		{name: "mark 0", modify: func(c *Config) { c.TProxyMark = 0 }, err: "non-zero"},
		{name: "mark outside mask", modify: func(c *Config) { c.TProxyMark = 0x10000000 }, err: "within mark mask"},
		{name: "priority too high", modify: func(c *Config) { c.RulePriority = 32764 }, err: "rule priority 32764"},
		{name: "priority fits", modify: func(c *Config) { c.RulePriority = 32763 }},
		{name: "priority negative", modify: func(c *Config) { c.RulePriority = -1 }, err: "rule priority -1"},
		{name: "main table", modify: func(c *Config) { c.TProxyTable = 254 }, err: "TPROXY table 254 is reserved"},
		{name: "table 0", modify: func(c *Config) { c.Uplinks[0].Table = 0 }, err: "uplink dsl table 0 is reserved"},
		{name: "table 256", modify: func(c *Config) { c.Uplinks[0].Table = 256 }},
		{name: "table shared", modify: func(c *Config) { c.Uplinks[1].Table = c.TProxyTable }, err: "uplink lte table 2124 is also the TPROXY table"},
		{name: "name twice", modify: func(c *Config) { c.Uplinks[1].Name = "dsl" }, err: `uplink "dsl" listed twice`},
		{name: "interface twice", modify: func(c *Config) { c.Uplinks[1].Interface = "wan0" }, err: "belongs to another uplink"},
		{name: "no interface", modify: func(c *Config) { c.Uplinks[1].Interface = "" }, err: "must be set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := testConfig()
			tt.modify(&c)
			err := c.validate()
			switch {
			case tt.err == "" && err != nil:
				t.Fatalf("validate() = %v, want nil", err)
			case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
				t.Fatalf("validate() = %v, want error containing %q", err, tt.err)
			}
		})
	}
	c := testConfig()
	if err := c.validate(); err != nil || c.RulePriority != DefaultRulePriority || c.Logger == nil {
		t.Errorf("validate() = %v, RulePriority %d, Logger %v: want defaults filled in", err, c.RulePriority, c.Logger)
	}
}
