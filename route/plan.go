package route

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Values from include/uapi/linux/rtnetlink.h, kept here so that the
// reconcile logic builds and is tested on any OS.
const (
	tableMain = 254 // RT_TABLE_MAIN

	rtnUnicast     = 1 // RTN_UNICAST
	rtnLocal       = 2 // RTN_LOCAL
	rtnUnreachable = 7 // RTN_UNREACHABLE
	rtnThrow       = 9 // RTN_THROW

	scopeUniverse = 0   // RT_SCOPE_UNIVERSE
	scopeLink     = 253 // RT_SCOPE_LINK
	scopeHost     = 254 // RT_SCOPE_HOST

	// ipv6DefaultMetric is the metric the kernel gives an IPv6 route added
	// without one (IP6_RT_PRIO_USER, include/net/ip6_route.h).
	ipv6DefaultMetric = 1024

	// lastResortMetric is the metric of an uplink table's unreachable
	// default, behind any other default: the highest that fits an int of
	// 32 bits.
	lastResortMetric = 1<<31 - 1
)

// snapshot is the part of the kernel's routing state the package reads.
type snapshot struct {
	links  []link
	addrs  []address
	routes []route // of every table
	rules  []rule
}

type link struct {
	index int
	name  string
	// up reports whether the link is administratively up and its operational
	// state lets traffic pass (IFF_UP and IFF_RUNNING).
	up bool
}

type address struct {
	linkIndex int
	prefix    netip.Prefix
	// global reports whether the scope is universe (not link or host).
	global bool
	// tentative reports whether the address cannot be used yet or at all:
	// IPv6 duplicate address detection is running or failed.
	tentative bool
	// deprecated reports an IPv6 address past its preferred lifetime: the
	// old address after a prefix change, kept for the connections that
	// use it, never for new ones.
	deprecated bool
}

// route is a route in the kernel's terms. The zero gw means none.
type route struct {
	table     int
	typ       int // rtnUnicast, rtnLocal, ...
	dst       netip.Prefix
	gw        netip.Addr
	linkIndex int
	metric    int
	scope     int
	prefSrc   netip.Addr
	onlink    bool
	multipath bool // several nexthops; never copied
	ours      bool // carries routeProtocol
}

// rule is a policy routing rule: from src (all if invalid), with the
// packet mark masked by mask equal to mark (any if mask is 0), look up
// table.
type rule struct {
	priority int
	v6       bool
	src      netip.Prefix
	mark     uint32
	mask     uint32
	table    int
	ours     bool // carries routeProtocol
}

// plan is the state the package wants, computed from a snapshot.
type plan struct {
	rules  []rule
	routes []route
	states []UplinkState
}

// desired computes the rules and routes cfg wants given the kernel's state
// s, and the state of every uplink. cfg must be valid. It depends only on
// the contents of s, not on their order.
func desired(cfg Config, s snapshot) plan {
	var p plan
	byName := map[string]link{}
	for _, l := range s.links {
		byName[l.name] = l
	}
	// TPROXY: packets with the TPROXY mark are delivered locally, whatever
	// their destination.
	for _, v6 := range []bool{false, true} {
		p.rules = append(p.rules, rule{priority: cfg.RulePriority, v6: v6, mark: cfg.TProxyMark, mask: cfg.MarkMask, table: cfg.TProxyTable})
		if lo, ok := byName["lo"]; ok {
			r := route{table: cfg.TProxyTable, typ: rtnLocal, dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0), linkIndex: lo.index, scope: scopeHost}
			if v6 {
				// The kernel reports every IPv6 route with scope universe.
				r.dst, r.scope, r.metric = netip.PrefixFrom(netip.IPv6Unspecified(), 0), scopeUniverse, ipv6DefaultMetric
			}
			p.routes = append(p.routes, r)
		}
	}
	lanLinks := map[int]bool{}
	for _, name := range cfg.LANInterfaces {
		if l, ok := byName[name]; ok {
			lanLinks[l.index] = true
		}
	}
	lo, haveLo := byName["lo"]
	for _, u := range cfg.Uplinks {
		p.routes = append(p.routes, tableEnds(u.Table, s.routes, lanLinks, lo, haveLo)...)
	}
	for i, u := range cfg.Uplinks {
		st := UplinkState{Name: u.Name, Interface: u.Interface}
		l, ok := byName[u.Interface]
		if ok {
			st.Index, st.Up = l.index, l.up
			for _, a := range s.addrs {
				if a.linkIndex != l.index || !a.global || a.tentative {
					continue
				}
				// A deprecated address keeps its rule, for the subflows
				// that use it, but is no source for new ones.
				if !a.deprecated {
					st.Addrs = append(st.Addrs, a.prefix)
				}
				host := netip.PrefixFrom(a.prefix.Addr(), a.prefix.Addr().BitLen())
				p.rules = append(p.rules, rule{priority: cfg.RulePriority + 1 + i, v6: host.Addr().Is6(), src: host, table: u.Table})
			}
			slices.SortFunc(st.Addrs, comparePrefix)
			st.Addrs = slices.Compact(st.Addrs)
			var best4, best6 *route // lowest metric default route with a gateway
			for _, r := range s.routes {
				if r.table != tableMain || r.linkIndex != l.index || r.typ != rtnUnicast || r.multipath || r.ours {
					continue
				}
				isDefault := r.dst.Bits() == 0
				if !isDefault && r.gw.IsValid() {
					continue // neither a default nor a connected route
				}
				c := r
				c.table = u.Table
				p.routes = append(p.routes, c)
				if !isDefault {
					continue
				}
				best := &best4
				if r.dst.Addr().Is6() {
					st.Default6, best = true, &best6
				} else {
					st.Default4 = true
				}
				if r.gw.IsValid() && (*best == nil || r.metric < (*best).metric || r.metric == (*best).metric && r.gw.Less((*best).gw)) {
					*best = &c
				}
			}
			if best4 != nil {
				st.Gateway4 = best4.gw
			}
			if best6 != nil {
				st.Gateway6 = best6.gw
			}
		}
		p.states = append(p.states, st)
	}
	for i := range p.rules {
		p.rules[i].ours = true
	}
	for i := range p.routes {
		p.routes[i].ours = true
	}
	p.rules = sortedUnique(p.rules, rule.String, func(a, b rule) int { return a.priority - b.priority })
	p.routes = sortedUnique(p.routes, route.String, compareRouteAddOrder)
	return p
}

// tableEnds returns the routes that bound the uplink table: an unreachable
// default for each family, so that a packet from the uplink's address that
// the table cannot route is refused rather than falling through to the
// main table and out of another uplink (whose NAT would let a probe of a
// broken uplink succeed); and a throw route for the prefix of each route
// of the main table over a LAN link, connected or via a router in the LAN,
// so that a reply from the uplink's address to a LAN host, the router
// reached at its WAN address from inside, goes to the LAN. Only the LAN's:
// a VPN's routes (0.0.0.0/1 over wg0, say) would take the uplink's own
// traffic into the tunnel. The kernel shows IPv6 routes of these types on
// lo.
func tableEnds(table int, main []route, lanLinks map[int]bool, lo link, haveLo bool) []route {
	var out []route
	add := func(r route) {
		if r.dst.Addr().Is6() {
			if !haveLo {
				return
			}
			r.linkIndex = lo.index
			if r.metric == 0 {
				r.metric = ipv6DefaultMetric
			}
		}
		out = append(out, r)
	}
	for _, v6 := range []bool{false, true} {
		dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		if v6 {
			dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		add(route{table: table, typ: rtnUnreachable, dst: dst, metric: lastResortMetric})
	}
	for _, r := range main {
		if r.table != tableMain || r.typ != rtnUnicast || r.multipath || r.ours ||
			r.dst.Bits() == 0 || !lanLinks[r.linkIndex] || r.dst.Addr().IsLinkLocalUnicast() {
			continue
		}
		add(route{table: table, typ: rtnThrow, dst: r.dst})
	}
	return out
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// compareRouteAddOrder orders routes by table, and routes without a
// gateway first: a gateway must be reachable when its route is added.
func compareRouteAddOrder(a, b route) int {
	if a.table != b.table {
		return a.table - b.table
	}
	ag, bg := a.gw.IsValid(), b.gw.IsValid()
	switch {
	case !ag && bg:
		return -1
	case ag && !bg:
		return 1
	}
	return 0
}

// sortedUnique sorts xs by cmp, then by their text, and drops duplicates.
func sortedUnique[T any](xs []T, text func(T) string, cmp func(a, b T) int) []T {
	slices.SortFunc(xs, func(a, b T) int {
		if c := cmp(a, b); c != 0 {
			return c
		}
		return strings.Compare(text(a), text(b))
	})
	return slices.CompactFunc(xs, func(a, b T) bool { return text(a) == text(b) })
}

// changes are what turns the kernel's state into a plan.
type changes struct {
	delRules  []rule
	delRoutes []route
	addRoutes []route
	addRules  []rule
}

func (c changes) empty() bool {
	return len(c.delRules)+len(c.delRoutes)+len(c.addRoutes)+len(c.addRules) == 0
}

// diff returns the changes that turn the package's rules and routes in s
// into those of p: delete what is ours and unwanted, add what is wanted and
// missing. A route or rule is identified by its text.
func diff(p plan, s snapshot) changes {
	var c changes
	c.delRules, c.addRules = diffSets(p.rules, s.rules, rule.String, func(r rule) bool { return r.ours })
	c.delRoutes, c.addRoutes = diffSets(p.routes, s.routes, route.String, func(r route) bool { return r.ours })
	return c
}

func diffSets[T any](want, have []T, text func(T) string, ours func(T) bool) (del, add []T) {
	wanted := map[string]bool{}
	for _, w := range want {
		wanted[text(w)] = true
	}
	present := map[string]bool{}
	for _, h := range have {
		if !ours(h) {
			continue
		}
		t := text(h)
		if !wanted[t] && !present[t] {
			del = append(del, h)
		}
		present[t] = true
	}
	for _, w := range want {
		if !present[text(w)] {
			add = append(add, w)
		}
	}
	return del, add
}

// String renders r like ip rule does. It identifies r within its family.
func (r rule) String() string {
	var b strings.Builder
	fam := "v4"
	if r.v6 {
		fam = "v6"
	}
	fmt.Fprintf(&b, "%s %d: from ", fam, r.priority)
	if r.src.IsValid() {
		b.WriteString(r.src.Addr().String())
		if r.src.Bits() != r.src.Addr().BitLen() {
			fmt.Fprintf(&b, "/%d", r.src.Bits())
		}
	} else {
		b.WriteString("all")
	}
	if r.mask != 0 {
		fmt.Fprintf(&b, " fwmark %#x/%#x", r.mark, r.mask)
	}
	fmt.Fprintf(&b, " lookup %d", r.table)
	return b.String()
}

// String renders r like ip route does, with the interface as an index. It
// identifies r.
func (r route) String() string {
	var b strings.Builder
	fam := "v4"
	if r.dst.Addr().Is6() {
		fam = "v6"
	}
	fmt.Fprintf(&b, "%s table %d: ", fam, r.table)
	switch r.typ {
	case rtnUnicast:
	case rtnLocal:
		b.WriteString("local ")
	case rtnUnreachable:
		b.WriteString("unreachable ")
	case rtnThrow:
		b.WriteString("throw ")
	default:
		fmt.Fprintf(&b, "type %d ", r.typ)
	}
	if r.dst.Bits() == 0 && r.typ == rtnUnicast {
		b.WriteString("default")
	} else {
		b.WriteString(r.dst.String())
	}
	if r.gw.IsValid() {
		fmt.Fprintf(&b, " via %s", r.gw)
	}
	if r.multipath {
		b.WriteString(" multipath")
	}
	fmt.Fprintf(&b, " dev %d", r.linkIndex)
	if r.metric != 0 {
		fmt.Fprintf(&b, " metric %d", r.metric)
	}
	switch r.scope {
	case scopeUniverse:
	case scopeLink:
		b.WriteString(" scope link")
	case scopeHost:
		b.WriteString(" scope host")
	default:
		fmt.Fprintf(&b, " scope %d", r.scope)
	}
	if r.prefSrc.IsValid() {
		fmt.Fprintf(&b, " src %s", r.prefSrc)
	}
	if r.onlink {
		b.WriteString(" onlink")
	}
	return b.String()
}

// String renders s on one line.
func (s UplinkState) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s index %d", s.Name, s.Interface, s.Index)
	if s.Up {
		b.WriteString(" up")
	} else {
		b.WriteString(" down")
	}
	for _, a := range s.Addrs {
		fmt.Fprintf(&b, " %s", a)
	}
	if s.Default4 {
		b.WriteString(" default4")
		if s.Gateway4.IsValid() {
			fmt.Fprintf(&b, " via %s", s.Gateway4)
		}
	}
	if s.Default6 {
		b.WriteString(" default6")
		if s.Gateway6.IsValid() {
			fmt.Fprintf(&b, " via %s", s.Gateway6)
		}
	}
	return b.String()
}

// render renders rules, routes and uplink states, one per line.
func render(rules []rule, routes []route, states []UplinkState) string {
	var b strings.Builder
	for _, r := range rules {
		fmt.Fprintf(&b, "rule %s\n", r)
	}
	for _, r := range routes {
		fmt.Fprintf(&b, "route %s\n", r)
	}
	for _, s := range states {
		fmt.Fprintf(&b, "uplink %s\n", s)
	}
	return b.String()
}
