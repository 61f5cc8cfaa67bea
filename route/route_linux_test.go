package route

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mcpagent/mcpagent/internal/netnstest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The testbed's uplinks: wan0 (DSL) and wan1 (LTE).
var (
	wan0Addr4 = netip.MustParsePrefix("10.0.1.2/24")
	wan0Gw4   = netip.MustParseAddr("10.0.1.1")
	wan0Addr6 = netip.MustParsePrefix("2001:db8:1::2/64")
	wan0Gw6   = netip.MustParseAddr("2001:db8:1::1")
	wan1Addr4 = netip.MustParsePrefix("100.64.0.2/24")
	wan1Gw4   = netip.MustParseAddr("100.64.0.1")
	wan1New4  = netip.MustParsePrefix("100.64.0.3/24")
	internet  = net.ParseIP("198.51.100.1")
)

const (
	testTProxyMark  = 0x03000000
	testMarkMask    = 0x0f000000
	testTProxyTable = 2124
	testTable0      = 2125
	testTable1      = 2126
)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// addUplink creates an up veth interface (this kernel has no dummy
// interfaces) whose peer, also up, gives it a carrier.
func addUplink(t *testing.T, name string) netlink.Link {
	t.Helper()
	must(t, netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}))
	l, err := netlink.LinkByName(name)
	must(t, err)
	t.Cleanup(func() { netlink.LinkDel(l) })
	peer, err := netlink.LinkByName(name + "p")
	must(t, err)
	must(t, netlink.LinkSetUp(peer))
	must(t, netlink.LinkSetUp(l))
	settle(t, name, name+"p")
	return l
}

// noDAD turns IPv6 duplicate address detection off in the test namespace,
// so that the kernel configures IPv6 on an interface at once when it gets a
// carrier, not a second later.
func noDAD(t *testing.T) {
	t.Helper()
	for _, conf := range []string{"all", "default"} {
		must(t, os.WriteFile("/proc/sys/net/ipv6/conf/"+conf+"/accept_dad", []byte("0"), 0))
	}
}

// settle waits until the kernel has finished bringing up the named
// interfaces: link watch reports carrier changes asynchronously, and only
// then does IPv6 add the link-local address and its routes.
func settle(t *testing.T, names ...string) {
	t.Helper()
	for _, name := range names {
		eventually(t, 3*time.Second, name+" up with IPv6 configured", func() error {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			if l.Attrs().RawFlags&unix.IFF_RUNNING == 0 {
				return fmt.Errorf("flags %#x", l.Attrs().RawFlags)
			}
			addrs, err := netlink.AddrList(l, netlink.FAMILY_V6)
			if err != nil {
				return err
			}
			for _, a := range addrs {
				if a.IP.IsLinkLocalUnicast() && a.Flags&unix.IFA_F_TENTATIVE == 0 {
					return nil
				}
			}
			return fmt.Errorf("no link-local address yet: %v", addrs)
		})
	}
}

// addAddr adds an address and waits for its local route, which IPv6 adds
// from a work queue.
func addAddr(t *testing.T, l netlink.Link, p netip.Prefix) {
	t.Helper()
	must(t, netlink.AddrAdd(l, &netlink.Addr{IPNet: ipNet(p), Flags: unix.IFA_F_NODAD}))
	host := netip.PrefixFrom(p.Addr(), p.Addr().BitLen())
	eventually(t, 3*time.Second, "local route for "+p.String(), func() error {
		rs, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_LOCAL, Dst: ipNet(host)},
			netlink.RT_FILTER_TABLE|netlink.RT_FILTER_DST)
		if err != nil || len(rs) == 0 {
			return fmt.Errorf("%d routes, %v", len(rs), err)
		}
		return nil
	})
}

// addDefault adds a default route through l as netifd does for a WAN.
func addDefault(t *testing.T, l netlink.Link, gw netip.Addr, metric int) {
	t.Helper()
	dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	if gw.Is6() {
		dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	}
	must(t, netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(dst), Gw: gw.AsSlice(), Priority: metric}))
}

// kernelState renders every rule and every route of every table, with the
// fields that distinguish them, independently of the package's own types.
func kernelState(t *testing.T) string {
	t.Helper()
	rules, err := netlink.RuleList(netlink.FAMILY_ALL)
	must(t, err)
	var lines []string
	for _, r := range rules {
		lines = append(lines, ruleText(r))
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	must(t, err)
	for _, r := range routes {
		lines = append(lines, routeText(r))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func ruleText(r netlink.Rule) string {
	mask := "-"
	if r.Mask != nil {
		mask = fmt.Sprintf("%#x", *r.Mask)
	}
	return fmt.Sprintf("rule family %d pref %d from %v to %v mark %#x/%s iif %q oif %q table %d proto %d",
		r.Family, r.Priority, r.Src, r.Dst, r.Mark, mask, r.IifName, r.OifName, r.Table, r.Protocol)
}

func routeText(r netlink.Route) string {
	return fmt.Sprintf("route family %d table %d type %d dst %v gw %v dev %d metric %d scope %d src %v proto %d",
		r.Family, r.Table, r.Type, r.Dst, r.Gw, r.LinkIndex, r.Priority, r.Scope, r.Src, r.Protocol)
}

// tableRoutes renders the routes of table in one family, without protocol.
func tableRoutes(t *testing.T, family, table int) []string {
	t.Helper()
	routes, err := netlink.RouteListFiltered(family, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
	must(t, err)
	var lines []string
	for _, r := range routes {
		lines = append(lines, fmt.Sprintf("%v via %v dev %d metric %d type %d", r.Dst, r.Gw, r.LinkIndex, r.Priority, r.Type))
	}
	slices.Sort(lines)
	return lines
}

// ourRules renders the rules at the package's preferences.
func ourRules(t *testing.T) []string {
	t.Helper()
	rules, err := netlink.RuleList(netlink.FAMILY_ALL)
	must(t, err)
	var lines []string
	for _, r := range rules {
		if r.Priority < DefaultRulePriority || r.Priority > DefaultRulePriority+2 {
			continue
		}
		mark := ""
		if r.Mask != nil {
			mark = fmt.Sprintf(" fwmark %#x/%#x", r.Mark, *r.Mask)
		}
		lines = append(lines, fmt.Sprintf("%d: from %v%s lookup %d", r.Priority, r.Src, mark, r.Table))
	}
	slices.Sort(lines)
	return lines
}

// routeVia returns the interface and gateway the kernel picks for dst from
// src with mark.
func routeVia(t *testing.T, dst net.IP, src netip.Addr, mark uint32) (int, string) {
	t.Helper()
	opts := &netlink.RouteGetOptions{Mark: mark}
	if src.IsValid() {
		opts.SrcAddr = src.AsSlice()
	}
	rs, err := netlink.RouteGetWithOptions(dst, opts)
	must(t, err)
	if len(rs) != 1 {
		t.Fatalf("route get %v from %v: %d routes", dst, src, len(rs))
	}
	if rs[0].Type == unix.RTN_LOCAL {
		return rs[0].LinkIndex, "local"
	}
	return rs[0].LinkIndex, rs[0].Gw.String()
}

// eventually retries check until it returns nil or d passes.
func eventually(t *testing.T, d time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s within %v: %v", what, d, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stateRecorder records what OnChange reports.
type stateRecorder struct {
	mu     sync.Mutex
	last   []UplinkState
	calls  int
	closed bool
	t      *testing.T
}

func (s *stateRecorder) onChange(st []UplinkState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		s.t.Errorf("OnChange called after Close: %v", st)
	}
	s.last, s.calls = st, s.calls+1
}

func (s *stateRecorder) get() ([]UplinkState, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last, s.calls
}

func TestIntegrationRouter(t *testing.T) {
	netnstest.RequireIsolatedRoot(t)
	noDAD(t)
	wan0 := addUplink(t, "wan0")
	wan1 := addUplink(t, "wan1")
	lan0 := addUplink(t, "lan0") // a veth like the uplinks; no uplink's
	addAddr(t, lan0, netip.MustParsePrefix("192.168.7.1/24"))
	addAddr(t, wan0, wan0Addr4)
	addAddr(t, wan0, wan0Addr6)
	addAddr(t, wan1, wan1Addr4)
	addDefault(t, wan0, wan0Gw4, 10)
	addDefault(t, wan1, wan1Gw4, 20)
	addDefault(t, wan0, wan0Gw6, 10)
	before := kernelState(t)

	rec := &stateRecorder{t: t}
	r, err := Start(Config{
		Uplinks:       []Uplink{{Name: "dsl", Interface: "wan0", Table: testTable0}, {Name: "lte", Interface: "wan1", Table: testTable1}},
		LANInterfaces: []string{"lan0"},
		TProxyMark:    testTProxyMark,
		MarkMask:      testMarkMask,
		TProxyTable:   testTProxyTable,
		OnChange:      rec.onChange,
		Logger:        slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	must(t, err)
	t.Cleanup(func() { r.Close() })
	i0, i1 := wan0.Attrs().Index, wan1.Attrs().Index

	wantState := []UplinkState{
		{Name: "dsl", Interface: "wan0", Index: i0, Up: true, Addrs: []netip.Prefix{wan0Addr4, wan0Addr6},
			Gateway4: wan0Gw4, Gateway6: wan0Gw6, Default4: true, Default6: true},
		{Name: "lte", Interface: "wan1", Index: i1, Up: true, Addrs: []netip.Prefix{wan1Addr4}, Gateway4: wan1Gw4, Default4: true},
	}
	if diff := cmp.Diff(wantState, r.State(), cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Fatalf("State() after Start (-want +got):\n%s", diff)
	}
	wantRules := []string{
		"900: from <nil> fwmark 0x3000000/0xf000000 lookup 2124",
		"900: from <nil> fwmark 0x3000000/0xf000000 lookup 2124",
		"901: from 10.0.1.2/32 lookup 2125",
		"901: from 2001:db8:1::2/128 lookup 2125",
		"902: from 100.64.0.2/32 lookup 2126",
	}
	if diff := cmp.Diff(wantRules, ourRules(t)); diff != "" {
		t.Fatalf("rules (-want +got):\n%s", diff)
	}
	checkTable := func(family, table int, want []string) {
		t.Helper()
		if diff := cmp.Diff(want, tableRoutes(t, family, table)); diff != "" {
			t.Errorf("table %d family %d (-want +got):\n%s", table, family, diff)
		}
	}
	checkTable(netlink.FAMILY_V4, testTProxyTable, []string{"0.0.0.0/0 via <nil> dev 1 metric 0 type 2"})
	checkTable(netlink.FAMILY_V6, testTProxyTable, []string{"::/0 via <nil> dev 1 metric 1024 type 2"})
	checkTable(netlink.FAMILY_V4, testTable0, []string{
		fmt.Sprintf("0.0.0.0/0 via 10.0.1.1 dev %d metric 10 type 1", i0),
		"0.0.0.0/0 via <nil> dev 0 metric 2147483647 type 7",
		fmt.Sprintf("10.0.1.0/24 via <nil> dev %d metric 0 type 1", i0),
		"192.168.7.0/24 via <nil> dev 0 metric 0 type 9",
	})
	checkTable(netlink.FAMILY_V4, testTable1, []string{
		fmt.Sprintf("0.0.0.0/0 via 100.64.0.1 dev %d metric 20 type 1", i1),
		"0.0.0.0/0 via <nil> dev 0 metric 2147483647 type 7",
		fmt.Sprintf("100.64.0.0/24 via <nil> dev %d metric 0 type 1", i1),
		"192.168.7.0/24 via <nil> dev 0 metric 0 type 9",
	})
	v6 := tableRoutes(t, netlink.FAMILY_V6, testTable0)
	for _, want := range []string{
		"::/0 via <nil> dev 1 metric 2147483647 type 7",
		fmt.Sprintf("2001:db8:1::/64 via <nil> dev %d metric 256 type 1", i0),
		fmt.Sprintf("::/0 via 2001:db8:1::1 dev %d metric 10 type 1", i0),
	} {
		if !slices.Contains(v6, want) {
			t.Errorf("IPv6 table %d = %q, want it to contain %q", testTable0, v6, want)
		}
	}

	// Sockets bound to an uplink's address leave through that uplink, even
	// though the main table prefers wan0; TPROXY-marked packets are local.
	if dev, gw := routeVia(t, internet, wan1Addr4.Addr(), 0); dev != i1 || gw != "100.64.0.1" {
		t.Errorf("route to %v from %v: dev %d via %s, want dev %d via 100.64.0.1", internet, wan1Addr4.Addr(), dev, gw, i1)
	}
	if dev, gw := routeVia(t, internet, wan0Addr4.Addr(), 0); dev != i0 || gw != "10.0.1.1" {
		t.Errorf("route to %v from %v: dev %d via %s, want dev %d via 10.0.1.1", internet, wan0Addr4.Addr(), dev, gw, i0)
	}
	// A reply from an uplink's address to a LAN host goes to the LAN: the
	// uplink's table throws the LAN's prefix back to the main table.
	if dev, _ := routeVia(t, net.ParseIP("192.168.7.2"), wan0Addr4.Addr(), 0); dev != lan0.Attrs().Index {
		t.Errorf("route to a LAN host from %v: dev %d, want the LAN's %d", wan0Addr4.Addr(), dev, lan0.Attrs().Index)
	}
	// Without a default route of its own, LTE's address is unreachable
	// beyond its subnet, rather than routed out of DSL by the main table.
	lteDefault := &netlink.Route{LinkIndex: i1, Gw: wan1Gw4.AsSlice(), Priority: 20}
	must(t, netlink.RouteDel(lteDefault))
	eventually(t, time.Second, "LTE's address unreachable without its default route", func() error {
		if rs, err := netlink.RouteGetWithOptions(internet, &netlink.RouteGetOptions{SrcAddr: wan1Addr4.Addr().AsSlice()}); !errors.Is(err, unix.EHOSTUNREACH) {
			return fmt.Errorf("route get %v from %v: %v, %v; want no route to host", internet, wan1Addr4.Addr(), rs, err)
		}
		return nil
	})
	addDefault(t, wan1, wan1Gw4, 20)
	eventually(t, time.Second, "LTE's default route back in its table", func() error {
		if got := tableRoutes(t, netlink.FAMILY_V4, testTable1); !slices.Contains(got, fmt.Sprintf("0.0.0.0/0 via 100.64.0.1 dev %d metric 20 type 1", i1)) {
			return fmt.Errorf("table %d = %q", testTable1, got)
		}
		return nil
	})
	if _, gw := routeVia(t, internet, netip.Addr{}, testTProxyMark|0x100); gw != "local" {
		t.Errorf("route to %v with the TPROXY mark: via %s, want local delivery", internet, gw)
	}
	if _, gw := routeVia(t, net.ParseIP("2001:db8:ffff::1"), netip.Addr{}, testTProxyMark); gw != "local" {
		t.Errorf("IPv6 route with the TPROXY mark: via %s, want local delivery", gw)
	}

	// LTE gets a new address; netifd re-adds the default route the kernel
	// flushed with the old one.
	must(t, netlink.AddrDel(wan1, &netlink.Addr{IPNet: ipNet(wan1Addr4)}))
	addAddr(t, wan1, wan1New4)
	addDefault(t, wan1, wan1Gw4, 20)
	eventually(t, time.Second, "rule and state follow the new LTE address", func() error {
		want := []string{"902: from 100.64.0.3/32 lookup 2126"}
		got := slices.DeleteFunc(ourRules(t), func(s string) bool { return !strings.HasPrefix(s, "902:") })
		if !slices.Equal(got, want) {
			return fmt.Errorf("rules at 902 = %q, want %q", got, want)
		}
		if st, _ := rec.get(); len(st) != 2 || !slices.Equal(st[1].Addrs, []netip.Prefix{wan1New4}) || !st[1].Default4 {
			return fmt.Errorf("last OnChange = %v", st)
		}
		return nil
	})
	if dev, _ := routeVia(t, internet, wan1New4.Addr(), 0); dev != i1 {
		t.Errorf("route from the new LTE address: dev %d, want %d", dev, i1)
	}

	// LTE goes down and comes back.
	must(t, netlink.LinkSetDown(wan1))
	eventually(t, time.Second, "state shows LTE down", func() error {
		if st, _ := rec.get(); len(st) != 2 || st[1].Up || st[1].Default4 {
			return fmt.Errorf("last OnChange = %v", st)
		}
		return nil
	})
	must(t, netlink.LinkSetUp(wan1))
	settle(t, "wan1")
	addDefault(t, wan1, wan1Gw4, 20)
	eventually(t, time.Second, "LTE's default route is back in its table", func() error {
		if st, _ := rec.get(); len(st) != 2 || !st[1].Up || st[1].Gateway4 != wan1Gw4 {
			return fmt.Errorf("last OnChange = %v", st)
		}
		if got := tableRoutes(t, netlink.FAMILY_V4, testTable1); !slices.Contains(got, fmt.Sprintf("0.0.0.0/0 via 100.64.0.1 dev %d metric 20 type 1", i1)) {
			return fmt.Errorf("table %d = %q", testTable1, got)
		}
		return nil
	})
	if dev, gw := routeVia(t, internet, wan1New4.Addr(), 0); dev != i1 || gw != "100.64.0.1" {
		t.Errorf("route from LTE after it came back: dev %d via %s", dev, gw)
	}

	// Restore the original LTE address so the kernel state can be compared
	// with the one before Start.
	must(t, netlink.AddrDel(wan1, &netlink.Addr{IPNet: ipNet(wan1New4)}))
	addAddr(t, wan1, wan1Addr4)
	addDefault(t, wan1, wan1Gw4, 20)
	must(t, r.Close())
	rec.mu.Lock()
	rec.closed = true
	rec.mu.Unlock()
	if diff := cmp.Diff(before, kernelState(t)); diff != "" {
		t.Fatalf("rules and routes after Close (-before Start +after Close):\n%s", diff)
	}
	must(t, r.Close())
	// Nothing watches any more: a change reaches neither OnChange nor the
	// tables.
	must(t, netlink.LinkSetDown(wan0))
	time.Sleep(3 * debounce)
	if got := tableRoutes(t, netlink.FAMILY_ALL, testTable0); len(got) != 0 {
		t.Errorf("table %d after Close = %q", testTable0, got)
	}
}

// TestIntegrationLeftovers checks that Start replaces what a killed run
// left and that Close removes it, but touches no rule or route of others,
// even in the package's tables.
func TestIntegrationLeftovers(t *testing.T) {
	netnstest.RequireIsolatedRoot(t)
	noDAD(t)
	wan1 := addUplink(t, "wan1")
	addAddr(t, wan1, wan1Addr4)
	addDefault(t, wan1, wan1Gw4, 20)
	// Someone else's rule at our preference and route in our table.
	foreignRule := netlink.NewRule()
	foreignRule.Priority, foreignRule.Table, foreignRule.Src = DefaultRulePriority+1, testTable1, ipNet(netip.MustParsePrefix("192.0.2.0/24"))
	must(t, netlink.RuleAdd(foreignRule))
	t.Cleanup(func() { netlink.RuleDel(foreignRule) })
	foreignRoute := &netlink.Route{Table: testTable1, Dst: ipNet(netip.MustParsePrefix("203.0.113.0/24")), Gw: wan1Gw4.AsSlice(), LinkIndex: wan1.Attrs().Index}
	must(t, netlink.RouteAdd(foreignRoute))
	before := kernelState(t)
	// What a killed run left: a rule for an address LTE no longer has, and
	// a copy of a route that is gone from the main table.
	stale := netlink.NewRule()
	stale.Priority, stale.Table, stale.Src, stale.Protocol = DefaultRulePriority+1, testTable1, ipNet(netip.MustParsePrefix("100.64.0.9/32")), routeProtocol
	must(t, netlink.RuleAdd(stale))
	must(t, netlink.RouteAdd(&netlink.Route{Table: testTable1, Dst: ipNet(netip.MustParsePrefix("0.0.0.0/0")), Gw: wan1Gw4.AsSlice(),
		LinkIndex: wan1.Attrs().Index, Priority: 99, Protocol: routeProtocol}))

	r, err := Start(Config{
		Uplinks:     []Uplink{{Name: "lte", Interface: "wan1", Table: testTable1}},
		TProxyMark:  testTProxyMark,
		MarkMask:    testMarkMask,
		TProxyTable: testTProxyTable,
	})
	must(t, err)
	t.Cleanup(func() { r.Close() })
	rules := ourRules(t)
	if slices.Contains(rules, "901: from 100.64.0.9/32 lookup 2126") || !slices.Contains(rules, "901: from 192.0.2.0/24 lookup 2126") ||
		!slices.Contains(rules, "901: from 100.64.0.2/32 lookup 2126") {
		t.Errorf("rules after Start = %q, want the stale one replaced and the foreign one kept", rules)
	}
	table := tableRoutes(t, netlink.FAMILY_V4, testTable1)
	if want := fmt.Sprintf("0.0.0.0/0 via 100.64.0.1 dev %d metric 99 type 1", wan1.Attrs().Index); slices.Contains(table, want) {
		t.Errorf("table %d after Start = %q, still has the stale %q", testTable1, table, want)
	}
	must(t, r.Close())
	if diff := cmp.Diff(before, kernelState(t)); diff != "" {
		t.Fatalf("rules and routes after Close (-before leftovers +after Close):\n%s", diff)
	}
}
