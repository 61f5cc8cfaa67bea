package route

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// DefaultRulePriority is the preference of the first rule the package adds
// when Config.RulePriority is 0; the uplinks' rules follow it.
//
// Rules are consulted in ascending preference; 0 is the local table and
// 32766 the main table. OpenWrt's mwan3 adds, for its interface number N
// (from 1), "iif DEV lookup N" at 1000+N, "fwmark N'/0x3f00 lookup N" at
// 2000+N and "fwmark N'/0x3f00 unreachable" at 3000+N, treats every rule
// between 1000 and 4000 with a matching remainder as its own, and marks
// locally generated packets too: a rule of ours after 2000 would lose an
// uplink's subflows to mwan3's policy, and the TPROXY rule would not see
// packets mwan3 marked. netifd adds its rules at 10000 and later. 900 sorts
// before all of them and leaves room for 99 uplinks below mwan3's range.
const DefaultRulePriority = 900

// routeProtocol is the protocol number (rtm_protocol, FRA_PROTOCOL) of the
// rules and routes the package adds; it is how it recognizes them. It is
// free in iproute2's rt_protos and in include/uapi/linux/rtnetlink.h.
const routeProtocol = 77

// startAttempts bounds the reconciles Start tries before it gives up.
const startAttempts = 3

// debounce is how long a burst of netlink events is collected before one
// reconcile; retryDelay is how soon a failed reconcile is retried.
const (
	debounce   = 50 * time.Millisecond
	retryDelay = time.Second
)

// Uplink is one WAN interface whose traffic gets a routing table.
type Uplink struct {
	// Name names the uplink in logs and states, e.g. "dsl".
	Name string
	// Interface is the network interface, e.g. "pppoe-wan"; it need not
	// exist yet.
	Interface string
	// Table is the routing table the package fills with copies of the
	// interface's default and connected routes. It must be used by nothing
	// else.
	Table int
}

// UplinkState is an uplink as the kernel shows it.
type UplinkState struct {
	Name, Interface string
	// Index is the interface index, 0 if the interface does not exist.
	Index int
	// Up reports whether the interface is up and can pass traffic.
	Up bool
	// Addrs are the interface's usable global addresses (not tentative, not
	// deprecated), IPv4 first, sorted.
	Addrs []netip.Prefix
	// Gateway4 and Gateway6 are the gateways of the interface's lowest
	// metric default routes; invalid if there is none or it has no gateway.
	Gateway4, Gateway6 netip.Addr
	// Default4 and Default6 report whether the main table has a default
	// route through the interface; a point-to-point link's has no gateway.
	Default4, Default6 bool
}

func (s UplinkState) equal(o UplinkState) bool {
	return s.Name == o.Name && s.Interface == o.Interface && s.Index == o.Index && s.Up == o.Up &&
		slices.Equal(s.Addrs, o.Addrs) && s.Gateway4 == o.Gateway4 && s.Gateway6 == o.Gateway6 &&
		s.Default4 == o.Default4 && s.Default6 == o.Default6
}

// Config configures a Router.
type Config struct {
	Uplinks []Uplink
	// LANInterfaces name the LAN's links: their prefixes in the main
	// table are thrown back to it from each uplink table, so that the
	// router's replies from an uplink's address to the LAN stay in it.
	LANInterfaces []string
	// TProxyMark and MarkMask select the packets to deliver locally: those
	// whose mark, masked with MarkMask, equals TProxyMark (non-zero).
	TProxyMark, MarkMask uint32
	// TProxyTable is the table that routes every destination to the local
	// host, e.g. 2124. It must be used by nothing else.
	TProxyTable int
	// RulePriority is the preference of the TPROXY rule; uplink i's rules
	// get RulePriority+1+i. Zero means DefaultRulePriority, which explains
	// the choice.
	RulePriority int
	// OnChange, if not nil, receives the state of every uplink, in the
	// order of Uplinks, whenever any of it changes after Start returned. It
	// is called from one goroutine at a time and never after Close returned;
	// it must not call Close. It owns the slice.
	OnChange func([]UplinkState)
	// Logger receives state changes and errors; nil discards them.
	Logger *slog.Logger
}

// validate checks c and fills in defaults.
func (c *Config) validate() error {
	if c.RulePriority == 0 {
		c.RulePriority = DefaultRulePriority
	}
	if c.Logger == nil {
		c.Logger = slog.New(discardHandler{})
	}
	if c.MarkMask == 0 || c.TProxyMark == 0 || c.TProxyMark&^c.MarkMask != 0 {
		return fmt.Errorf("TPROXY mark %#x must be non-zero and within mark mask %#x", c.TProxyMark, c.MarkMask)
	}
	if c.RulePriority < 1 || c.RulePriority+len(c.Uplinks) >= 32766 {
		return fmt.Errorf("rule priority %d: the rules must sort between 1 and the main table's 32766", c.RulePriority)
	}
	tables := map[int]string{}
	if err := checkTable(c.TProxyTable, "TPROXY", tables); err != nil {
		return err
	}
	names, ifaces := map[string]bool{}, map[string]bool{}
	for _, u := range c.Uplinks {
		switch {
		case u.Name == "" || u.Interface == "":
			return fmt.Errorf("uplink %q on %q: name and interface must be set", u.Name, u.Interface)
		case names[u.Name]:
			return fmt.Errorf("uplink %q listed twice", u.Name)
		case ifaces[u.Interface]:
			return fmt.Errorf("interface %q of uplink %q belongs to another uplink", u.Interface, u.Name)
		}
		names[u.Name], ifaces[u.Interface] = true, true
		if err := checkTable(u.Table, "uplink "+u.Name, tables); err != nil {
			return err
		}
	}
	return nil
}

// checkTable refuses the kernel's reserved tables (rtnetlink.h: unspec 0,
// default 253, main 254, local 255) and a table used twice.
func checkTable(t int, user string, used map[int]string) error {
	if t <= 0 || t >= 253 && t <= 255 || int64(t) > math.MaxUint32 {
		return fmt.Errorf("%s table %d is reserved or out of range", user, t)
	}
	if other, ok := used[t]; ok {
		return fmt.Errorf("%s table %d is also the %s table", user, t, other)
	}
	used[t] = user
	return nil
}

// system is the kernel as the Router sees it: the real one through netlink,
// or a fake in tests.
type system interface {
	snapshot() (snapshot, error)
	// The add and delete methods mark what they add with routeProtocol.
	// Deleting what is already gone is not an error.
	addRule(rule) error
	delRule(rule) error
	addRoute(route) error
	delRoute(route) error
	// changed receives a value, coalesced, after links, addresses or routes
	// may have changed, including after events may have been lost.
	changed() <-chan struct{}
	// close stops watching and releases the system; it waits for the
	// goroutines it started.
	close() error
}

// Router keeps the policy routing in place and watches the uplinks. Make
// one with Start; its methods are safe for concurrent use.
type Router struct {
	cfg Config
	log *slog.Logger
	sys system

	mu    sync.Mutex
	state []UplinkState

	lastErr string // of the previous failed reconcile; watch goroutine only

	done      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// start is Start on sys, which it closes on failure and on Close.
func start(cfg Config, sys system) (*Router, error) {
	if err := cfg.validate(); err != nil {
		sys.close()
		return nil, fmt.Errorf("invalid routing config: %w", err)
	}
	r := &Router{cfg: cfg, log: cfg.Logger, sys: sys, done: make(chan struct{})}
	// A link that goes down while its routes are being copied fails the
	// copy; the next snapshot no longer has the routes.
	err := r.reconcile(false)
	for attempt := 1; err != nil && attempt < startAttempts; attempt++ {
		time.Sleep(debounce)
		err = r.reconcile(false)
	}
	if err != nil {
		err = errors.Join(err, r.removeAll(), sys.close())
		return nil, err
	}
	r.wg.Add(1)
	go r.watch()
	return r, nil
}

// State returns the current state of every uplink, in the order of
// Config.Uplinks. After Close it returns the last state.
func (r *Router) State() []UplinkState {
	r.mu.Lock()
	defer r.mu.Unlock()
	return cloneStates(r.state)
}

// Close stops watching and removes every rule and route the package added,
// including those a previous run left. It waits until OnChange has
// returned. Only the first call does anything; later calls return its
// result.
func (r *Router) Close() error {
	r.closeOnce.Do(func() {
		close(r.done)
		r.wg.Wait()
		r.closeErr = errors.Join(r.removeAll(), r.sys.close())
		if r.closeErr == nil {
			r.log.Info("policy routing removed")
		}
	})
	return r.closeErr
}

// watch reconciles after changes, a short while after the first event of a
// burst, and retries failed reconciles.
func (r *Router) watch() {
	defer r.wg.Done()
	var (
		timer *time.Timer
		due   time.Time
	)
	var fire <-chan time.Time
	arm := func(d time.Duration) {
		at := time.Now().Add(d)
		if fire != nil && !at.Before(due) {
			return
		}
		if timer != nil {
			timer.Stop()
		}
		timer, due = time.NewTimer(d), at
		fire = timer.C
	}
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		select {
		case <-r.done:
			return
		case <-r.sys.changed():
			arm(debounce)
		case <-fire:
			fire = nil
			if err := r.reconcile(true); err != nil {
				if msg := err.Error(); msg != r.lastErr {
					r.log.Warn("reconcile policy routing; will retry", "err", err)
					r.lastErr = msg
				} else {
					r.log.Debug("reconcile policy routing; will retry", "err", err)
				}
				arm(retryDelay)
				continue
			}
			r.lastErr = ""
		}
	}
}

// reconcile makes the kernel's rules and routes match the plan for its
// current state, and records the uplinks' state, reporting a change to
// OnChange if notify is set.
func (r *Router) reconcile(notify bool) error {
	s, err := r.sys.snapshot()
	if err != nil {
		return fmt.Errorf("read routing state: %w", err)
	}
	p := desired(r.cfg, s)
	err = r.apply(diff(p, s))
	r.setState(p.states, notify)
	return err
}

// removeAll deletes every rule and route of the package.
func (r *Router) removeAll() error {
	s, err := r.sys.snapshot()
	if err != nil {
		return fmt.Errorf("read routing state: %w", err)
	}
	return r.apply(diff(plan{}, s))
}

func (r *Router) apply(c changes) error {
	var errs []error
	for _, x := range c.delRules {
		r.log.Debug("delete rule", "rule", x)
		if err := r.sys.delRule(x); err != nil {
			errs = append(errs, fmt.Errorf("delete rule %s: %w", x, err))
		}
	}
	for _, x := range c.delRoutes {
		r.log.Debug("delete route", "route", x)
		if err := r.sys.delRoute(x); err != nil {
			errs = append(errs, fmt.Errorf("delete route %s: %w", x, err))
		}
	}
	for _, x := range c.addRoutes {
		r.log.Debug("add route", "route", x)
		if err := r.sys.addRoute(x); err != nil {
			errs = append(errs, fmt.Errorf("add route %s: %w", x, err))
		}
	}
	for _, x := range c.addRules {
		r.log.Debug("add rule", "rule", x)
		if err := r.sys.addRule(x); err != nil {
			errs = append(errs, fmt.Errorf("add rule %s: %w", x, err))
		}
	}
	return errors.Join(errs...)
}

func (r *Router) setState(states []UplinkState, notify bool) {
	r.mu.Lock()
	old := r.state
	changed := !slices.EqualFunc(old, states, UplinkState.equal)
	if changed {
		r.state = states
	}
	r.mu.Unlock()
	if !changed {
		return
	}
	for i, s := range states {
		switch {
		case i >= len(old):
			r.log.Info("uplink", "uplink", s.Name, "state", s.String())
		case !old[i].equal(s):
			r.log.Info("uplink changed", "uplink", s.Name, "from", old[i].String(), "to", s.String())
		}
	}
	if notify && r.cfg.OnChange != nil {
		r.cfg.OnChange(cloneStates(states))
	}
}

func cloneStates(states []UplinkState) []UplinkState {
	out := slices.Clone(states)
	for i := range out {
		out[i].Addrs = slices.Clone(out[i].Addrs)
	}
	return out
}

// discardHandler is a slog.Handler that drops everything (slog.DiscardHandler
// needs Go 1.24).
type discardHandler struct{}

func (discardHandler) Enabled(context.Context, slog.Level) bool  { return false }
func (discardHandler) Handle(context.Context, slog.Record) error { return nil }
func (d discardHandler) WithAttrs([]slog.Attr) slog.Handler      { return d }
func (d discardHandler) WithGroup(string) slog.Handler           { return d }
