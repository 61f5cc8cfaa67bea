package intercept

import (
	"errors"
	"math/rand"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mcpagent/mcpagent/intercept/intercepttest"
)

// sent is one verdict the Interceptor gave the kernel.
type sent struct {
	ID      uint32
	Verdict Verdict
	Mark    uint32 // meaningful for Convert and Reject
}

// fakeQueue records verdicts in order. After close it records nothing
// more and fails, as a closed netlink socket would.
type fakeQueue struct {
	mu       sync.Mutex
	sent     []sent
	closes   int
	fail     error // returned by verdict when set, for failN calls if failN > 0
	failN    int
	afterEnd []sent

	// loop is held by a test's receive loop around each packet; close
	// takes it to stop the loop, as the real queue waits for its loop.
	loop    sync.Mutex
	stopped bool
}

// feed runs a receive loop for packets 1..n until close stops it.
func (q *fakeQueue) feed(i *Interceptor, n uint32, pkt []byte, each func(id uint32)) {
	for id := uint32(1); id <= n; id++ {
		q.loop.Lock()
		if q.stopped {
			q.loop.Unlock()
			return
		}
		i.receive(id, 0, pkt)
		q.loop.Unlock()
		each(id)
	}
}

func (q *fakeQueue) verdict(id uint32, v Verdict, mark uint32) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closes > 0 {
		q.afterEnd = append(q.afterEnd, sent{id, v, mark})
		return errors.New("socket closed")
	}
	if q.fail != nil {
		if q.failN == 0 {
			return q.fail
		}
		q.failN--
		if q.failN == 0 {
			defer func() { q.fail = nil }()
		}
		return q.fail
	}
	if v != Convert && v != Reject {
		mark = 0
	}
	q.sent = append(q.sent, sent{id, v, mark})
	return nil
}

func (q *fakeQueue) close() error {
	q.loop.Lock()
	q.stopped = true
	q.loop.Unlock()
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closes++
	return nil
}

func (q *fakeQueue) verdicts() []sent {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]sent(nil), q.sent...)
}

var (
	testSYN4 = intercepttest.SYN(netip.MustParseAddrPort("192.168.1.23:40000"), netip.MustParseAddrPort("198.51.100.7:443"))
	testSYN6 = intercepttest.SYN(netip.MustParseAddrPort("[fd00::23]:40000"), netip.MustParseAddrPort("[2001:db8::7]:443"), intercepttest.MPCapable())
)

// newTest returns an Interceptor on a fake queue whose Handler passes each
// SYN and its release function to h.
func newTest(t *testing.T, h Handler) (*Interceptor, *fakeQueue) {
	t.Helper()
	i, err := newInterceptor(Config{Queue: 7, ConvertMark: 0x100, RejectMark: 0x200, MarkMask: 0xff00, Handler: h})
	if err != nil {
		t.Fatal(err)
	}
	q := &fakeQueue{}
	i.q = q
	return i, q
}

func TestVerdicts(t *testing.T) {
	tests := []struct {
		name    string
		mark    uint32 // the packet's mark when queued
		verdict Verdict
		want    sent
		stats   Stats
	}{
		{"accept", 0x70007, Accept, sent{1, Accept, 0}, Stats{Queued: 1, Accepted: 1}},
		{"convert keeps the bits outside the mask", 0x70007, Convert, sent{1, Convert, 0x70107}, Stats{Queued: 1, Converted: 1}},
		{"convert of an unmarked packet", 0, Convert, sent{1, Convert, 0x100}, Stats{Queued: 1, Converted: 1}},
		{"convert replaces bits inside the mask", 0x3f07, Convert, sent{1, Convert, 0x0107}, Stats{Queued: 1, Converted: 1}},
		{"reject", 0x80000001, Reject, sent{1, Reject, 0x80000201}, Stats{Queued: 1, Rejected: 1}},
		{"drop", 0x70007, Drop, sent{1, Drop, 0}, Stats{Queued: 1, Dropped: 1}},
		{"an undefined verdict accepts", 0x70007, Verdict(9), sent{1, Accept, 0}, Stats{Queued: 1, Accepted: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []SYN
			i, q := newTest(t, func(s SYN, release func(Verdict)) {
				got = append(got, s)
				release(tt.verdict)
			})
			i.receive(1, tt.mark, testSYN4)
			if diff := cmp.Diff([]sent{tt.want}, q.verdicts()); diff != "" {
				t.Errorf("verdicts (-want +got):\n%s", diff)
			}
			if len(got) != 1 || got[0].Dst != netip.MustParseAddrPort("198.51.100.7:443") {
				t.Errorf("Handler saw %+v, want the one SYN", got)
			}
			if diff := cmp.Diff(tt.stats, i.Stats()); diff != "" {
				t.Errorf("Stats (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNotASYNIsAcceptedUnseen(t *testing.T) {
	i, q := newTest(t, func(s SYN, release func(Verdict)) {
		t.Errorf("Handler called with %+v", s)
	})
	synACK := intercepttest.SYN(netip.MustParseAddrPort("192.0.2.1:80"), netip.MustParseAddrPort("192.0.2.2:5000"), intercepttest.Flags(0x12))
	i.receive(3, 0, synACK)
	i.receive(4, 0, nil) // no payload attribute
	if diff := cmp.Diff([]sent{{3, Accept, 0}, {4, Accept, 0}}, q.verdicts()); diff != "" {
		t.Errorf("verdicts (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(Stats{Queued: 2, ParseErrors: 2}, i.Stats()); diff != "" {
		t.Errorf("Stats (-want +got):\n%s", diff)
	}
}

func TestReleaseLaterAndTwice(t *testing.T) {
	releases := make(chan func(Verdict), 2)
	i, q := newTest(t, func(s SYN, release func(Verdict)) { releases <- release })
	i.receive(1, 0, testSYN4)
	i.receive(2, 0, testSYN6)
	r1, r2 := <-releases, <-releases
	if diff := cmp.Diff(Stats{Queued: 2, Held: 2}, i.Stats()); diff != "" {
		t.Errorf("Stats while held (-want +got):\n%s", diff)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); r2(Reject) }()
	wg.Wait()
	r1(Convert)
	r1(Drop) // ignored
	if diff := cmp.Diff([]sent{{2, Reject, 0x200}, {1, Convert, 0x100}}, q.verdicts()); diff != "" {
		t.Errorf("verdicts (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(Stats{Queued: 2, Converted: 1, Rejected: 1, ReleasedTwice: 1}, i.Stats()); diff != "" {
		t.Errorf("Stats (-want +got):\n%s", diff)
	}
}

// TestExpireHeld checks that SYNs held past the age limit are accepted
// unchanged, that younger ones stay held, and that the Handler's late
// release of an expired SYN sends nothing.
func TestExpireHeld(t *testing.T) {
	releases := make(chan func(Verdict), 3)
	i, q := newTest(t, func(s SYN, release func(Verdict)) { releases <- release })
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	i.now = func() time.Time { return now }
	var r [4]func(Verdict)
	for id := uint32(1); id <= 3; id++ {
		i.receive(id, 0x70077, testSYN4)
		r[id] = <-releases
		now = now.Add(time.Second)
	}
	// Held for 3, 2 and 1 s.
	if n := i.ExpireHeld(2 * time.Second); n != 1 {
		t.Errorf("ExpireHeld(2s) = %d, want 1", n)
	}
	if n := i.ExpireHeld(1500 * time.Millisecond); n != 1 {
		t.Errorf("ExpireHeld(1.5s) = %d, want 1", n)
	}
	if diff := cmp.Diff([]sent{{1, Accept, 0}, {2, Accept, 0}}, q.verdicts()); diff != "" {
		t.Errorf("verdicts of expired SYNs (-want +got):\n%s", diff)
	}
	r[1](Convert)
	r[3](Convert)
	if diff := cmp.Diff([]sent{{1, Accept, 0}, {2, Accept, 0}, {3, Convert, 0x70177}}, q.verdicts()); diff != "" {
		t.Errorf("verdicts (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(Stats{Queued: 3, Converted: 1, Expired: 2, ReleasedLate: 1}, i.Stats()); diff != "" {
		t.Errorf("Stats (-want +got):\n%s", diff)
	}
}

// TestVerdictErrors checks what follows a verdict the kernel did not get:
// the same verdict once more, then the packet accepted as it came, so that
// it does not hold a slot of the queue for good.
func TestVerdictErrors(t *testing.T) {
	tests := []struct {
		name     string
		failures int // of the verdicts sent, in order; -1: all
		want     []sent
		errors   uint64
	}{
		{"sent again", 1, []sent{{1, Convert, 0x70177}}, 1},
		{"accepted instead", 2, []sent{{1, Accept, 0}}, 2},
		{"left in the queue", -1, nil, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			i, q := newTest(t, func(s SYN, release func(Verdict)) { release(Convert) })
			q.fail = errors.New("no buffer space")
			q.failN = max(tc.failures, 0)
			i.receive(1, 0x70077, testSYN4)
			if diff := cmp.Diff(tc.want, q.verdicts()); diff != "" {
				t.Errorf("verdicts (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(Stats{Queued: 1, Converted: 1, VerdictErrors: tc.errors}, i.Stats()); diff != "" {
				t.Errorf("Stats (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCloseAcceptsHeld(t *testing.T) {
	releases := make(chan func(Verdict), 3)
	i, q := newTest(t, func(s SYN, release func(Verdict)) { releases <- release })
	i.receive(1, 0x70007, testSYN4)
	i.receive(2, 0, testSYN6)
	i.receive(3, 0, testSYN4)
	r1, r2, r3 := <-releases, <-releases, <-releases
	r2(Drop)
	if err := i.Close(); err != nil {
		t.Fatal(err)
	}
	// The held packets were accepted before the queue closed.
	got := q.verdicts()
	if diff := cmp.Diff(sent{2, Drop, 0}, got[0]); diff != "" {
		t.Errorf("first verdict (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]sent{{1, Accept, 0}, {3, Accept, 0}}, got[1:], cmp.Transformer("sort", sortSent)); diff != "" {
		t.Errorf("verdicts of Close (-want +got):\n%s", diff)
	}
	r1(Convert) // late
	r2(Accept)  // twice
	r3(Reject)  // late
	if err := i.Close(); err != nil {
		t.Fatal(err)
	}
	if q.closes != 1 {
		t.Errorf("queue closed %d times, want 1", q.closes)
	}
	if len(q.afterEnd) != 0 {
		t.Errorf("verdicts sent after the queue closed: %+v", q.afterEnd)
	}
	if diff := cmp.Diff(Stats{Queued: 3, Dropped: 1, ClosedAccepted: 2, ReleasedLate: 2, ReleasedTwice: 1}, i.Stats()); diff != "" {
		t.Errorf("Stats (-want +got):\n%s", diff)
	}
}

func sortSent(s []sent) []sent {
	out := append([]sent(nil), s...)
	for a := range out {
		for b := a + 1; b < len(out); b++ {
			if out[b].ID < out[a].ID {
				out[a], out[b] = out[b], out[a]
			}
		}
	}
	return out
}

// TestConcurrentReleaseAndClose releases packets from many goroutines while
// Close runs: every packet gets exactly one verdict, all of them before the
// queue closes.
func TestConcurrentReleaseAndClose(t *testing.T) {
	const n = 2000
	var wg sync.WaitGroup
	i, q := newTest(t, func(s SYN, release func(Verdict)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			release(Verdict(rand.Intn(4)))
		}()
	})
	q.feed(i, n, testSYN4, func(id uint32) {
		if id == n/2 {
			go i.Close()
		}
	})
	wg.Wait()
	if err := i.Close(); err != nil {
		t.Fatal(err)
	}
	st := i.Stats()
	seen := make(map[uint32]int)
	for _, s := range q.verdicts() {
		seen[s.ID]++
	}
	for id := uint32(1); id <= uint32(st.Queued); id++ {
		if seen[id] != 1 {
			t.Fatalf("packet %d got %d verdicts, want 1", id, seen[id])
		}
	}
	if len(q.afterEnd) != 0 {
		t.Errorf("%d verdicts sent after the queue closed", len(q.afterEnd))
	}
	if sum := st.Accepted + st.Converted + st.Rejected + st.Dropped + st.ClosedAccepted; sum != st.Queued || len(seen) != int(st.Queued) || st.Held != 0 || st.Queued < n/2 {
		t.Errorf("Stats = %+v: verdicts add up to %d, %d packets got one", st, sum, len(seen))
	}
}

func TestConfigCheck(t *testing.T) {
	h := func(SYN, func(Verdict)) {}
	good := Config{ConvertMark: 0x100, RejectMark: 0x200, MarkMask: 0xff00, Handler: h}
	tests := []struct {
		name    string
		edit    func(c *Config)
		wantErr string
	}{
		{"no handler", func(c *Config) { c.Handler = nil }, "no handler"},
		{"no mask", func(c *Config) { c.MarkMask = 0 }, "mark mask is 0"},
		{"convert mark 0", func(c *Config) { c.ConvertMark = 0 }, "convert mark 0x0 is zero or outside"},
		{"convert mark outside mask", func(c *Config) { c.ConvertMark = 0x10100 }, "convert mark 0x10100 is zero or outside mark mask 0xff00"},
		{"reject mark 0", func(c *Config) { c.RejectMark = 0 }, "reject mark 0x0"},
		{"reject mark outside mask", func(c *Config) { c.RejectMark = 0x1 }, "reject mark 0x1"},
		{"same marks", func(c *Config) { c.RejectMark = 0x100 }, "both 0x100"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good
			tt.edit(&c)
			_, err := newInterceptor(c)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("newInterceptor: error %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
	i, err := newInterceptor(good)
	if err != nil {
		t.Fatalf("newInterceptor(%+v): %v", good, err)
	}
	if i.cfg.MaxQueueLen != DefaultMaxQueueLen {
		t.Errorf("MaxQueueLen = %d, want the default %d", i.cfg.MaxQueueLen, DefaultMaxQueueLen)
	}
}
