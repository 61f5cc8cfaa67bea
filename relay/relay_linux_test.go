package relay

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mcpagent/mcpagent/internal/netnstest"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { netnstest.Main(m) }

// testDeadline bounds every blocking step of a test.
const testDeadline = 15 * time.Second

// listener accepts the connections of one side of the test pairs.
type listener struct {
	ln    *net.TCPListener
	mptcp bool
}

func newListener(tb testing.TB, mptcp bool) *listener {
	tb.Helper()
	var lc net.ListenConfig
	lc.SetMultipathTCP(mptcp)
	ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	return &listener{ln: ln.(*net.TCPListener), mptcp: mptcp}
}

// connect dials l and returns both ends of the new connection.
func (l *listener) connect(tb testing.TB) (dialed, accepted *net.TCPConn) {
	tb.Helper()
	var d net.Dialer
	d.SetMultipathTCP(l.mptcp)
	c, err := d.Dial("tcp4", l.ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	s, err := l.ln.AcceptTCP()
	if err != nil {
		tb.Fatal(err)
	}
	if l.mptcp {
		requireMPTCP(tb, s)
	}
	return c.(*net.TCPConn), s
}

// requireMPTCP stops the test unless c really is a Multipath TCP socket:
// Go falls back to TCP silently when the kernel refuses IPPROTO_MPTCP.
func requireMPTCP(tb testing.TB, c *net.TCPConn) {
	tb.Helper()
	fd, err := socketFD(c)
	if err != nil {
		tb.Fatal(err)
	}
	proto, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	netnstest.Require(tb, err == nil && proto == unix.IPPROTO_MPTCP,
		"Multipath TCP sockets (net.mptcp.enabled=1); got protocol %d, %v", proto, err)
}

// A fixture is one relayed pair with both peers: peerA talks to a (as a
// LAN client talks to the accepted connection), b talks to peerB (as the
// leg dialed by the router talks to mcpgw).
type fixture struct {
	peerA, a, b, peerB *net.TCPConn
}

func newFixture(tb testing.TB, la, lb *listener) *fixture {
	tb.Helper()
	f := &fixture{}
	f.peerA, f.a = la.connect(tb)
	f.b, f.peerB = lb.connect(tb)
	for _, c := range []*net.TCPConn{f.peerA, f.peerB} {
		c.SetDeadline(time.Now().Add(testDeadline))
	}
	return f
}

// closePeers closes the test's ends of f.
func (f *fixture) closePeers() {
	f.peerA.Close()
	f.peerB.Close()
}

// ended collects the Stats a pair ends with, when, and how often done
// ran.
type ended struct {
	conns [2]*net.TCPConn // the relayed sockets, closed before done runs
	ch    chan Stats
	at    time.Time // when done ran first; read it after receiving from ch
	calls atomic.Int32
}

func (e *ended) done(st Stats) {
	if e.calls.Add(1) == 1 {
		e.at = time.Now()
		e.ch <- st
	}
}

// wait returns the Stats of the pair, failing after testDeadline or if
// the relay did not close both sockets before reporting them.
func (e *ended) wait(tb testing.TB) Stats {
	tb.Helper()
	select {
	case st := <-e.ch:
		for _, c := range e.conns {
			if !closedConn(c) {
				tb.Errorf("done ran before the relay closed %v", c.LocalAddr())
			}
		}
		return st
	case <-time.After(testDeadline):
		tb.Fatal("pair did not end")
		return Stats{}
	}
}

// closedConn reports whether c was closed through its Close method (and
// not only by a finalizer after the relay dropped it).
func closedConn(c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	return err == nil && errors.Is(rc.Control(func(uintptr) {}), net.ErrClosed)
}

// add relays f and returns what its done callback reports.
func add(tb testing.TB, r *Relay, f *fixture) *ended {
	tb.Helper()
	e := &ended{conns: [2]*net.TCPConn{f.a, f.b}, ch: make(chan Stats, 1)}
	if err := r.Add(f.a, f.b, e.done); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if n := e.calls.Load(); n > 1 {
			tb.Errorf("done called %d times", n)
		}
	})
	return e
}

func newRelay(tb testing.TB, cfg Config) *Relay {
	tb.Helper()
	r, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { r.Close() })
	return r
}

// sideCases are the socket kinds of the tests: a is a LAN connection or a
// leg on mcpgw, b a leg or a server connection.
var sideCases = []struct {
	name           string
	mptcpA, mptcpB bool
}{
	{"tcp to tcp", false, false},
	{"tcp to mptcp", false, true},
	{"mptcp to tcp", true, false},
}

// pathCases are the two ways the workers move bytes.
var pathCases = []struct {
	name     string
	noSplice bool
}{
	{"splice", false},
	{"read and write", true},
}

// newPathRelay returns a relay whose workers splice, or read and write if
// noSplice.
func newPathRelay(tb testing.TB, cfg Config, noSplice bool) *Relay {
	tb.Helper()
	r := newRelay(tb, cfg)
	if noSplice {
		// As after an unexpected pipe error, and like sockets that cannot
		// splice (Multipath TCP on older kernels).
		for _, w := range r.workers {
			unix.Close(w.pr)
			unix.Close(w.pw)
			w.pr, w.pw = -1, -1
		}
	}
	return r
}

// checkPath fails the test if r's workers read and wrote although they
// were to splice. Call it after a pair ended.
func checkPath(tb testing.TB, r *Relay, noSplice bool) {
	tb.Helper()
	for _, w := range r.workers {
		if !noSplice && w.buf != nil {
			tb.Error("a worker fell back from splice to read and write")
		}
	}
}

// sendAndHash writes n random bytes to w, half-closes it and returns their
// digest.
func sendAndHash(w *net.TCPConn, n int) ([sha256.Size]byte, error) {
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(w, h), rand.Reader, int64(n)); err != nil {
		return [sha256.Size]byte{}, err
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum, w.CloseWrite()
}

// receiveAndHash reads r to EOF and returns the digest and byte count.
func receiveAndHash(r io.Reader) ([sha256.Size]byte, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum, n, err
}

// TestBulkBothWays sends 4 MB each way at once over TCP and MPTCP pairs.
func TestBulkBothWays(t *testing.T) {
	const size = 4 << 20
	for _, pc := range pathCases {
		r := newPathRelay(t, Config{}, pc.noSplice)
		for _, tc := range sideCases {
			t.Run(pc.name+"/"+tc.name, func(t *testing.T) {
				f := newFixture(t, newListener(t, tc.mptcpA), newListener(t, tc.mptcpB))
				defer f.closePeers()
				e := add(t, r, f)

				type result struct {
					sent, got [sha256.Size]byte
					n         int64
					err       error
				}
				transfer := func(from, to *net.TCPConn, res *result, wg *sync.WaitGroup) {
					defer wg.Done()
					var serr error
					var sendWG sync.WaitGroup
					sendWG.Add(1)
					go func() {
						defer sendWG.Done()
						res.sent, serr = sendAndHash(from, size)
					}()
					res.got, res.n, res.err = receiveAndHash(to)
					sendWG.Wait()
					res.err = errors.Join(res.err, serr)
				}
				var ab, ba result
				var wg sync.WaitGroup
				wg.Add(2)
				go transfer(f.peerA, f.peerB, &ab, &wg)
				go transfer(f.peerB, f.peerA, &ba, &wg)
				wg.Wait()
				for name, res := range map[string]*result{"a to b": &ab, "b to a": &ba} {
					if res.err != nil {
						t.Fatalf("%s: %v", name, res.err)
					}
					if res.n != size || res.sent != res.got {
						t.Errorf("%s: received %d bytes with sha256 %x, want %d with %x", name, res.n, res.got, size, res.sent)
					}
				}
				if diff := cmp.Diff(Stats{AtoB: size, BtoA: size}, e.wait(t)); diff != "" {
					t.Errorf("stats (-want +got):\n%s", diff)
				}
				checkPath(t, r, pc.noSplice)
			})
		}
	}
}

// TestHalfClose checks that an EOF travels as a FIN (DATA_FIN on MPTCP)
// while the other direction keeps flowing.
func TestHalfClose(t *testing.T) {
	r := newRelay(t, Config{})
	for _, tc := range sideCases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, newListener(t, tc.mptcpA), newListener(t, tc.mptcpB))
			defer f.closePeers()
			e := add(t, r, f)

			if _, err := f.peerA.Write([]byte("request")); err != nil {
				t.Fatal(err)
			}
			if err := f.peerA.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(f.peerB)
			if err != nil || string(got) != "request" {
				t.Fatalf("b's peer read %q, %v; want \"request\" and EOF", got, err)
			}
			if n := r.Len(); n != 1 {
				t.Fatalf("after one EOF Len() = %d, want 1", n)
			}
			if _, err := f.peerB.Write([]byte("response")); err != nil {
				t.Fatal(err)
			}
			if err := f.peerB.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			got, err = io.ReadAll(f.peerA)
			if err != nil || string(got) != "response" {
				t.Fatalf("a's peer read %q, %v; want \"response\" and EOF", got, err)
			}
			if diff := cmp.Diff(Stats{AtoB: 7, BtoA: 8}, e.wait(t)); diff != "" {
				t.Errorf("stats (-want +got):\n%s", diff)
			}
			if n := r.Len(); n != 0 {
				t.Errorf("after both EOFs Len() = %d, want 0", n)
			}
		})
	}
}

// sendUrgentThenClose sends urgent as TCP urgent data (MSG_OOB) on c, then
// rest, then its FIN.
func sendUrgentThenClose(t *testing.T, c *net.TCPConn, urgent, rest string) {
	t.Helper()
	fd, err := socketFD(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Sendto(fd, []byte(urgent), unix.MSG_OOB, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte(rest)); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
}

// TestUrgentData relays a byte stream with TCP urgent data in it from a
// plain TCP peer: as with a direct connection read without SO_OOBINLINE,
// the other peer gets every byte but the urgent one, and the EOF after
// them. splice alone stops at the urgent mark for good.
func TestUrgentData(t *testing.T) {
	r := newRelay(t, Config{})
	f := newFixture(t, newListener(t, false), newListener(t, false))
	defer f.closePeers()
	e := add(t, r, f)
	if _, err := f.peerA.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	// Let the relay splice the first bytes before the urgent byte comes.
	buf := make([]byte, 3)
	if _, err := io.ReadFull(f.peerB, buf); err != nil || string(buf) != "abc" {
		t.Fatalf("b's peer read %q, %v; want \"abc\"", buf, err)
	}
	sendUrgentThenClose(t, f.peerA, "!", "def")
	got, err := io.ReadAll(f.peerB)
	if err != nil || string(got) != "def" {
		t.Fatalf("b's peer read %q, %v after the urgent byte; want \"def\" and EOF", got, err)
	}
	f.peerB.CloseWrite()
	if st := e.wait(t); st.AtoB != 6 || st.Reset {
		t.Errorf("stats %+v, want 6 bytes from a to b and no reset", st)
	}
}

// TestSpliceStopsAtUrgentMark lets the urgent byte, the data after it and
// the FIN arrive before the relay reads: splice takes the bytes before the
// mark and then returns 0 there as at an EOF, and the direction must go on
// with read, not end. The worker is driven by hand, without the EPOLLPRI
// that handle would otherwise act on first.
func TestSpliceStopsAtUrgentMark(t *testing.T) {
	r := newRelay(t, Config{Workers: 1})
	w, err := newWorker(r)
	if err != nil {
		t.Fatal(err)
	}
	defer w.release()
	f := newFixture(t, newListener(t, false), newListener(t, false))
	defer f.closePeers()
	defer f.a.Close()
	defer f.b.Close()
	p := &pair{conns: [2]*net.TCPConn{f.a, f.b}}
	for s, c := range p.conns {
		if p.fds[s], err = socketFD(c); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.peerA.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	sendUrgentThenClose(t, f.peerA, "!", "def")
	// Wait for the FIN without reading: a read would take a's bytes.
	pfd := []unix.PollFd{{Fd: int32(p.fds[0]), Events: unix.POLLRDHUP}}
	if n, err := unix.Poll(pfd, int(testDeadline.Milliseconds())); n != 1 || err != nil {
		t.Fatalf("a never got its peer's FIN: poll %d, %v", n, err)
	}
	for i := 0; i < 10 && !p.dirs[0].eof; i++ {
		w.move(p, 0)
	}
	if !p.dirs[0].eof || p.closed {
		t.Fatalf("direction a to b: eof %v, closed %v after 10 moves; want the EOF after the data", p.dirs[0].eof, p.closed)
	}
	buf := make([]byte, 6)
	if _, err := io.ReadFull(f.peerB, buf); err != nil || string(buf) != "abcdef" {
		t.Fatalf("b's peer read %q, %v; want \"abcdef\"", buf, err)
	}
}

// TestWorkerChoiceWraps adds a pair when the counter that spreads pairs
// over the workers has passed 2³¹: on a 32-bit router the index must not
// turn negative.
func TestWorkerChoiceWraps(t *testing.T) {
	r := newRelay(t, Config{Workers: 3})
	r.next.Store(1<<31 - 1)
	for range 3 {
		f := newFixture(t, newListener(t, false), newListener(t, false))
		e := add(t, r, f)
		f.closePeers()
		e.wait(t)
	}
}

// readReset reads from c until an error and returns nil if that is a
// reset.
func readReset(c *net.TCPConn) error {
	_, err := io.Copy(io.Discard, c)
	if errors.Is(err, syscall.ECONNRESET) {
		return nil
	}
	if err == nil {
		return errors.New("read EOF, want connection reset")
	}
	return err
}

// TestResetPropagates checks that a peer's RST resets the other peer.
func TestResetPropagates(t *testing.T) {
	r := newRelay(t, Config{})
	for _, tc := range sideCases {
		for _, fromA := range []bool{true, false} {
			name := tc.name + "/reset by b's peer"
			if fromA {
				name = tc.name + "/reset by a's peer"
			}
			t.Run(name, func(t *testing.T) {
				f := newFixture(t, newListener(t, tc.mptcpA), newListener(t, tc.mptcpB))
				defer f.closePeers()
				e := add(t, r, f)

				// Make sure bytes flow before the reset.
				if _, err := f.peerA.Write([]byte("x")); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(f.peerB, make([]byte, 1)); err != nil {
					t.Fatal(err)
				}
				resetter, other := f.peerA, f.peerB
				if !fromA {
					resetter, other = f.peerB, f.peerA
				}
				if err := resetter.SetLinger(0); err != nil {
					t.Fatal(err)
				}
				resetter.Close()
				if err := readReset(other); err != nil {
					t.Errorf("other peer: %v", err)
				}
				if diff := cmp.Diff(Stats{AtoB: 1, Reset: true}, e.wait(t)); diff != "" {
					t.Errorf("stats (-want +got):\n%s", diff)
				}
			})
		}
	}
}

// TestResetAfterHalfClose checks that a reset on a socket whose direction
// is finished still resets the pair: nothing reads that socket any more.
func TestResetAfterHalfClose(t *testing.T) {
	r := newRelay(t, Config{})
	for _, tc := range sideCases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, newListener(t, tc.mptcpA), newListener(t, tc.mptcpB))
			defer f.closePeers()
			e := add(t, r, f)

			if _, err := f.peerA.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			if err := f.peerA.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if got, err := io.ReadAll(f.peerB); err != nil || string(got) != "x" {
				t.Fatalf("b's peer read %q, %v; want \"x\" and EOF", got, err)
			}
			if err := f.peerA.SetLinger(0); err != nil {
				t.Fatal(err)
			}
			f.peerA.Close()
			if diff := cmp.Diff(Stats{AtoB: 1, Reset: true}, e.wait(t)); diff != "" {
				t.Errorf("stats (-want +got):\n%s", diff)
			}
			// b's peer got the RST: its writes fail.
			var err error
			for i := 0; i < 100 && err == nil; i++ {
				_, err = f.peerB.Write([]byte("y"))
				time.Sleep(time.Millisecond)
			}
			if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
				t.Errorf("b's peer writes: %v, want connection reset or broken pipe", err)
			}
		})
	}
}

// TestIdleTimeout checks that a silent pair is reset after the idle
// timeout, and that a pair trickling bytes one way stays up.
func TestIdleTimeout(t *testing.T) {
	const timeout = 400 * time.Millisecond
	r := newRelay(t, Config{IdleTimeout: timeout})
	la, lb := newListener(t, false), newListener(t, true)
	idle, busy := newFixture(t, la, lb), newFixture(t, la, lb)
	defer idle.closePeers()
	defer busy.closePeers()
	idleEnd, busyEnd := add(t, r, idle), add(t, r, busy)

	if _, err := idle.peerA.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(idle.peerB, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	lastByte := time.Now()

	// Trickle one byte every timeout/4 for three timeouts.
	stop := time.Now().Add(3 * timeout)
	var trickled int64
	for time.Now().Before(stop) {
		if _, err := busy.peerA.Write([]byte("y")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(busy.peerB, make([]byte, 1)); err != nil {
			t.Fatalf("trickling pair: %v", err)
		}
		trickled++
		time.Sleep(timeout / 4)
	}

	st := idleEnd.wait(t)
	// The relay stamps the pair slightly before lastByte.
	if elapsed := idleEnd.at.Sub(lastByte); elapsed < timeout-timeout/10 || elapsed > 3*timeout/2 {
		t.Errorf("idle pair closed %v after its last byte, want %v to %v", elapsed, timeout, 3*timeout/2)
	}
	if diff := cmp.Diff(Stats{AtoB: 1, Idle: true}, st); diff != "" {
		t.Errorf("idle pair stats (-want +got):\n%s", diff)
	}
	for name, c := range map[string]*net.TCPConn{"a's peer": idle.peerA, "b's peer": idle.peerB} {
		if err := readReset(c); err != nil {
			t.Errorf("idle pair, %s: %v", name, err)
		}
	}
	select {
	case st := <-busyEnd.ch:
		t.Fatalf("trickling pair ended: %+v", st)
	default:
	}
	if n := r.Len(); n != 1 {
		t.Errorf("Len() = %d, want 1 (the trickling pair)", n)
	}
	// Silent now, the trickling pair times out too.
	if diff := cmp.Diff(Stats{AtoB: trickled, Idle: true}, busyEnd.wait(t)); diff != "" {
		t.Errorf("trickling pair stats (-want +got):\n%s", diff)
	}
}

// TestBackpressure checks that a peer that stops reading stops the relay
// from reading its source, and that every byte arrives once it reads
// again.
func TestBackpressure(t *testing.T) {
	const (
		size    = 16 << 20
		sockBuf = 128 << 10
	)
	for _, pc := range pathCases {
		r := newPathRelay(t, Config{}, pc.noSplice)
		for _, tc := range sideCases {
			t.Run(pc.name+"/"+tc.name, func(t *testing.T) {
				f := newFixture(t, newListener(t, tc.mptcpA), newListener(t, tc.mptcpB))
				defer f.closePeers()
				// Small kernel buffers on every hop, so what the kernel can
				// hold is far below size.
				for _, c := range []*net.TCPConn{f.peerA, f.a, f.b} {
					if err := c.SetWriteBuffer(sockBuf); err != nil {
						t.Fatal(err)
					}
				}
				for _, c := range []*net.TCPConn{f.a, f.b, f.peerB} {
					if err := c.SetReadBuffer(sockBuf); err != nil {
						t.Fatal(err)
					}
				}
				data := make([]byte, size)
				rand.Read(data)
				e := add(t, r, f)

				runtime.GC()
				var before runtime.MemStats
				runtime.ReadMemStats(&before)

				var written atomic.Int64
				writeErr := make(chan error, 1)
				go func() {
					for off := 0; off < size; off += 64 << 10 {
						n, err := f.peerA.Write(data[off : off+64<<10])
						written.Add(int64(n))
						if err != nil {
							writeErr <- err
							return
						}
					}
					writeErr <- f.peerA.CloseWrite()
				}()

				// Wait until the writer makes no progress for 300 ms.
				last, since := int64(-1), time.Now()
				for deadline := time.Now().Add(testDeadline); time.Since(since) < 300*time.Millisecond; {
					if time.Now().After(deadline) {
						t.Fatal("the writer never stalled")
					}
					if n := written.Load(); n != last {
						last, since = n, time.Now()
					}
					time.Sleep(20 * time.Millisecond)
				}
				if last >= size {
					t.Fatalf("the writer wrote all %d bytes while nobody read: the relay buffers without bound", last)
				}
				runtime.GC()
				var stalled runtime.MemStats
				runtime.ReadMemStats(&stalled)
				if grew := int64(stalled.HeapInuse) - int64(before.HeapInuse); grew > 1<<20 {
					t.Errorf("heap grew by %d bytes while stalled", grew)
				}
				t.Logf("stalled after %d of %d bytes", last, size)

				sum, n, err := receiveAndHash(f.peerB)
				if err != nil {
					t.Fatal(err)
				}
				if err := <-writeErr; err != nil {
					t.Fatal(err)
				}
				if n != size || sum != sha256.Sum256(data) {
					t.Errorf("received %d bytes with sha256 %x, want %d with %x", n, sum, size, sha256.Sum256(data))
				}
				f.peerB.CloseWrite()
				if diff := cmp.Diff(Stats{AtoB: size}, e.wait(t)); diff != "" {
					t.Errorf("stats (-want +got):\n%s", diff)
				}
				checkPath(t, r, pc.noSplice)
			})
		}
	}
}

// openFDs counts the descriptors of this process.
func openFDs(tb testing.TB) int {
	tb.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		tb.Fatal(err)
	}
	return len(ents)
}

// settle retries ok for up to two seconds and reports whether it held.
func settle(ok func() bool) bool {
	for deadline := time.Now().Add(2 * time.Second); !ok(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

// TestNoLeaks relays 10,000 short pairs and checks that goroutines and
// descriptors return to their baseline.
func TestNoLeaks(t *testing.T) {
	const pairs, batch = 10000, 200
	la, lb := newListener(t, false), newListener(t, true)
	r := newRelay(t, Config{})
	goroutines, fds := runtime.NumGoroutine(), openFDs(t)

	for done := 0; done < pairs; done += batch {
		fs := make([]*fixture, batch)
		ends := make([]*ended, batch)
		for i := range fs {
			fs[i] = newFixture(t, la, lb)
			ends[i] = add(t, r, fs[i])
		}
		errs := make(chan error, batch)
		for _, f := range fs {
			go func(f *fixture) { errs <- pingPong(f) }(f)
		}
		for range fs {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		for i, e := range ends {
			if diff := cmp.Diff(Stats{AtoB: 4, BtoA: 4}, e.wait(t)); diff != "" {
				t.Fatalf("pair %d: stats (-want +got):\n%s", done+i, diff)
			}
			fs[i].closePeers()
		}
	}
	if n := r.Len(); n != 0 {
		t.Errorf("Len() = %d, want 0", n)
	}
	back := settle(func() bool {
		return runtime.NumGoroutine() <= goroutines+2 && openFDs(t) <= fds+2
	})
	if !back {
		t.Errorf("after %d pairs: %d goroutines (baseline %d), %d descriptors (baseline %d)",
			pairs, runtime.NumGoroutine(), goroutines, openFDs(t), fds)
	}
}

// pingPong exchanges "ping" and "pong" over f and closes both peers'
// write sides, waiting for the EOFs.
func pingPong(f *fixture) error {
	buf := make([]byte, 8)
	if _, err := f.peerA.Write([]byte("ping")); err != nil {
		return err
	}
	if _, err := io.ReadFull(f.peerB, buf[:4]); err != nil || string(buf[:4]) != "ping" {
		return errors.Join(errors.New("b's peer did not get ping"), err)
	}
	if _, err := f.peerB.Write([]byte("pong")); err != nil {
		return err
	}
	if _, err := io.ReadFull(f.peerA, buf[:4]); err != nil || string(buf[:4]) != "pong" {
		return errors.Join(errors.New("a's peer did not get pong"), err)
	}
	if err := errors.Join(f.peerA.CloseWrite(), f.peerB.CloseWrite()); err != nil {
		return err
	}
	for _, c := range []*net.TCPConn{f.peerA, f.peerB} {
		if n, err := c.Read(buf); n != 0 || err != io.EOF {
			return errors.Join(errors.New("no EOF after ping-pong"), err)
		}
	}
	return nil
}

// TestClose checks that Close resets live pairs and waits, that a second
// Close is harmless and that Add afterwards fails and closes its sockets.
func TestClose(t *testing.T) {
	r := newRelay(t, Config{IdleTimeout: time.Minute})
	var fs []*fixture
	var ends []*ended
	for _, tc := range sideCases {
		f := newFixture(t, newListener(t, tc.mptcpA), newListener(t, tc.mptcpB))
		defer f.closePeers()
		fs, ends = append(fs, f), append(ends, add(t, r, f))
	}
	if n := r.Len(); n != len(fs) {
		t.Fatalf("Len() = %d, want %d", n, len(fs))
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if n := r.Len(); n != 0 {
		t.Errorf("after Close Len() = %d, want 0", n)
	}
	for i, e := range ends {
		// Close has waited: the callbacks have run.
		select {
		case st := <-e.ch:
			if diff := cmp.Diff(Stats{Reset: true}, st); diff != "" {
				t.Errorf("pair %d: stats (-want +got):\n%s", i, diff)
			}
		default:
			t.Errorf("pair %d: done not called before Close returned", i)
		}
		if err := readReset(fs[i].peerA); err != nil {
			t.Errorf("pair %d, a's peer: %v", i, err)
		}
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}

	f := newFixture(t, newListener(t, false), newListener(t, false))
	defer f.closePeers()
	called := false
	if err := r.Add(f.a, f.b, func(Stats) { called = true }); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Add after Close = %v, want an error wrapping net.ErrClosed", err)
	}
	if !closedConn(f.a) || !closedConn(f.b) {
		t.Error("a refused Add did not close a and b")
	}
	if n, err := f.peerB.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("b's peer after a refused Add: read %d, %v; want EOF", n, err)
	}
	if called {
		t.Error("done called for a refused pair")
	}
}

// TestKeepAlive checks the keepalive options set on both sockets.
func TestKeepAlive(t *testing.T) {
	type keepalive struct{ On, Idle, Interval, Count int }
	tests := []struct {
		name  string
		cfg   time.Duration
		mptcp bool
		want  keepalive
	}{
		{"default", 0, false, keepalive{1, 30, 30, keepAliveProbes}},
		{"set", 7 * time.Second, false, keepalive{1, 7, 7, keepAliveProbes}},
		{"set on mptcp", 7 * time.Second, true, keepalive{1, 7, 7, keepAliveProbes}},
		{"off", -1, false, keepalive{On: 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRelay(t, Config{KeepAlive: tt.cfg})
			f := newFixture(t, newListener(t, tt.mptcp), newListener(t, tt.mptcp))
			defer f.closePeers()
			add(t, r, f)
			for name, c := range map[string]*net.TCPConn{"a": f.a, "b": f.b} {
				fd, err := socketFD(c)
				if err != nil {
					t.Fatal(err)
				}
				var got keepalive
				got.On, _ = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE)
				if got.On != 0 {
					got.Idle, _ = unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
					got.Interval, _ = unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL)
					got.Count, _ = unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPCNT)
				}
				if diff := cmp.Diff(tt.want, got); diff != "" {
					t.Errorf("%s: keepalive (-want +got):\n%s", name, diff)
				}
			}
		})
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"negative idle timeout", Config{IdleTimeout: -time.Second}},
		{"negative workers", Config{Workers: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if r, err := New(tt.cfg); err == nil {
				r.Close()
				t.Fatal("New succeeded")
			}
		})
	}
}

// TestIdlePairMemory checks the memory budget: at most 6 KiB of resident
// memory per idle relayed pair, beyond the sockets themselves.
func TestIdlePairMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("measures 1,000 pairs")
	}
	const budget = 6 << 10
	r := newRelay(t, Config{})
	m := measureIdlePairs(t, 1000, relayStarter(r))
	t.Logf("per idle pair: %s", m)
	if m.RSS > budget {
		t.Errorf("resident memory per idle pair %d bytes, budget %d", m.RSS, budget)
	}
	if m.Goroutines != 0 || m.FDs != 0 {
		t.Errorf("an idle pair costs %v goroutines and %v descriptors, want none", m.Goroutines, m.FDs)
	}
}
