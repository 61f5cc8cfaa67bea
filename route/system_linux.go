package route

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Start installs the TPROXY rule and table, reconciles the uplinks' tables
// and rules once (so State is valid when it returns), then watches links,
// addresses and routes until Close.
func Start(cfg Config) (*Router, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(discardHandler{})
	}
	sys, err := newNetlinkSystem(log)
	if err != nil {
		return nil, err
	}
	r, err := start(cfg, sys)
	if err != nil {
		return nil, err
	}
	r.log.Info("policy routing installed", "tproxy_table", r.cfg.TProxyTable, "rule_priority", r.cfg.RulePriority, "uplinks", len(r.cfg.Uplinks))
	return r, nil
}

// dumpAttempts bounds the retries of a dump the kernel interrupted because
// the state changed meanwhile (NLM_F_DUMP_INTR).
const dumpAttempts = 5

// subscriptionBuffer is the capacity of each update channel.
const subscriptionBuffer = 64

// netlinkSystem is the kernel, through rtnetlink.
type netlinkSystem struct {
	h    *netlink.Handle
	log  *slog.Logger
	kick chan struct{}
	done chan struct{}
	wg   sync.WaitGroup
}

func newNetlinkSystem(log *slog.Logger) (*netlinkSystem, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open rtnetlink: %w", err)
	}
	s := &netlinkSystem{h: h, log: log, kick: make(chan struct{}, 1), done: make(chan struct{})}
	// Subscribe before the first dump so that no change falls between them.
	var subs subscriptions
	if err := subs.subscribeMissing(s); err != nil {
		close(s.done)
		subs.drain()
		h.Close()
		return nil, err
	}
	s.wg.Add(1)
	go s.forwardUpdates(subs)
	return s, nil
}

// subscriptions are the update channels; nil after a subscription failed.
type subscriptions struct {
	links  chan netlink.LinkUpdate
	addrs  chan netlink.AddrUpdate
	routes chan netlink.RouteUpdate
}

// subscribeMissing subscribes whatever is nil.
func (subs *subscriptions) subscribeMissing(s *netlinkSystem) error {
	if subs.links == nil {
		ch := make(chan netlink.LinkUpdate, subscriptionBuffer)
		if err := netlink.LinkSubscribeWithOptions(ch, s.done, netlink.LinkSubscribeOptions{ErrorCallback: s.subscriptionError}); err != nil {
			return fmt.Errorf("subscribe to link updates: %w", err)
		}
		subs.links = ch
	}
	if subs.addrs == nil {
		ch := make(chan netlink.AddrUpdate, subscriptionBuffer)
		if err := netlink.AddrSubscribeWithOptions(ch, s.done, netlink.AddrSubscribeOptions{ErrorCallback: s.subscriptionError}); err != nil {
			return fmt.Errorf("subscribe to address updates: %w", err)
		}
		subs.addrs = ch
	}
	if subs.routes == nil {
		ch := make(chan netlink.RouteUpdate, subscriptionBuffer)
		if err := netlink.RouteSubscribeWithOptions(ch, s.done, netlink.RouteSubscribeOptions{ErrorCallback: s.subscriptionError}); err != nil {
			return fmt.Errorf("subscribe to route updates: %w", err)
		}
		subs.routes = ch
	}
	return nil
}

// drain reads the channels until the library closes them, which it does
// once done is closed; its goroutines may be blocked sending to them.
func (subs *subscriptions) drain() {
	if subs.links != nil {
		for range subs.links {
		}
	}
	if subs.addrs != nil {
		for range subs.addrs {
		}
	}
	if subs.routes != nil {
		for range subs.routes {
		}
	}
}

// subscriptionError runs on the library's goroutines. A receive error ends
// the subscription (its channel closes); forwardUpdates then subscribes
// again.
func (s *netlinkSystem) subscriptionError(err error) {
	select {
	case <-s.done: // the socket was closed on purpose
	default:
		s.log.Warn("netlink subscription", "err", err)
	}
}

// forwardUpdates turns updates into kicks, and replaces a subscription that
// ended: events may have been lost, so it kicks then too.
func (s *netlinkSystem) forwardUpdates(subs subscriptions) {
	defer s.wg.Done()
	var retry <-chan time.Time
	for {
		var ok bool
		select {
		case <-s.done:
			subs.drain()
			return
		case _, ok = <-subs.links:
			if !ok {
				subs.links = nil
			}
		case _, ok = <-subs.addrs:
			if !ok {
				subs.addrs = nil
			}
		case _, ok = <-subs.routes:
			if !ok {
				subs.routes = nil
			}
		case <-retry:
			retry, ok = nil, false
		}
		if !ok {
			if err := subs.subscribeMissing(s); err != nil {
				s.log.Warn("renew netlink subscription; will retry", "err", err)
				retry = time.After(retryDelay)
			}
		}
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
}

func (s *netlinkSystem) changed() <-chan struct{} { return s.kick }

func (s *netlinkSystem) close() error {
	close(s.done)
	s.wg.Wait()
	s.h.Close()
	return nil
}

// dump runs list until the kernel returns a consistent dump.
func dump[T any](what string, list func() ([]T, error)) ([]T, error) {
	for i := 1; ; i++ {
		xs, err := list()
		if errors.Is(err, netlink.ErrDumpInterrupted) && i < dumpAttempts {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", what, err)
		}
		return xs, nil
	}
}

func (s *netlinkSystem) snapshot() (snapshot, error) {
	var snap snapshot
	links, err := dump("links", s.h.LinkList)
	if err != nil {
		return snap, err
	}
	for _, l := range links {
		a := l.Attrs()
		// IFF_RUNNING is set when the operational state is up or unknown
		// (dev_get_flags in net/core/dev.c): carrier, dormant and lower
		// layers included.
		up := a.RawFlags&unix.IFF_UP != 0 && a.RawFlags&unix.IFF_RUNNING != 0
		snap.links = append(snap.links, link{index: a.Index, name: a.Name, up: up})
	}
	addrs, err := dump("addresses", func() ([]netlink.Addr, error) { return s.h.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return snap, err
	}
	for _, a := range addrs {
		p, ok := prefixOf(a.IPNet)
		if !ok {
			continue
		}
		snap.addrs = append(snap.addrs, address{
			linkIndex:  a.LinkIndex,
			prefix:     p,
			global:     a.Scope == unix.RT_SCOPE_UNIVERSE,
			tentative:  a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0,
			deprecated: a.Flags&unix.IFA_F_DEPRECATED != 0,
		})
	}
	routes, err := dump("routes", func() ([]netlink.Route, error) {
		// RT_FILTER_TABLE with RT_TABLE_UNSPEC lists every table.
		return s.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return snap, err
	}
	for _, r := range routes {
		if x, ok := fromNetlinkRoute(r); ok {
			snap.routes = append(snap.routes, x)
		}
	}
	rules, err := dump("rules", func() ([]netlink.Rule, error) { return s.h.RuleList(netlink.FAMILY_ALL) })
	if err != nil {
		return snap, err
	}
	for _, r := range rules {
		if x, ok := fromNetlinkRule(r); ok {
			snap.rules = append(snap.rules, x)
		}
	}
	return snap, nil
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	ones, bits := n.Mask.Size()
	if bits != a.BitLen() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones), true
}

func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

func fromNetlinkRoute(r netlink.Route) (route, bool) {
	x := route{
		table:     r.Table,
		typ:       r.Type,
		gw:        addrOf(r.Gw),
		linkIndex: r.LinkIndex,
		metric:    r.Priority,
		scope:     int(r.Scope),
		prefSrc:   addrOf(r.Src),
		onlink:    r.Flags&int(netlink.FLAG_ONLINK) != 0,
		multipath: len(r.MultiPath) > 0,
		ours:      r.Protocol == routeProtocol,
	}
	switch r.Family {
	case unix.AF_INET:
		x.dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	case unix.AF_INET6:
		x.dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	default:
		return route{}, false
	}
	if r.Dst != nil {
		p, ok := prefixOf(r.Dst)
		if !ok {
			return route{}, false
		}
		x.dst = p
	}
	return x, true
}

func toNetlinkRoute(x route) *netlink.Route {
	r := &netlink.Route{
		Table:     x.table,
		Type:      x.typ,
		Dst:       &net.IPNet{IP: x.dst.Addr().AsSlice(), Mask: net.CIDRMask(x.dst.Bits(), x.dst.Addr().BitLen())},
		LinkIndex: x.linkIndex,
		Priority:  x.metric,
		Scope:     netlink.Scope(x.scope),
		Protocol:  routeProtocol,
	}
	if x.gw.IsValid() {
		r.Gw = x.gw.AsSlice()
	}
	if x.prefSrc.IsValid() {
		r.Src = x.prefSrc.AsSlice()
	}
	if x.onlink {
		r.Flags = int(netlink.FLAG_ONLINK)
	}
	return r
}

func fromNetlinkRule(r netlink.Rule) (rule, bool) {
	x := rule{priority: r.Priority, table: r.Table, mark: r.Mark, ours: r.Protocol == routeProtocol}
	switch r.Family {
	case unix.AF_INET:
	case unix.AF_INET6:
		x.v6 = true
	default:
		return rule{}, false
	}
	if r.Mask != nil {
		x.mask = *r.Mask
	}
	if r.Src != nil {
		p, ok := prefixOf(r.Src)
		if !ok {
			return rule{}, false
		}
		x.src = p
	}
	return x, true
}

func toNetlinkRule(x rule) *netlink.Rule {
	r := netlink.NewRule()
	r.Priority = x.priority
	r.Table = x.table
	r.Protocol = routeProtocol
	r.Family = unix.AF_INET
	if x.v6 {
		r.Family = unix.AF_INET6
	}
	if x.mask != 0 {
		r.Mark = x.mark
		mask := x.mask
		r.Mask = &mask
	}
	if x.src.IsValid() {
		r.Src = &net.IPNet{IP: x.src.Addr().AsSlice(), Mask: net.CIDRMask(x.src.Bits(), x.src.Addr().BitLen())}
	}
	return r
}

func (s *netlinkSystem) addRule(x rule) error { return s.h.RuleAdd(toNetlinkRule(x)) }

func (s *netlinkSystem) delRule(x rule) error {
	return ignoreGone(s.h.RuleDel(toNetlinkRule(x)))
}

func (s *netlinkSystem) addRoute(x route) error { return s.h.RouteAdd(toNetlinkRoute(x)) }

func (s *netlinkSystem) delRoute(x route) error {
	return ignoreGone(s.h.RouteDel(toNetlinkRoute(x)))
}

// ignoreGone treats "no such rule" (ENOENT) and "no such route" (ESRCH) as
// success: whatever deleted it first, it is gone.
func ignoreGone(err error) error {
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}
