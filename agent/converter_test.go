package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mcpagent/mcpagent/intercept"
	"github.com/mcpagent/mcpagent/mptcpleg"
	"github.com/mcpagent/mcpagent/policy"
	"github.com/mcpagent/mcpagent/relay"
)

var (
	testMCP  = netip.MustParseAddrPort("198.51.100.1:5124")
	testMCP2 = netip.MustParseAddrPort("198.51.100.2:5124")
	lanSrc   = netip.MustParseAddrPort("192.168.1.2:40000")
	srvDst   = netip.MustParseAddrPort("203.0.113.10:80")
	srvDst6  = netip.MustParseAddrPort("[2001:db8:5::10]:443")
)

// fakeDialer records dials and answers them with a loopback TCP pair, an
// error, or nothing until released.
type fakeDialer struct {
	t     *testing.T
	ln    *net.TCPListener
	mu    sync.Mutex
	calls []dialCall
	fail  map[netip.AddrPort]error
	gate  chan struct{} // if non-nil, dials wait for it (or ctx)
	plain bool          // legs fall back to plain TCP
	// blackholed sources get no answer: their dials wait for ctx.
	blackholed map[netip.Addr]bool
}

type dialCall struct {
	mcp   netip.AddrPort
	opts  []mptcpleg.Option
	local netip.Addr
}

func newFakeDialer(t *testing.T) *fakeDialer {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	return &fakeDialer{t: t, ln: ln, fail: map[netip.AddrPort]error{}}
}

func (d *fakeDialer) dial(ctx context.Context, mcp netip.AddrPort, local netip.Addr, header []byte) (*mptcpleg.Leg, error) {
	opts, n, err := mptcpleg.ParseHeader(header)
	if err != nil || n != len(header) {
		d.t.Errorf("leg header %x does not parse: %v", header, err)
	}
	d.mu.Lock()
	d.calls = append(d.calls, dialCall{mcp, opts, local})
	err = d.fail[mcp]
	gate := d.gate
	if d.blackholed[local] {
		gate = make(chan struct{})
	}
	d.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if err != nil {
		return nil, err
	}
	c, err := net.DialTCP("tcp", nil, d.ln.Addr().(*net.TCPAddr))
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return &mptcpleg.Leg{Conn: c, MPTCP: !d.plain}, nil
}

func (d *fakeDialer) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.calls)
}

// verdicts collects the verdicts released for SYNs.
type verdicts chan intercept.Verdict

func (v verdicts) release(x intercept.Verdict) { v <- x }

func (v verdicts) next(t *testing.T) intercept.Verdict {
	t.Helper()
	select {
	case x := <-v:
		return x
	case <-time.After(5 * time.Second):
		t.Fatal("no verdict released")
		return 0
	}
}

func newTestConverter(t *testing.T, cfg policy.Config, d *fakeDialer) *converter {
	ctx, cancel := context.WithCancel(context.Background())
	c := newConverter(ctx, policy.New(cfg), d.dial, 500*time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil)))
	t.Cleanup(func() { cancel(); c.close() })
	return c
}

func TestOnPathLegGoesToTheDestination(t *testing.T) {
	dslAddr := netip.MustParseAddr("10.0.1.2")
	empty := mptcpleg.Option{Protocol: 6}
	tests := []struct {
		name     string
		syn      intercept.SYN
		source   netip.Addr
		plain    bool
		want     intercept.Verdict
		wantOpts []mptcpleg.Option // nil: no dial
	}{
		{name: "empty option only", syn: intercept.SYN{Src: lanSrc, Dst: srvDst}, want: intercept.Convert,
			wantOpts: []mptcpleg.Option{empty}},
		{name: "with the source address", syn: intercept.SYN{Src: lanSrc, Dst: srvDst}, source: dslAddr, want: intercept.Convert,
			wantOpts: []mptcpleg.Option{empty, {Source: true, Protocol: 6, Addr: dslAddr}}},
		{name: "source of another family is left out", syn: intercept.SYN{Src: lanSrc, Dst: srvDst6}, source: dslAddr, want: intercept.Convert,
			wantOpts: []mptcpleg.Option{empty}},
		{name: "native MPTCP passes", syn: intercept.SYN{Src: lanSrc, Dst: srvDst, MPTCP: intercept.NativeCapable}, want: intercept.Accept},
		{name: "no MCP on the path: fallback", syn: intercept.SYN{Src: lanSrc, Dst: srvDst}, plain: true, want: intercept.Accept,
			wantOpts: []mptcpleg.Option{empty}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newFakeDialer(t)
			d.plain = tt.plain
			c := newTestConverter(t, policy.Config{}, d)
			c.onPath, c.source = true, tt.source
			v := make(verdicts, 1)
			c.handleSYN(tt.syn, v.release)
			if got := v.next(t); got != tt.want {
				t.Fatalf("verdict = %v, want %v", got, tt.want)
			}
			if tt.wantOpts == nil {
				if d.count() != 0 {
					t.Fatalf("dials = %+v, want none", d.calls)
				}
				return
			}
			if d.count() != 1 || d.calls[0].mcp != tt.syn.Dst {
				t.Fatalf("dials = %+v, want one to %v", d.calls, tt.syn.Dst)
			}
			if diff := cmp.Diff(tt.wantOpts, d.calls[0].opts, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("MP_CONVERT (-want +got):\n%s", diff)
			}
			if !c.policy.Up(tt.syn.Dst) || len(c.policy.DueProbes(time.Now().Add(time.Hour))) != 0 {
				t.Error("on path, the destination must not enter the MCP health")
			}
		})
	}
}

func TestConvertReleasesAfterLegAndPairsByFlow(t *testing.T) {
	for _, dst := range []netip.AddrPort{srvDst, srvDst6} {
		t.Run(dst.String(), func(t *testing.T) {
			d := newFakeDialer(t)
			c := newTestConverter(t, policy.Config{MCPs: []netip.AddrPort{testMCP}}, d)
			v := make(verdicts, 4)
			c.handleSYN(intercept.SYN{Src: lanSrc, Dst: dst}, v.release)
			if got := v.next(t); got != intercept.Convert {
				t.Fatalf("verdict = %v, want Convert", got)
			}
			if d.count() != 1 || d.calls[0].mcp != testMCP {
				t.Fatalf("dials = %+v", d.calls)
			}
			o := d.calls[0].opts
			if len(o) != 1 || o[0].Source || o[0].Protocol != 6 || o[0].Addr != dst.Addr() || o[0].Port != dst.Port() {
				t.Fatalf("MP_CONVERT = %+v, want destination %v", o, dst)
			}
			// A retransmitted SYN after release is converted again (it
			// must reach the same listener), without a second leg.
			c.handleSYN(intercept.SYN{Src: lanSrc, Dst: dst}, v.release)
			if got := v.next(t); got != intercept.Convert || d.count() != 1 {
				t.Fatalf("duplicate: verdict %v, dials %d", got, d.count())
			}
			// The listener sees IPv4 as IPv4-mapped IPv6 sometimes.
			src := netip.AddrPortFrom(netip.AddrFrom16(lanSrc.Addr().As16()), lanSrc.Port())
			leg, ok := c.claim(src, dst)
			if !ok || leg == nil {
				t.Fatal("claim found no leg")
			}
			leg.Conn.Close()
			if _, ok := c.claim(lanSrc, dst); ok {
				t.Fatal("a leg was claimed twice")
			}
		})
	}
}

func TestDuplicateSYNWhileDialingIsDropped(t *testing.T) {
	d := newFakeDialer(t)
	d.gate = make(chan struct{})
	c := newTestConverter(t, policy.Config{MCPs: []netip.AddrPort{testMCP}}, d)
	first, dup := make(verdicts, 1), make(verdicts, 1)
	c.handleSYN(intercept.SYN{Src: lanSrc, Dst: srvDst}, first.release)
	c.handleSYN(intercept.SYN{Src: lanSrc, Dst: srvDst}, dup.release)
	if got := dup.next(t); got != intercept.Drop {
		t.Fatalf("duplicate verdict = %v, want Drop", got)
	}
	close(d.gate)
	if got := first.next(t); got != intercept.Convert {
		t.Fatalf("verdict = %v, want Convert", got)
	}
}

func TestLegFailureFallsBackAndSkipsTheDeadMCP(t *testing.T) {
	for _, tt := range []struct {
		name     string
		fallback policy.Action
		want     intercept.Verdict
	}{
		{"direct", policy.Pass, intercept.Accept},
		{"reject", policy.Reject, intercept.Reject},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := newFakeDialer(t)
			d.fail[testMCP] = errors.New("connection refused")
			c := newTestConverter(t, policy.Config{MCPs: []netip.AddrPort{testMCP}, Fallback: tt.fallback}, d)
			v := make(verdicts, 1)
			c.handleSYN(intercept.SYN{Src: lanSrc, Dst: srvDst}, v.release)
			if got := v.next(t); got != tt.want {
				t.Fatalf("verdict = %v, want %v", got, tt.want)
			}
			// The MCP is now known down: the next flow takes the fallback
			// at once, without a dial.
			other := netip.AddrPortFrom(lanSrc.Addr(), lanSrc.Port()+1)
			c.handleSYN(intercept.SYN{Src: other, Dst: srvDst}, v.release)
			if got := v.next(t); got != tt.want || d.count() != 1 {
				t.Fatalf("second flow: verdict %v, dials %d; want %v and 1 dial", got, d.count(), tt.want)
			}
		})
	}
}

func TestSecondMCPUsedWhenFirstIsDown(t *testing.T) {
	d := newFakeDialer(t)
	d.fail[testMCP] = errors.New("timeout")
	c := newTestConverter(t, policy.Config{MCPs: []netip.AddrPort{testMCP, testMCP2}}, d)
	v := make(verdicts, 1)
	c.handleSYN(intercept.SYN{Src: lanSrc, Dst: srvDst}, v.release)
	v.next(t)
	other := netip.AddrPortFrom(lanSrc.Addr(), lanSrc.Port()+1)
	c.handleSYN(intercept.SYN{Src: other, Dst: srvDst}, v.release)
	if got := v.next(t); got != intercept.Convert || d.calls[1].mcp != testMCP2 {
		t.Fatalf("verdict %v via %v, want Convert via the second MCP", got, d.calls[1].mcp)
	}
}

func TestNativeMPTCPPassesWithoutLeg(t *testing.T) {
	d := newFakeDialer(t)
	c := newTestConverter(t, policy.Config{MCPs: []netip.AddrPort{testMCP}, Fallback: policy.Reject}, d)
	v := make(verdicts, 2)
	c.handleSYN(intercept.SYN{Src: lanSrc, Dst: srvDst, MPTCP: intercept.NativeCapable}, v.release)
	c.handleSYN(intercept.SYN{Src: lanSrc, Dst: srvDst6, MPTCP: intercept.NativeJoin}, v.release)
	if a, b := v.next(t), v.next(t); a != intercept.Accept || b != intercept.Accept || d.count() != 0 {
		t.Fatalf("verdicts %v %v, dials %d", a, b, d.count())
	}
	if c.stats.Native.Load() != 2 {
		t.Fatalf("native count = %d", c.stats.Native.Load())
	}
}

func TestSweepClosesUnclaimedLegs(t *testing.T) {
	d := newFakeDialer(t)
	c := newTestConverter(t, policy.Config{MCPs: []netip.AddrPort{testMCP}}, d)
	now := time.Unix(1000, 0)
	c.now = func() time.Time { return now }
	v := make(verdicts, 1)
	c.handleSYN(intercept.SYN{Src: lanSrc, Dst: srvDst}, v.release)
	v.next(t)
	c.sweep()
	if _, ok := c.flows[newFlowKey(lanSrc, srvDst)]; !ok {
		t.Fatal("flow swept before its time")
	}
	now = now.Add(claimTTL)
	c.sweep()
	if len(c.flows) != 0 || c.stats.Unclaimed.Load() != 1 {
		t.Fatalf("flows %d unclaimed %d after TTL", len(c.flows), c.stats.Unclaimed.Load())
	}
}

func TestTooManyPendingFallsBack(t *testing.T) {
	d := newFakeDialer(t)
	d.gate = make(chan struct{})
	c := newTestConverter(t, policy.Config{MCPs: []netip.AddrPort{testMCP}}, d)
	c.maxPending = 1
	held, over := make(verdicts, 1), make(verdicts, 1)
	c.handleSYN(intercept.SYN{Src: lanSrc, Dst: srvDst}, held.release)
	c.handleSYN(intercept.SYN{Src: lanSrc, Dst: srvDst6}, over.release)
	if got := over.next(t); got != intercept.Accept {
		t.Fatalf("over the limit while dialing: %v, want Accept", got)
	}
	close(d.gate)
	if got := held.next(t); got != intercept.Convert {
		t.Fatalf("held SYN: %v, want Convert", got)
	}
	// Its leg is up but not claimed, as for a port scan's SYN: it still
	// counts.
	other := netip.MustParseAddrPort("198.51.100.7:444")
	c.handleSYN(intercept.SYN{Src: lanSrc, Dst: other}, over.release)
	if got := over.next(t); got != intercept.Accept {
		t.Fatalf("over the limit with an unclaimed leg: %v, want Accept", got)
	}
	leg, ok := c.claim(lanSrc, srvDst)
	if !ok {
		t.Fatal("the ready leg could not be claimed")
	}
	leg.Conn.Close()
	third := netip.MustParseAddrPort("198.51.100.7:445")
	c.handleSYN(intercept.SYN{Src: lanSrc, Dst: third}, held.release)
	if got := held.next(t); got != intercept.Convert {
		t.Fatalf("after the claim: %v, want Convert", got)
	}
	if c.pending != 1 {
		t.Errorf("pending = %d, want 1 (the last leg)", c.pending)
	}
	c.now = func() time.Time { return time.Now().Add(claimTTL) }
	c.sweep()
	if c.pending != 0 {
		t.Errorf("pending = %d after the sweep, want 0", c.pending)
	}
}

// TestLocalShortageLeavesTheMCPUp: a leg that fails because the router is
// out of descriptors falls back, but does not take the MCP down for every
// later flow.
func TestLocalShortageLeavesTheMCPUp(t *testing.T) {
	d := newFakeDialer(t)
	c := newTestConverter(t, policy.Config{MCPs: []netip.AddrPort{testMCP}}, d)
	d.mu.Lock()
	d.fail[testMCP] = fmt.Errorf("open leg to %s: %w", testMCP, os.NewSyscallError("socket", syscall.EMFILE))
	d.mu.Unlock()
	v := make(verdicts, 1)
	c.handleSYN(intercept.SYN{Src: lanSrc, Dst: srvDst}, v.release)
	if got := v.next(t); got != intercept.Accept {
		t.Fatalf("verdict = %v, want Accept (fallback)", got)
	}
	d.mu.Lock()
	delete(d.fail, testMCP)
	d.mu.Unlock()
	c.handleSYN(intercept.SYN{Src: lanSrc, Dst: srvDst6}, v.release)
	if got := v.next(t); got != intercept.Convert {
		t.Fatalf("next flow: %v, want Convert: the MCP must stay up", got)
	}
}

func TestCloseReleasesHeldSYNsUnconverted(t *testing.T) {
	d := newFakeDialer(t)
	d.gate = make(chan struct{}) // never opened: dials end with ctx
	ctx, cancel := context.WithCancel(context.Background())
	c := newConverter(ctx, policy.New(policy.Config{MCPs: []netip.AddrPort{testMCP}, Fallback: policy.Reject}), d.dial, time.Minute, slog.New(slog.NewTextHandler(io.Discard, nil)))
	v := make(verdicts, 1)
	c.handleSYN(intercept.SYN{Src: lanSrc, Dst: srvDst}, v.release)
	cancel()
	c.close()
	if got := v.next(t); got != intercept.Accept {
		t.Fatalf("verdict on close = %v, want Accept (fail-open)", got)
	}
	c.handleSYN(intercept.SYN{Src: lanSrc, Dst: srvDst6}, v.release)
	if got := v.next(t); got != intercept.Accept {
		t.Fatalf("verdict after close = %v, want Accept", got)
	}
}

// TestLegRetriedOverNextUplink: a SYN over the best uplink that gets no
// answer is abandoned, within the leg timeout, for the next uplink.
func TestLegRetriedOverNextUplink(t *testing.T) {
	dsl, lte := netip.MustParseAddr("10.0.1.2"), netip.MustParseAddr("100.64.0.2")
	d := newFakeDialer(t)
	d.blackholed = map[netip.Addr]bool{dsl: true}
	c := newTestConverter(t, policy.Config{MCPs: []netip.AddrPort{testMCP}}, d)
	c.sources = func(remote netip.Addr) []netip.Addr {
		if remote != testMCP.Addr() {
			t.Errorf("sources asked for %v, want the MCP %v", remote, testMCP.Addr())
		}
		return []netip.Addr{dsl, lte}
	}
	opened := make(chan netip.Addr, 2)
	c.legOpened = func(src netip.Addr) { opened <- src }
	v := make(verdicts, 1)
	start := time.Now()
	c.handleSYN(intercept.SYN{Src: lanSrc, Dst: srvDst}, v.release)
	if got := v.next(t); got != intercept.Convert {
		t.Fatalf("verdict %v, want Convert over the second uplink", got)
	}
	if took := time.Since(start); took >= c.legTimeout {
		t.Errorf("leg took %v, more than the leg timeout %v", took, c.legTimeout)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var locals []netip.Addr
	for _, call := range d.calls {
		locals = append(locals, call.local)
	}
	if diff := cmp.Diff([]netip.Addr{dsl, lte}, locals, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("initial subflow sources (-want +got):\n%s", diff)
	}
	if !c.policy.Up(testMCP) {
		t.Error("the MCP was marked down although the leg came up")
	}
	if got := <-opened; got != lte || len(opened) != 0 {
		t.Errorf("legOpened(%v) and %d more, want legOpened(%v) only", got, len(opened), lte)
	}
}

// scriptedAcceptor returns its results in turn, then net.ErrClosed.
type scriptedAcceptor struct {
	results []any // *net.TCPConn or error
	calls   int
	onCall  func(call int) // if not nil, called with the count of calls so far
}

func (a *scriptedAcceptor) AcceptTCP() (*net.TCPConn, error) {
	a.calls++
	if a.onCall != nil {
		a.onCall(a.calls)
	}
	if len(a.results) == 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: net.ErrClosed}
	}
	r := a.results[0]
	a.results = a.results[1:]
	if c, ok := r.(*net.TCPConn); ok {
		return c, nil
	}
	return nil, r.(error)
}

// runAcceptLoop runs acceptLoop on a, with a relay of its own, until it ends,
// failing t if that takes more than 5 s; when says what should end it.
func runAcceptLoop(t *testing.T, a tcpAcceptor, stop <-chan struct{}, c *converter, when string) {
	t.Helper()
	rl, err := relay.New(relay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rl.Close() })
	done := make(chan struct{})
	go func() {
		defer close(done)
		acceptLoop(a, stop, c, rl, newLegRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("the accept loop did not end when %s", when)
	}
}

// The accept loop outlives running out of file descriptors: it waits and
// accepts again, and ends only when the listener is closed.
func TestAcceptLoopOutlivesEMFILE(t *testing.T) {
	client, accepted := loopbackPair(t)
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	a := &scriptedAcceptor{results: []any{emfile, emfile, accepted}}
	// Without an MCP the connection, which has no leg, cannot get one.
	c := newTestConverter(t, policy.Config{}, newFakeDialer(t))

	runAcceptLoop(t, a, make(chan struct{}), c, "its listener closed")
	if a.calls != 4 {
		t.Errorf("accept called %d times, want 4: two EMFILE, one connection, closed", a.calls)
	}
	if got := c.stats.Orphans.Load(); got != 1 {
		t.Errorf("orphan accepts %d, want 1: the connection after the errors was taken", got)
	}
	// The connection without a leg was reset.
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := client.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("client read %v, want a reset", err)
	}
}

// loopbackPair returns both ends of a loopback TCP connection; t closes
// the client's end.
func loopbackPair(t *testing.T) (client, accepted *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	accepted, err = ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	return client, accepted
}

// TestLateConnectionGetsALeg: a LAN connection accepted after its leg
// expired unclaimed, as when SYN-ACKs are lost on the LAN, gets a new leg
// and is relayed, not reset.
func TestLateConnectionGetsALeg(t *testing.T) {
	d := newFakeDialer(t)
	c := newTestConverter(t, policy.Config{MCPs: []netip.AddrPort{testMCP}}, d)
	client, accepted := loopbackPair(t)
	src, dst := client.LocalAddr().(*net.TCPAddr).AddrPort(), client.RemoteAddr().(*net.TCPAddr).AddrPort()
	// The SYN converted, and its leg waited claimTTL in vain.
	now := time.Now()
	c.now = func() time.Time { return now }
	v := make(verdicts, 1)
	c.handleSYN(intercept.SYN{Src: src, Dst: dst}, v.release)
	if got := v.next(t); got != intercept.Convert {
		t.Fatalf("verdict %v, want Convert", got)
	}
	now = now.Add(claimTTL)
	c.sweep()

	runAcceptLoop(t, &scriptedAcceptor{results: []any{accepted}}, make(chan struct{}), c, "its listener closed")
	deadline := time.Now().Add(5 * time.Second)
	for c.stats.LateLegs.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if c.stats.Unclaimed.Load() != 1 || c.stats.Orphans.Load() != 1 || c.stats.LateLegs.Load() != 1 || d.count() != 2 {
		t.Fatalf("unclaimed %d, orphans %d, late legs %d, dials %d; want 1, 1, 1, 2",
			c.stats.Unclaimed.Load(), c.stats.Orphans.Load(), c.stats.LateLegs.Load(), d.count())
	}
	// Relayed: the client's bytes reach the leg's far end, which keeps
	// the connection open.
	if _, err := client.Write([]byte("GET / HTTP/1.1\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	client.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := client.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("client read %v, want nothing yet (no reset)", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pending != 0 {
		t.Errorf("pending = %d, want 0: the late leg is relayed", c.pending)
	}
}

// Stopping the accept loop while it waits out a failed accept ends the
// wait: the agent's shutdown must not sit out the backoff.
func TestAcceptLoopStopsDuringBackoff(t *testing.T) {
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	stop := make(chan struct{})
	var stopped time.Time
	// After eight failures the wait is 640 ms; the loop is stopped as the
	// eighth fails, before it starts to wait.
	a := &scriptedAcceptor{results: []any{emfile, emfile, emfile, emfile, emfile, emfile, emfile, emfile}}
	a.onCall = func(n int) {
		if n == 8 {
			stopped = time.Now()
			close(stop)
		}
	}
	c := newTestConverter(t, policy.Config{MCPs: []netip.AddrPort{testMCP}}, newFakeDialer(t))
	runAcceptLoop(t, a, stop, c, "stopped")
	if a.calls != 8 {
		t.Errorf("accept called %d times, want 8: stopped in the wait after the eighth", a.calls)
	}
	if d := time.Since(stopped); d >= 640*time.Millisecond {
		t.Errorf("the loop ended %v after it was stopped: it sat out its wait", d)
	}
}

// A SYN retransmitted after its flow was let through direct gets the same
// verdict although the MCP has come back meanwhile: converting it would
// give the client a second, different SYN-ACK. Each copy keeps the
// decision for decidedTTL more.
func TestRetransmittedSYNKeepsItsVerdict(t *testing.T) {
	d := newFakeDialer(t)
	d.fail[testMCP] = errors.New("connection refused")
	c := newTestConverter(t, policy.Config{MCPs: []netip.AddrPort{testMCP}}, d)
	now := time.Unix(1000, 0)
	c.now = func() time.Time { return now }
	v := make(verdicts, 1)
	syn := intercept.SYN{Src: lanSrc, Dst: srvDst}
	c.handleSYN(syn, v.release)
	if got := v.next(t); got != intercept.Accept {
		t.Fatalf("first SYN with the MCP down: %v, want Accept", got)
	}
	delete(d.fail, testMCP)
	c.policy.Succeeded(testMCP)
	// Linux's retransmissions come 1, 3, 7, 15 and 31 s after the SYN.
	for _, at := range []time.Duration{1, 3, 7, 15, 31} {
		now = time.Unix(1000, 0).Add(at * time.Second)
		c.sweep()
		c.handleSYN(syn, v.release)
		if got := v.next(t); got != intercept.Accept {
			t.Fatalf("SYN retransmitted after %v s: %v, want Accept as the first", int(at), got)
		}
	}
	// Forgotten decidedTTL after the last copy: the same 4-tuple much later
	// is a new connection.
	now = now.Add(decidedTTL)
	c.sweep()
	c.handleSYN(syn, v.release)
	if got := v.next(t); got != intercept.Convert {
		t.Fatalf("SYN %v after the last copy: %v, want Convert", decidedTTL, got)
	}
}

// Decisions are remembered only up to maxRemembered flows: a LAN host
// flooding SYNs to new ports cannot grow the converter's map without
// bound.
func TestRememberedFlowsAreBounded(t *testing.T) {
	d := newFakeDialer(t)
	c := newTestConverter(t, policy.Config{MCPs: []netip.AddrPort{testMCP}, Fallback: policy.Reject}, d)
	v := make(verdicts, 1)
	for i := range maxRemembered + 100 {
		src := netip.AddrPortFrom(lanSrc.Addr(), uint16(1024+i%60000))
		dst := netip.AddrPortFrom(srvDst.Addr(), uint16(1+i/60000))
		c.handleSYN(intercept.SYN{Src: src, Dst: dst, MPTCP: intercept.NativeCapable}, v.release)
		v.next(t)
	}
	c.mu.Lock()
	n := len(c.flows)
	c.mu.Unlock()
	if n != maxRemembered {
		t.Errorf("%d flows remembered, want at most %d", n, maxRemembered)
	}
}
