package route

import (
	"errors"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// changes collects what OnChange reports.
type changeLog struct {
	mu     sync.Mutex
	states [][]UplinkState
}

func (c *changeLog) onChange(s []UplinkState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.states = append(c.states, s)
}

func (c *changeLog) get() [][]UplinkState {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.states)
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v", what, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRouterWatches(t *testing.T) {
	goroutines := runtime.NumGoroutine()
	k := newFakeKernel()
	for _, e := range testbedEvents() {
		e(&k.s)
	}
	var log changeLog
	cfg := testConfig()
	cfg.OnChange = log.onChange
	r, err := start(cfg, k)
	if err != nil {
		t.Fatal(err)
	}
	st := r.State()
	if len(st) != 2 || st[1].String() != "lte: wan1 index 3 up 100.64.0.2/24 default4 via 100.64.0.1" {
		t.Fatalf("State() after start = %v", st)
	}
	st[1].Addrs[0] = netip.Prefix{} // the caller owns the copy
	if r.State()[1].Addrs[0] != tbWan1Addr4.prefix {
		t.Fatal("State() returned the router's own slice")
	}
	if got := log.get(); len(got) != 0 {
		t.Fatalf("OnChange called during start: %v", got)
	}

	// LTE's address changes: one burst of events, one report.
	k.mu.Lock()
	snapshotsBefore := k.snapshots
	k.mu.Unlock()
	newAddr := address{linkIndex: 3, prefix: p4("100.64.0.3/24"), global: true}
	for i := 0; i < 10; i++ {
		k.apply(func(*snapshot) {})
	}
	k.apply(delAddress(tbWan1Addr4))
	k.apply(addAddress(newAddr))
	waitFor(t, time.Second, "report of the new address", func() bool { return len(log.get()) == 1 })
	got := log.get()[0]
	if got[1].String() != "lte: wan1 index 3 up 100.64.0.3/24 default4 via 100.64.0.1" || got[0].String() != st[0].String() {
		t.Fatalf("OnChange = %v", got)
	}
	rules, _ := k.ours()
	if !slices.ContainsFunc(rules, func(r rule) bool { return r.String() == "v4 902: from 100.64.0.3 lookup 2126" }) {
		t.Errorf("rules after the address change = %v", rules)
	}
	k.mu.Lock()
	reconciles := k.snapshots - snapshotsBefore
	k.mu.Unlock()
	if reconciles > 2 {
		t.Errorf("%d reconciles for one burst of events, want at most 2", reconciles)
	}

	// Events that change nothing are not reported.
	k.apply(func(*snapshot) {})
	time.Sleep(3 * debounce)
	if n := len(log.get()); n != 1 {
		t.Errorf("%d reports, want 1: an event without change was reported", n)
	}

	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if rules, routes := k.ours(); len(rules)+len(routes) != 0 {
		t.Errorf("after Close, the kernel still has rules %v and routes %v", rules, routes)
	}
	k.apply(setLink(3, "wan1", false))
	time.Sleep(3 * debounce)
	if n := len(log.get()); n != 1 {
		t.Errorf("OnChange called after Close")
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if k.closed != 1 {
		t.Errorf("system closed %d times, want 1", k.closed)
	}
	waitFor(t, time.Second, "goroutines to end", func() bool { return runtime.NumGoroutine() <= goroutines })
}

// TestRouterRetries checks that a failed reconcile is retried without a new
// event.
func TestRouterRetries(t *testing.T) {
	k := newFakeKernel()
	for _, e := range testbedEvents() {
		e(&k.s)
	}
	var log changeLog
	cfg := testConfig()
	cfg.OnChange = log.onChange
	r, err := start(cfg, k)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	k.mu.Lock()
	k.failAdds = 1
	k.mu.Unlock()
	k.apply(addMainRoute(route{typ: rtnUnicast, dst: p4("0.0.0.0/0"), gw: a4("100.64.0.254"), linkIndex: 3, metric: 5}))
	waitFor(t, 3*retryDelay, "retried copy of the new default route", func() bool {
		_, routes := k.ours()
		return slices.ContainsFunc(routes, func(r route) bool { return r.String() == "v4 table 2126: default via 100.64.0.254 dev 3 metric 5" })
	})
	if got := log.get(); len(got) != 1 || got[0][1].Gateway4 != a4("100.64.0.254") {
		t.Errorf("OnChange = %v, want one report of the new gateway", got)
	}
}

// failingKernel cannot be read.
type failingKernel struct{ *fakeKernel }

func (failingKernel) snapshot() (snapshot, error) { return snapshot{}, errors.New("permission denied") }

func TestStartFails(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		sys  func() (system, *fakeKernel)
		err  string
	}{
		{
			name: "invalid config",
			cfg:  Config{TProxyMark: 1, MarkMask: 1, TProxyTable: 255},
			sys:  func() (system, *fakeKernel) { k := newFakeKernel(); return k, k },
			err:  "invalid routing config: TPROXY table 255 is reserved",
		},
		{
			name: "unreadable",
			cfg:  testConfig(),
			sys:  func() (system, *fakeKernel) { k := newFakeKernel(); return failingKernel{k}, k },
			err:  "read routing state: permission denied",
		},
		{
			name: "additions fail",
			cfg:  testConfig(),
			sys: func() (system, *fakeKernel) {
				k := newFakeKernel()
				for _, e := range testbedEvents() {
					e(&k.s)
				}
				k.failRules = true
				return k, k
			},
			err: "add rule v4 900: from all fwmark 0x3000000/0xf000000 lookup 2124: injected failure",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sys, k := tt.sys()
			_, err := start(tt.cfg, sys)
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("start() = %v, want error containing %q", err, tt.err)
			}
			if k.closed != 1 {
				t.Errorf("system closed %d times, want 1", k.closed)
			}
			if rules, routes := k.ours(); len(rules)+len(routes) != 0 {
				t.Errorf("failed start left rules %v and routes %v", rules, routes)
			}
		})
	}
}

// TestStartRetries checks that Start survives a transient failure, such as
// a link that went down while its routes were copied.
func TestStartRetries(t *testing.T) {
	k := newFakeKernel()
	for _, e := range testbedEvents() {
		e(&k.s)
	}
	k.failAdds = 1
	r, err := start(testConfig(), k)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	s, _ := k.snapshot()
	if c := diff(desired(r.cfg, s), s); !c.empty() {
		t.Errorf("after start, changes remain: %+v", c)
	}
}
