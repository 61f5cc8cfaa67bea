package route

import (
	"errors"
	"net/netip"
	"slices"
	"sync"
)

// fakeKernel is a system that keeps the routing state in memory and acts
// like the kernel where the package depends on it: routes need their
// interface, a link going down loses its routes in every table, adding what
// exists fails.
type fakeKernel struct {
	mu sync.Mutex
	s  snapshot
	// failAdds makes the next that many route or rule additions fail;
	// failRules makes every rule addition fail.
	failAdds  int
	failRules bool
	snapshots int
	closed    int
	kick      chan struct{}
}

var (
	errFakeExists   = errors.New("file exists")
	errFakeNoDevice = errors.New("no such device")
	errFakeInjected = errors.New("injected failure")
)

func newFakeKernel() *fakeKernel { return &fakeKernel{kick: make(chan struct{}, 1)} }

func (k *fakeKernel) snapshot() (snapshot, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.snapshots++
	return snapshot{
		links:  slices.Clone(k.s.links),
		addrs:  slices.Clone(k.s.addrs),
		routes: slices.Clone(k.s.routes),
		rules:  slices.Clone(k.s.rules),
	}, nil
}

func (k *fakeKernel) injected() bool {
	if k.failAdds > 0 {
		k.failAdds--
		return true
	}
	return false
}

func (k *fakeKernel) addRule(x rule) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.injected() || k.failRules {
		return errFakeInjected
	}
	if slices.ContainsFunc(k.s.rules, func(r rule) bool { return r.String() == x.String() }) {
		return errFakeExists
	}
	x.ours = true
	k.s.rules = append(k.s.rules, x)
	return nil
}

func (k *fakeKernel) delRule(x rule) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.s.rules = slices.DeleteFunc(k.s.rules, func(r rule) bool { return r.ours && r.String() == x.String() })
	return nil
}

func (k *fakeKernel) addRoute(x route) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.injected() {
		return errFakeInjected
	}
	// Unreachable and throw routes of IPv4 have no device.
	noDevice := x.linkIndex == 0 && (x.typ == rtnUnreachable || x.typ == rtnThrow)
	if !noDevice && !slices.ContainsFunc(k.s.links, func(l link) bool { return l.index == x.linkIndex }) {
		return errFakeNoDevice
	}
	if slices.ContainsFunc(k.s.routes, func(r route) bool { return r.String() == x.String() }) {
		return errFakeExists
	}
	x.ours = true
	k.s.routes = append(k.s.routes, x)
	return nil
}

func (k *fakeKernel) delRoute(x route) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.s.routes = slices.DeleteFunc(k.s.routes, func(r route) bool { return r.ours && r.String() == x.String() })
	return nil
}

func (k *fakeKernel) changed() <-chan struct{} { return k.kick }

func (k *fakeKernel) close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.closed++
	return nil
}

// event changes the fake kernel's state as the system would; apply does
// it and reports the change, as netlink would.
type event func(*snapshot)

func (k *fakeKernel) apply(e event) {
	k.mu.Lock()
	e(&k.s)
	k.mu.Unlock()
	select {
	case k.kick <- struct{}{}:
	default:
	}
}

// ours returns the package's rules and routes in the fake kernel, in the
// order desired produces.
func (k *fakeKernel) ours() ([]rule, []route) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var rules []rule
	for _, r := range k.s.rules {
		if r.ours {
			rules = append(rules, r)
		}
	}
	var routes []route
	for _, r := range k.s.routes {
		if r.ours {
			routes = append(routes, r)
		}
	}
	rules = sortedUnique(rules, rule.String, func(a, b rule) int { return a.priority - b.priority })
	routes = sortedUnique(routes, route.String, compareRouteAddOrder)
	return rules, routes
}

func setLink(index int, name string, up bool) event {
	return func(s *snapshot) {
		i := slices.IndexFunc(s.links, func(l link) bool { return l.index == index })
		if i < 0 {
			s.links = append(s.links, link{index: index, name: name, up: up})
			return
		}
		s.links[i].up = up
		if !up {
			// fib_disable_ip: a link that goes down loses its routes.
			s.routes = slices.DeleteFunc(s.routes, func(r route) bool { return r.linkIndex == index })
		}
	}
}

func addAddress(a address) event {
	return func(s *snapshot) { s.addrs = append(s.addrs, a) }
}

func delAddress(a address) event {
	return func(s *snapshot) {
		s.addrs = slices.DeleteFunc(s.addrs, func(b address) bool { return b == a })
	}
}

func addMainRoute(r route) event {
	r.table = tableMain
	return func(s *snapshot) { s.routes = append(s.routes, r) }
}

func delMainRoute(r route) event {
	r.table = tableMain
	return func(s *snapshot) {
		s.routes = slices.DeleteFunc(s.routes, func(x route) bool { return x == r })
	}
}

// The testbed: lo, wan0 (DSL, metric 10), wan1 (LTE, metric 20) and a LAN.
var (
	p4 = netip.MustParsePrefix
	a4 = netip.MustParseAddr

	tbWan0Addr4 = address{linkIndex: 2, prefix: p4("10.0.1.2/24"), global: true}
	tbWan0Addr6 = address{linkIndex: 2, prefix: p4("2001:db8:1::2/64"), global: true}
	tbWan0LL    = address{linkIndex: 2, prefix: p4("fe80::2/64")}
	tbWan1Addr4 = address{linkIndex: 3, prefix: p4("100.64.0.2/24"), global: true}
	tbLANAddr4  = address{linkIndex: 4, prefix: p4("192.168.1.1/24"), global: true}

	tbWan0Net4  = route{typ: rtnUnicast, dst: p4("10.0.1.0/24"), linkIndex: 2, scope: scopeLink, prefSrc: a4("10.0.1.2")}
	tbWan0Def4  = route{typ: rtnUnicast, dst: p4("0.0.0.0/0"), gw: a4("10.0.1.1"), linkIndex: 2, metric: 10}
	tbWan0Net6  = route{typ: rtnUnicast, dst: p4("2001:db8:1::/64"), linkIndex: 2, metric: 256}
	tbWan0LLNet = route{typ: rtnUnicast, dst: p4("fe80::/64"), linkIndex: 2, metric: 256}
	tbWan0Def6  = route{typ: rtnUnicast, dst: p4("::/0"), gw: a4("2001:db8:1::1"), linkIndex: 2, metric: 1024}
	tbWan1Net4  = route{typ: rtnUnicast, dst: p4("100.64.0.0/24"), linkIndex: 3, scope: scopeLink, prefSrc: a4("100.64.0.2")}
	tbWan1Def4  = route{typ: rtnUnicast, dst: p4("0.0.0.0/0"), gw: a4("100.64.0.1"), linkIndex: 3, metric: 20}
	tbLANNet4   = route{typ: rtnUnicast, dst: p4("192.168.1.0/24"), linkIndex: 4, scope: scopeLink, prefSrc: a4("192.168.1.1")}
)

// testbedEvents build the testbed from nothing.
func testbedEvents() []event {
	return []event{
		setLink(1, "lo", true),
		setLink(2, "wan0", true),
		setLink(3, "wan1", true),
		setLink(4, "br-lan", true),
		addAddress(tbWan0Addr4),
		addAddress(tbWan0Addr6),
		addAddress(tbWan0LL),
		addAddress(tbWan1Addr4),
		addAddress(tbLANAddr4),
		addMainRoute(tbWan0Net4),
		addMainRoute(tbWan0Def4),
		addMainRoute(tbWan0Net6),
		addMainRoute(tbWan0LLNet),
		addMainRoute(tbWan0Def6),
		addMainRoute(tbWan1Net4),
		addMainRoute(tbWan1Def4),
		addMainRoute(tbLANNet4),
	}
}

func testbedSnapshot() snapshot {
	var s snapshot
	for _, e := range testbedEvents() {
		e(&s)
	}
	return s
}

func testConfig() Config {
	return Config{
		Uplinks:       []Uplink{{Name: "dsl", Interface: "wan0", Table: 2125}, {Name: "lte", Interface: "wan1", Table: 2126}},
		LANInterfaces: []string{"br-lan"},
		TProxyMark:    0x03000000,
		MarkMask:      0x0f000000,
		TProxyTable:   2124,
	}
}
