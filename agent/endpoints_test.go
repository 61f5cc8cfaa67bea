package agent

import (
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mcpagent/mcpagent/config"
	"github.com/mcpagent/mcpagent/mptcppm"
	"github.com/mcpagent/mcpagent/policy"
	"github.com/mcpagent/mcpagent/route"
)

// fakePM is a path manager in memory that logs what it was asked. With a
// gate, AddEndpoint waits for the gate to close, as the kernel takes its
// time with thousands of connections open.
type fakePM struct {
	gate chan struct{}

	mu sync.Mutex
	// failAdds and failDeletes are how many AddEndpoint and DeleteEndpoint
	// requests fail before they work, as the kernel's may (ENOMEM, ERANGE
	// at its limit of endpoints).
	failAdds, failDeletes int
	eps                   map[uint8]mptcppm.Endpoint
	nextID                uint8
	limits                mptcppm.Limits
	closed                bool
	log                   []pmOp
}

type pmOp struct {
	add  bool // else delete
	addr netip.Addr
	at   time.Time
}

func newFakePM() *fakePM { return &fakePM{eps: map[uint8]mptcppm.Endpoint{}} }

func (f *fakePM) Endpoints() ([]mptcppm.Endpoint, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Collect(maps.Values(f.eps)), nil
}

func (f *fakePM) AddEndpoint(e mptcppm.Endpoint) (mptcppm.Endpoint, error) {
	if f.gate != nil {
		<-f.gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failAdds > 0 {
		f.failAdds--
		return mptcppm.Endpoint{}, syscall.ERANGE
	}
	f.nextID++
	e.ID = f.nextID
	f.eps[e.ID] = e
	f.log = append(f.log, pmOp{add: true, addr: e.Addr, at: time.Now()})
	return e, nil
}

func (f *fakePM) DeleteEndpoint(id uint8) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failDeletes > 0 {
		f.failDeletes--
		return syscall.ENOMEM
	}
	f.log = append(f.log, pmOp{addr: f.eps[id].Addr, at: time.Now()})
	delete(f.eps, id)
	return nil
}

func (f *fakePM) SetFlags(id uint8, fl mptcppm.Flags) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.eps[id]
	e.Flags = e.Flags&^mptcppm.FlagBackup | fl
	f.eps[id] = e
	return nil
}

func (f *fakePM) SetLimits(l mptcppm.Limits) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.limits = l
	return nil
}

func (f *fakePM) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

// addrs returns the addresses of the endpoints, sorted.
func (f *fakePM) addrs() []netip.Addr {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []netip.Addr
	for _, e := range f.eps {
		out = append(out, e.Addr)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// opAt returns when addr was last added (or deleted).
func (f *fakePM) opAt(add bool, addr netip.Addr) (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := len(f.log) - 1; i >= 0; i-- {
		if op := f.log[i]; op.add == add && op.addr == addr {
			return op.at, true
		}
	}
	return time.Time{}, false
}

var (
	dslAddr = netip.MustParseAddr("10.0.1.2")
	lteAddr = netip.MustParseAddr("100.64.0.2")
	dslUp   = route.UplinkState{Name: "dsl", Interface: "wan0", Index: 3, Up: true, Addrs: []netip.Prefix{netip.PrefixFrom(dslAddr, 24)}}
	lteUp   = route.UplinkState{Name: "lte", Interface: "wan1", Index: 4, Up: true, Addrs: []netip.Prefix{netip.PrefixFrom(lteAddr, 24)}}
	bothUp  = []route.UplinkState{dslUp, lteUp}
)

// startTestSync starts an endpointSync on pm that the test closes at its
// end, unless it did.
func startTestSync(t *testing.T, pm *fakePM) *endpointSync {
	return startTestSyncIn(t, pm, t.TempDir())
}

// startTestSyncIn is startTestSync with the limits and the list of
// endpoints in dir.
func startTestSyncIn(t *testing.T, pm *fakePM, dir string) *endpointSync {
	t.Helper()
	file := filepath.Join(dir, "limits")
	if err := os.WriteFile(file, []byte("add_addr_accepted 0 subflows 2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := startEndpointSync(pm, mptcppm.Limits{Subflows: 2}, file, filepath.Join(dir, "endpoints"), slog.New(slog.NewTextHandler(io.Discard, nil)))
	t.Cleanup(func() {
		select {
		case <-e.done:
		default:
			e.close()
		}
	})
	return e
}

// eventually fails the test unless cond holds within 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("after 10 s: %s", what)
		}
	}
}

// A plan must not wait for the path manager: the conversion path asks the
// uplink manager for each leg's sources, and the kernel can take seconds
// to add an endpoint while thousands of connections are open.
func TestPlansDoNotWaitForThePathManager(t *testing.T) {
	pm := newFakePM()
	pm.gate = make(chan struct{})
	eps := startTestSync(t, pm)
	cfg, err := config.Parse([]byte("lan_interfaces: [lan0]\nuplinks: [{name: dsl, interface: wan0}, {name: lte, interface: wan1}]\nmcp: {servers: [198.51.100.1]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	m := newUplinkManager(cfg, eps, slog.New(slog.NewTextHandler(io.Discard, nil)))

	planned := make(chan []netip.Addr)
	go func() {
		m.update(bothUp)
		m.update([]route.UplinkState{{Name: "dsl", Interface: "wan0", Index: 3}, lteUp}) // DSL went down
		planned <- m.initialSources(netip.MustParseAddr("198.51.100.1"))
	}()
	select {
	case got := <-planned:
		if !slices.Equal(got, []netip.Addr{lteAddr}) {
			t.Errorf("initial sources after DSL went down: %v, want [%s]", got, lteAddr)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the uplink manager waited for the path manager")
	}
	close(pm.gate)
	eventually(t, "endpoints follow the latest plan (LTE only)", func() bool { return slices.Equal(pm.addrs(), []netip.Addr{lteAddr}) })
	eps.close()
	if got := pm.addrs(); len(got) != 0 || !pm.closed || pm.limits != (mptcppm.Limits{Subflows: 2}) {
		t.Errorf("after close: endpoints %v, closed %v, limits %+v; want none, true, the old limits", got, pm.closed, pm.limits)
	}
	if _, err := os.Stat(eps.limitsFile); !os.IsNotExist(err) {
		t.Errorf("limits file left after close: %v", err)
	}
}

// Removals wait makeBeforeBreak after an addition, however many plans come
// meanwhile: a plan repeated while they wait must not remove at once.
func TestEndpointRemovalsWaitForNewSubflows(t *testing.T) {
	pm := newFakePM()
	eps := startTestSync(t, pm)
	eps.apply(bothUp, []policy.Use{policy.UseActive, policy.UseNone})
	eventually(t, "DSL endpoint added", func() bool { return slices.Equal(pm.addrs(), []netip.Addr{dslAddr}) })

	eps.apply(bothUp, []policy.Use{policy.UseNone, policy.UseActive})
	eventually(t, "LTE endpoint added", func() bool { _, ok := pm.opAt(true, lteAddr); return ok })
	eps.apply(bothUp, []policy.Use{policy.UseNone, policy.UseActive}) // the same plan again
	eventually(t, "DSL endpoint removed", func() bool { return slices.Equal(pm.addrs(), []netip.Addr{lteAddr}) })

	added, _ := pm.opAt(true, lteAddr)
	removed, _ := pm.opAt(false, dslAddr)
	if gap := removed.Sub(added); gap < makeBeforeBreak {
		t.Errorf("DSL endpoint removed %v after LTE's was added, want at least %v", gap, makeBeforeBreak)
	}
}

// A change of flags alone is applied in place, and a removal with nothing
// added is at once.
func TestEndpointFlagsAndPlainRemoval(t *testing.T) {
	pm := newFakePM()
	eps := startTestSync(t, pm)
	eps.apply(bothUp, []policy.Use{policy.UseActive, policy.UseActive})
	eventually(t, "both endpoints added", func() bool { return len(pm.addrs()) == 2 })
	eps.apply(bothUp, []policy.Use{policy.UseActive, policy.UseBackup})
	backup := func() bool {
		eps, _ := pm.Endpoints()
		for _, e := range eps {
			if e.Addr == lteAddr {
				return e.Flags == mptcppm.FlagSubflow|mptcppm.FlagBackup
			}
		}
		return false
	}
	eventually(t, "LTE endpoint flagged backup", backup)
	time.Sleep(makeBeforeBreak) // past the additions' hold
	start := time.Now()
	eps.apply(bothUp, []policy.Use{policy.UseActive, policy.UseNone})
	eventually(t, "LTE endpoint removed", func() bool { return slices.Equal(pm.addrs(), []netip.Addr{dslAddr}) })
	if took := time.Since(start); took >= makeBeforeBreak {
		t.Errorf("a removal with nothing added took %v: it waited for new subflows", took)
	}
}

// A request the path manager failed is tried again, with no new plan to
// set it off: an addition, and a removal, whose endpoint stays ours
// meanwhile (and would be removed on stop).
func TestFailedEndpointRequestsAreRetried(t *testing.T) {
	pm := newFakePM()
	pm.failAdds = 2
	eps := startTestSync(t, pm)
	eps.apply(bothUp, []policy.Use{policy.UseActive, policy.UseNone})
	eventually(t, "DSL endpoint added on the third try", func() bool { return slices.Equal(pm.addrs(), []netip.Addr{dslAddr}) })

	time.Sleep(makeBeforeBreak) // past the addition's hold
	pm.mu.Lock()
	pm.failDeletes = 1
	pm.mu.Unlock()
	eps.apply(bothUp, []policy.Use{policy.UseNone, policy.UseNone})
	eventually(t, "DSL endpoint removed on the second try", func() bool { return len(pm.addrs()) == 0 })
}

// The endpoints a run that did not stop cleanly listed are ours: the first
// plan removes those not wanted (the on-demand uplink's), others' are left,
// and so is an endpoint whose ID is listed with another address. The list
// follows what is added, and goes with a clean stop; an endpoint whose
// deletion fails stays listed.
func TestLeftoverEndpointsRemoved(t *testing.T) {
	pm := newFakePM()
	for _, a := range []string{"10.0.1.2", "100.64.0.2", "192.0.2.1", "198.51.100.5"} {
		if _, err := pm.AddEndpoint(mptcppm.Endpoint{Addr: netip.MustParseAddr(a), Flags: mptcppm.FlagSubflow}); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	ours := filepath.Join(dir, "endpoints")
	if err := os.WriteFile(ours, []byte("1 10.0.1.2\n2 100.64.0.2\n4 198.51.100.6\nnot a line\n300 192.0.2.1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := startTestSyncIn(t, pm, dir)
	others := []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("198.51.100.5")}
	e.apply(bothUp, []policy.Use{policy.UseActive, policy.UseNone})
	eventually(t, "LTE's leftover removed, DSL's endpoint there and listed", func() bool {
		b, _ := os.ReadFile(ours)
		return slices.Equal(pm.addrs(), append([]netip.Addr{dslAddr}, others...)) &&
			strings.HasSuffix(string(b), " "+dslAddr.String()+"\n") && strings.Count(string(b), "\n") == 1
	})
	pm.mu.Lock()
	pm.failDeletes = 1
	pm.mu.Unlock()
	e.close()
	if b, err := os.ReadFile(ours); err != nil || !strings.HasSuffix(string(b), " "+dslAddr.String()+"\n") {
		t.Fatalf("after a stop that failed to delete DSL's endpoint the list is %q (%v), want it listed", b, err)
	}
	// The next run, closed at once (as cleanup does), removes it.
	startTestSyncIn(t, pm, dir).close()
	if _, err := os.Stat(ours); !os.IsNotExist(err) {
		t.Errorf("the list of endpoints is left after a clean stop: %v", err)
	}
	if got := pm.addrs(); !slices.Equal(got, others) {
		t.Errorf("after a clean stop the endpoints are %v, want only the others' %v", got, others)
	}
}
