package mcpgw

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mcpagent/mcpagent/internal/netnstest"
	"github.com/mcpagent/mcpagent/mptcpleg"
	"github.com/mcpagent/mcpagent/mptcppm"
	"github.com/vishvananda/netlink"
)

func TestMain(m *testing.M) { netnstest.Main(m) }

// Addresses on the test's link. The servers listen on the first two; the
// others exist to be refused.
var (
	srvV4     = netip.MustParseAddr("203.0.113.10")
	srvV6     = netip.MustParseAddr("2001:db8::10")
	ownV4     = netip.MustParseAddr("192.0.2.1") // in 192.0.2.0/24
	ownBcast  = netip.MustParseAddr("192.0.2.255")
	denied    = netip.MustParsePrefix("198.51.100.0/24")
	allowSrvs = []netip.Prefix{netip.PrefixFrom(srvV4, 32), netip.PrefixFrom(srvV6, 128)}
)

var linkSeq atomic.Int32

// addLink creates a link holding the server and own test addresses, and
// removes it when t ends. It is one end of a veth pair whose other end is
// in the same namespace: this kernel has no dummy driver.
func addLink(t *testing.T) netlink.Link {
	t.Helper()
	n := linkSeq.Add(1)
	la := netlink.NewLinkAttrs()
	la.Name = fmt.Sprintf("mcpgwt%d", n)
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: fmt.Sprintf("mcpgwp%d", n)}); err != nil {
		t.Fatalf("add veth pair: %v", err)
	}
	link, err := netlink.LinkByName(la.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netlink.LinkDel(link) })
	peer, err := netlink.LinkByName(fmt.Sprintf("mcpgwp%d", n))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{srvV4.String() + "/32", ownV4.String() + "/24", srvV6.String() + "/128"} {
		addr, err := netlink.ParseAddr(p)
		if err != nil {
			t.Fatal(err)
		}
		addr.Flags = syscall.IFA_F_NODAD
		if err := netlink.AddrAdd(link, addr); err != nil {
			t.Fatalf("add %s: %v", p, err)
		}
	}
	for _, l := range []netlink.Link{peer, link} {
		if err := netlink.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	return link
}

// startEcho runs a plain TCP echo server on ap until t ends.
func startEcho(t *testing.T, ap netip.AddrPort) netip.AddrPort {
	t.Helper()
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp", ap.String())
	if err != nil {
		t.Fatalf("echo listen: %v", err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				// Plain reads and writes: splice would take a pipe from
				// the runtime's pool, which the descriptor count of
				// TestIntegrationRandomPayloads would see.
				io.Copy(struct{ io.Writer }{c}, struct{ io.Reader }{c})
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// dialCounter is a Config.Dial that records the destination of its calls
// and really dials, as the default does.
type dialCounter struct {
	mu    sync.Mutex
	addrs []string
}

func (d *dialCounter) dial(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	d.mu.Lock()
	d.addrs = append(d.addrs, dst.String())
	d.mu.Unlock()
	return dialServer(ctx, src, dst)
}

func (d *dialCounter) calls() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.addrs...)
}

type testServer struct {
	*Server
	dials  *dialCounter
	v4, v6 netip.AddrPort // where it listens
	stop   func() error   // cancels Serve and returns its error
}

// startServer runs a Server on 127.0.0.1 and ::1, on free ports,
// that may reach srvV4 and srvV6; cfg's Listen, Dial and AllowLocal are
// filled in, and Logger if nil.
func startServer(t *testing.T, cfg Config) *testServer {
	t.Helper()
	ts := &testServer{dials: &dialCounter{}}
	cfg.Listen = []netip.AddrPort{
		netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 0),
		netip.AddrPortFrom(netip.IPv6Loopback(), 0),
	}
	cfg.Dial = ts.dials.dial
	cfg.AllowLocal = allowSrvs
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t, slog.LevelDebug)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts.Server = s
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ctx) }()
	var once sync.Once
	var serveErr error
	ts.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case serveErr = <-errc:
			case <-time.After(5 * time.Second):
				serveErr = errors.New("Serve did not return within 5 s of cancel")
			}
		})
		return serveErr
	}
	t.Cleanup(func() {
		if err := ts.stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	select {
	case <-s.Ready():
	case err := <-errc:
		t.Fatalf("Serve: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("Serve not ready within 5 s")
	}
	addrs := s.Addrs()
	ts.v4, ts.v6 = addrs[0], addrs[1]
	return ts
}

func testLogger(t *testing.T, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: level}))
}

// testWriter sends log lines to t.Log, and nowhere once t has ended.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	defer func() { recover() }() // t.Log after the test ended panics
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

func header(t testing.TB, opts ...mptcpleg.Option) []byte {
	t.Helper()
	b, err := mptcpleg.AppendHeader(nil, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func dstOpt(a netip.Addr, port uint16) mptcpleg.Option {
	return mptcpleg.Option{Protocol: mptcpleg.ProtocolTCP, Addr: a, Port: port}
}

func dialLeg(t *testing.T, remote netip.AddrPort, hdr []byte) *mptcpleg.Leg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	leg, err := mptcpleg.Dial(ctx, mptcpleg.DialConfig{Remote: remote, Header: hdr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { leg.Conn.Close() })
	return leg
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// echoRoundTrip sends n random bytes (the first len(synData) of them were
// already sent with the header) through c and checks that the same bytes
// come back.
func echoRoundTrip(t *testing.T, c *net.TCPConn, data []byte, sent int) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(data[sent:])
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		t.Fatalf("read back after %d bytes: %v", n, err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if want := sha256.Sum256(data); !bytes.Equal(h.Sum(nil), want[:]) || n != int64(len(data)) {
		t.Fatalf("echoed %d bytes with sha256 %x, want %d bytes with %x", n, h.Sum(nil), len(data), want)
	}
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 0))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func readSysctlT(t *testing.T, path string) int {
	t.Helper()
	v, err := readSysctl(path)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestIntegrationRelay relays valid legs, IPv4 and IPv6, with and without
// a port in the option, and checks what Serve set in the kernel.
func TestIntegrationRelay(t *testing.T) {
	netnstest.RequireIsolatedRoot(t)
	addLink(t)
	if err := writeSysctl(sysctlFastOpen, 1); err != nil { // the client-only default
		t.Fatal(err)
	}
	ts := startServer(t, Config{MaxSubflows: 3})

	if got := readSysctlT(t, sysctlFastOpen); got != 0x203 {
		t.Errorf("net.ipv4.tcp_fastopen = %#x after Serve, want 0x203", got)
	}
	pm, err := mptcppm.Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	if l, err := pm.Limits(); err != nil || l != (mptcppm.Limits{Subflows: 3}) {
		t.Errorf("MPTCP limits = %+v, %v; want subflows 3, add_addr_accepted 0", l, err)
	}

	echo4 := startEcho(t, netip.AddrPortFrom(srvV4, 0))
	echo6 := startEcho(t, netip.AddrPortFrom(srvV6, 0))
	// The option without a port: mcpgw dials the port the leg came to.
	echoSame := startEcho(t, netip.AddrPortFrom(srvV4, ts.v4.Port()))

	tests := []struct {
		name     string
		remote   netip.AddrPort
		opts     []mptcpleg.Option
		wantDial string
	}{
		{"v4 with port", ts.v4, []mptcpleg.Option{dstOpt(srvV4, echo4.Port())}, echo4.String()},
		{"v6 with port over v6 leg", ts.v6, []mptcpleg.Option{dstOpt(srvV6, echo6.Port())}, echo6.String()},
		{"v4 without port", ts.v4, []mptcpleg.Option{dstOpt(srvV4, 0)}, echoSame.String()},
		{"mapped v4 with source option", ts.v6, []mptcpleg.Option{
			{Source: true, Protocol: mptcpleg.ProtocolTCP, Addr: netip.MustParseAddr("192.168.1.20"), Port: 40000},
			dstOpt(netip.AddrFrom16(srvV4.As16()), echo4.Port())}, echo4.String()},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(ts.dials.calls())
			data := randomBytes(uint64(i), 1<<20)
			const synData = 100 // sent in the SYN, after the header
			leg := dialLeg(t, tt.remote, append(header(t, tt.opts...), data[:synData]...))
			if !leg.MPTCP {
				t.Error("leg.MPTCP = false")
			}
			if mp, err := mptcpleg.IsMPTCP(leg.Conn); !mp || err != nil {
				t.Errorf("IsMPTCP = %v, %v", mp, err)
			}
			echoRoundTrip(t, leg.Conn, data, synData)
			calls := ts.dials.calls()
			if len(calls) != before+1 || calls[before] != tt.wantDial {
				t.Errorf("dials = %q, want one more: %s", calls, tt.wantDial)
			}
		})
	}
	waitFor(t, "legs closed", func() bool { return ts.Stats().Active == 0 })
	st := ts.Stats()
	if st.Accepted != 4 || st.Converted != 4 || st.Fallback != 0 || len(st.TornDown) != 0 {
		t.Errorf("Stats = %+v, want 4 accepted and converted, no fallback, none torn down", st)
	}
}

// hostile is a leg that mcpgw must tear down without dialing.
type hostile struct {
	name       string
	hdr        []byte
	closeWrite bool // half-close after the header, else stay open
	want       Reason
	mapped6    bool // send over the IPv6 listener
}

func hostileCases(t *testing.T) []hostile {
	opt := func(a string, port uint16) []byte {
		return header(t, dstOpt(netip.MustParseAddr(a), port))
	}
	valid := opt(srvV4.String(), 80)
	return []hostile{
		{name: "loopback v4", hdr: opt("127.0.0.1", 80), want: ReasonLoopback},
		{name: "loopback v6", hdr: opt("::1", 80), want: ReasonLoopback},
		{name: "loopback mapped", hdr: opt("::ffff:127.0.0.2", 0), want: ReasonLoopback},
		{name: "multicast v4", hdr: opt("224.0.0.1", 80), want: ReasonMulticast},
		{name: "multicast v6", hdr: opt("ff02::1", 80), want: ReasonMulticast},
		{name: "broadcast", hdr: opt("255.255.255.255", 80), want: ReasonBroadcast},
		{name: "directed broadcast of own subnet", hdr: opt(ownBcast.String(), 80), want: ReasonBroadcast},
		{name: "unspecified v4", hdr: opt("0.0.0.0", 80), want: ReasonUnspecified},
		{name: "unspecified v6", hdr: opt("::", 80), want: ReasonUnspecified},
		{name: "link-local metadata", hdr: opt("169.254.169.254", 80), want: ReasonLinkLocal},
		{name: "own address", hdr: opt(ownV4.String(), 22), want: ReasonOwnAddress},
		{name: "deny-listed", hdr: opt("198.51.100.7", 443), want: ReasonDenied},
		{name: "deny-listed mapped", hdr: opt("::ffff:198.51.100.7", 443), want: ReasonDenied},
		{name: "protocol 17", hdr: header(t, mptcpleg.Option{Protocol: 17, Addr: srvV4, Port: 53}), want: ReasonProtocol},
		{name: "empty option", hdr: header(t, mptcpleg.Option{Protocol: 6}), want: ReasonEmptyOption},
		{name: "two destination options", hdr: append(valid[:len(valid)-1:len(valid)-1], valid...), want: ReasonDuplicateOption},
		{name: "EOL only", hdr: []byte{0}, want: ReasonNoDestination},
		{name: "truncated then close", hdr: valid[:5], closeWrite: true, want: ReasonHeaderTruncated},
		{name: "truncated then silence", hdr: valid[:5], want: ReasonHeaderTimeout},
		{name: "no header then silence", hdr: nil, want: ReasonHeaderTimeout},
		{name: "garbage first byte", hdr: []byte("GET / HTTP/1.1\r\n\r\n"), want: ReasonMalformed},
		{name: "garbage after option", hdr: append(valid[:len(valid)-1:len(valid)-1], 'x'), want: ReasonMalformed},
		{name: "over the v6 listener", hdr: opt("127.0.0.1", 80), want: ReasonLoopback, mapped6: true},
	}
}

// TestIntegrationHostile sends each class of hostile header over an MPTCP
// leg and checks that mcpgw resets the leg, counts the right reason and
// never dials.
func TestIntegrationHostile(t *testing.T) {
	netnstest.RequireIsolatedRoot(t)
	link := addLink(t)
	const headerTimeout = 300 * time.Millisecond
	ts := startServer(t, Config{Deny: []netip.Prefix{denied}, HeaderTimeout: headerTimeout})
	for _, tt := range hostileCases(t) {
		t.Run(tt.name, func(t *testing.T) {
			before := ts.Stats().TornDown[tt.want]
			remote := ts.v4
			if tt.mapped6 {
				remote = ts.v6
			}
			start := time.Now()
			dialExpectReset(t, remote, tt.hdr, tt.closeWrite)
			if tt.want == ReasonHeaderTimeout {
				if d := time.Since(start); d < headerTimeout {
					t.Errorf("torn down after %v, before HeaderTimeout %v", d, headerTimeout)
				}
			}
			waitFor(t, "teardown counted", func() bool { return ts.Stats().TornDown[tt.want] == before+1 })
		})
	}
	t.Run("own address added after start", func(t *testing.T) {
		late := netip.MustParseAddr("192.0.2.77")
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: netlink.NewIPNet(late.AsSlice())}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(ownAddrsMaxAge + 100*time.Millisecond)
		before := ts.Stats().TornDown[ReasonOwnAddress]
		dialExpectReset(t, ts.v4, header(t, dstOpt(late, 80)), false)
		waitFor(t, "teardown counted", func() bool { return ts.Stats().TornDown[ReasonOwnAddress] == before+1 })
	})
	if calls := ts.dials.calls(); len(calls) != 0 {
		t.Errorf("Dial called for hostile legs: %q", calls)
	}
}

// expectReset reads from c until mcpgw's abortive close arrives.
func expectReset(t *testing.T, c *net.TCPConn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, err := io.Copy(io.Discard, c)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read %d bytes then %v, want a connection reset", n, err)
	}
}

// dialExpectReset opens a leg with header hdr (then half-closes it if
// closeWrite) and expects mcpgw to reset it. mcpgw accepts a Fast Open SYN
// at once, so its reset may come before Dial has seen the handshake
// complete; then Dial itself reports the reset.
func dialExpectReset(t *testing.T, remote netip.AddrPort, hdr []byte, closeWrite bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	leg, err := mptcpleg.Dial(ctx, mptcpleg.DialConfig{Remote: remote, Header: hdr})
	if errors.Is(err, syscall.ECONNRESET) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	defer leg.Conn.Close()
	if closeWrite {
		if err := leg.Conn.CloseWrite(); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatal(err)
		}
	}
	expectReset(t, leg.Conn)
}

// TestIntegrationRandomPayloads throws 10,000 random invalid headers at
// mcpgw over plain TCP and checks that none leads to a dial, that a valid
// leg still works afterwards, and that goroutines and descriptors return to
// their baseline.
func TestIntegrationRandomPayloads(t *testing.T) {
	netnstest.RequireIsolatedRoot(t)
	addLink(t)
	const total, workers = 10000, 64
	ts := startServer(t, Config{
		Deny:              []netip.Prefix{denied},
		MaxConnsPerClient: workers, // each worker has at most one connection open
		HeaderTimeout:     2 * time.Second,
		Logger:            testLogger(t, slog.LevelInfo),
	})
	echo := startEcho(t, netip.AddrPortFrom(srvV4, 0))

	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	own := newAddrSet(ifaddrs, []netip.Addr{ts.v4.Addr(), ts.v6.Addr()})
	deny := []netip.Prefix{denied}
	invalid := func(b []byte) bool {
		opts, _, err := mptcpleg.ParseHeader(b)
		if err != nil { // including ErrTruncated: the sender closes
			return true
		}
		d, r := destination(opts, ts.v4, false)
		return r != "" || checkDestination(d.Addr(), own, deny, allowSrvs) != ""
	}
	r := rand.New(rand.NewPCG(5124, 30))
	payloads := make([][]byte, 0, total)
	skipped := 0
	for len(payloads) < total {
		b := randomPayload(r, echo.Port())
		if !invalid(b) {
			skipped++
			continue
		}
		payloads = append(payloads, b)
	}
	t.Logf("%d payloads, %d valid ones skipped", total, skipped)

	runtime.GC()
	baseG, baseFD := runtime.NumGoroutine(), countFDs(t)
	start := time.Now()
	var next atomic.Int64
	var failures atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= total {
					return
				}
				if err := sendPayload(ts.v4, payloads[i]); err != nil && failures.Add(1) <= 5 {
					t.Errorf("payload %d %x: %v", i, payloads[i], err)
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d connections in %v", total, time.Since(start))

	if calls := ts.dials.calls(); len(calls) != 0 {
		t.Fatalf("%d dials for invalid headers, first %q", len(calls), calls[0])
	}
	waitFor(t, "legs closed", func() bool { return ts.Stats().Active == 0 })
	st := ts.Stats()
	var torn uint64
	for _, n := range st.TornDown {
		torn += n
	}
	if st.Accepted != total || torn != total || st.Fallback != total {
		t.Errorf("Stats = %+v, want %d accepted, fallback and torn down", st, total)
	}
	t.Logf("torn down: %v", st.TornDown)

	// Still serving.
	data := randomBytes(1, 64<<10)
	leg := dialLeg(t, ts.v4, header(t, dstOpt(srvV4, echo.Port())))
	echoRoundTrip(t, leg.Conn, data, 0)
	leg.Conn.Close()
	waitFor(t, "legs closed", func() bool { return ts.Stats().Active == 0 })

	waitFor(t, "goroutines and descriptors back to baseline", func() bool {
		return runtime.NumGoroutine() <= baseG && countFDs(t) <= baseFD
	})
}

// randomPayload returns a header that is likely invalid: garbage, a
// well-formed option naming a forbidden address, or a mutilated valid one.
func randomPayload(r *rand.Rand, port uint16) []byte {
	switch r.IntN(3) {
	case 0:
		b := make([]byte, r.IntN(2*mptcpleg.MaxHeaderLen))
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	case 1:
		o := mptcpleg.Option{Protocol: mptcpleg.ProtocolTCP, Addr: forbiddenAddr(r), Flags: uint8(r.IntN(8))}
		if r.IntN(2) == 0 {
			o.Port = uint16(1 + r.IntN(65535))
		}
		opts := []mptcpleg.Option{o}
		if r.IntN(3) == 0 {
			opts = append(opts, mptcpleg.Option{Source: true, Protocol: mptcpleg.ProtocolTCP, Addr: netip.AddrFrom4([4]byte{192, 168, 1, byte(r.Uint32())})})
		}
		b, err := mptcpleg.AppendHeader(nil, opts...)
		if err != nil {
			panic(err)
		}
		return append(b, "GET / HTTP/1.1\r\n"[:r.IntN(17)]...)
	default:
		b, err := mptcpleg.AppendHeader(nil, dstOpt(srvV4, port))
		if err != nil {
			panic(err)
		}
		for range 1 + r.IntN(3) {
			b[r.IntN(len(b))] ^= byte(1 + r.IntN(255))
		}
		return b[:r.IntN(len(b)+1)]
	}
}

// forbiddenAddr returns an address of a class mcpgw refuses, in any form.
func forbiddenAddr(r *rand.Rand) netip.Addr {
	v4 := func(a, b byte) netip.Addr {
		return netip.AddrFrom4([4]byte{a, b, byte(r.Uint32()), byte(r.Uint32())})
	}
	var a netip.Addr
	switch r.IntN(10) {
	case 0:
		a = v4(127, byte(r.Uint32()))
	case 1:
		a = v4(byte(224+r.IntN(16)), byte(r.Uint32()))
	case 2:
		a = limitedBroadcast
	case 3:
		a = v4(0, byte(r.Uint32()))
	case 4:
		a = v4(169, 254)
	case 5:
		a = ownBcast
	case 6:
		a = ownV4
	case 7:
		a = v4(198, 51)
		a = netip.AddrFrom4([4]byte{198, 51, 100, a.As4()[3]})
	case 8:
		var b [16]byte
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		b[0], b[1] = 0xfe, 0x80
		if r.IntN(2) == 0 {
			b[0] = 0xff
		}
		return netip.AddrFrom16(b)
	default:
		return []netip.Addr{netip.IPv6Loopback(), netip.IPv6Unspecified()}[r.IntN(2)]
	}
	if r.IntN(3) == 0 {
		return netip.AddrFrom16(a.As16())
	}
	return a
}

// sendPayload sends b over a plain TCP connection to mcpgw, half-closes,
// and expects mcpgw to close the connection without sending anything.
func sendPayload(remote netip.AddrPort, b []byte) error {
	var d net.Dialer
	d.SetMultipathTCP(false)
	c, err := d.Dial("tcp", remote.String())
	if err != nil {
		return err
	}
	defer c.Close()
	tc := c.(*net.TCPConn)
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := tc.Write(b); err != nil && !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
		return err
	}
	tc.CloseWrite()
	n, err := io.Copy(io.Discard, tc)
	switch {
	case n != 0:
		return fmt.Errorf("received %d bytes", n)
	case err != nil && !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE):
		return err
	}
	return nil
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestIntegrationClientLimit checks that the leg over MaxConnsPerClient is
// torn down at once without a dial, and that closing a leg frees its slot.
func TestIntegrationClientLimit(t *testing.T) {
	netnstest.RequireIsolatedRoot(t)
	addLink(t)
	ts := startServer(t, Config{MaxConnsPerClient: 3})
	echo := startEcho(t, netip.AddrPortFrom(srvV4, 0))
	hdr := header(t, dstOpt(srvV4, echo.Port()))
	ping := func(c *net.TCPConn) {
		t.Helper()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("echo = %q, %v", buf, err)
		}
	}
	var legs []*mptcpleg.Leg
	for range 3 {
		leg := dialLeg(t, ts.v4, hdr)
		ping(leg.Conn)
		legs = append(legs, leg)
	}
	dialExpectReset(t, ts.v4, hdr, false)
	if st := ts.Stats(); st.TornDown[ReasonClientLimit] != 1 || st.Active != 3 {
		t.Errorf("Stats = %+v, want 1 client-limit teardown and 3 active", st)
	}
	if n := len(ts.dials.calls()); n != 3 {
		t.Errorf("%d dials, want 3", n)
	}
	// The same limit over IPv6 is another client.
	ping(dialLeg(t, ts.v6, hdr).Conn)

	legs[0].Conn.Close()
	waitFor(t, "a slot freed", func() bool { return ts.Stats().Active == 3 })
	ping(dialLeg(t, ts.v4, hdr).Conn)
}

// TestIntegrationShutdown checks that Serve returns nil promptly when its
// context is cancelled with relays running, and that the legs are closed.
func TestIntegrationShutdown(t *testing.T) {
	netnstest.RequireIsolatedRoot(t)
	addLink(t)
	echo := startEcho(t, netip.AddrPortFrom(srvV4, 0))
	baseG := runtime.NumGoroutine()
	ts := startServer(t, Config{HeaderTimeout: time.Minute})
	var legs []*net.TCPConn
	for i := range 2 {
		leg := dialLeg(t, ts.v4, header(t, dstOpt(srvV4, echo.Port())))
		leg.Conn.SetDeadline(time.Now().Add(5 * time.Second))
		msg := []byte("hello " + strconv.Itoa(i))
		leg.Conn.Write(msg)
		if _, err := io.ReadFull(leg.Conn, msg); err != nil {
			t.Fatal(err)
		}
		legs = append(legs, leg.Conn)
	}
	// And one still waiting for its header.
	pending := dialLeg(t, ts.v4, nil).Conn
	waitFor(t, "3 legs", func() bool { return ts.Stats().Active == 3 })

	start := time.Now()
	if err := ts.stop(); err != nil {
		t.Fatalf("Serve = %v, want nil", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Serve returned %v after cancel", d)
	}
	for _, c := range append(legs, pending) {
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := io.Copy(io.Discard, c); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("leg after shutdown: %v, want a reset", err)
		}
	}
	if st := ts.Stats(); st.Active != 0 || st.TornDown[ReasonShutdown] != 1 {
		t.Errorf("Stats = %+v, want none active, 1 shutdown teardown", st)
	}
	if _, err := net.Dial("tcp", ts.v4.String()); err == nil {
		t.Error("listener still accepts after Serve returned")
	}
	for _, c := range append(legs, pending) {
		c.Close()
	}
	waitFor(t, "goroutines back to baseline", func() bool { return runtime.NumGoroutine() <= baseG })
}

// TestIntegrationDialFailure checks that a leg whose destination refuses
// the connection is reset (§5.2), after exactly one dial.
func TestIntegrationDialFailure(t *testing.T) {
	netnstest.RequireIsolatedRoot(t)
	addLink(t)
	ts := startServer(t, Config{})
	// A port nothing listens on any more.
	ln, err := net.Listen("tcp", netip.AddrPortFrom(srvV4, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	free := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	dialExpectReset(t, ts.v4, header(t, dstOpt(free.Addr(), free.Port())), false)
	waitFor(t, "teardown counted", func() bool { return ts.Stats().TornDown[ReasonDialFailed] == 1 })
	if calls := ts.dials.calls(); len(calls) != 1 || calls[0] != free.String() {
		t.Errorf("dials = %q, want [%s]", calls, free)
	}
}

// dropClientSegments drops the segments without SYN that this host sends
// to port, as the ACK that completes the handshake of a SYN from a forged
// address never comes, until the returned function or the end of t.
func dropClientSegments(t *testing.T, port uint16) (undrop func()) {
	t.Helper()
	rule := []string{"OUTPUT", "-p", "tcp", "--dport", strconv.Itoa(int(port)), "--tcp-flags", "SYN", "NONE", "-j", "DROP"}
	iptables := func(op string) error {
		if out, err := exec.Command("iptables", append([]string{"-w", op}, rule...)...).CombinedOutput(); err != nil {
			return fmt.Errorf("iptables %s: %v: %s", op, err, out)
		}
		return nil
	}
	if err := iptables("-A"); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	undrop = func() {
		once.Do(func() {
			if err := iptables("-D"); err != nil {
				t.Error(err)
			}
		})
	}
	t.Cleanup(undrop)
	return undrop
}

// TestIntegrationSYNDataWaitsForHandshake opens legs whose SYN carries the
// header while the client's later segments are dropped: mcpgw must not
// connect anywhere until the handshake completes, unless TrustSYNData says
// the sources are genuine.
func TestIntegrationSYNDataWaitsForHandshake(t *testing.T) {
	netnstest.RequireIsolatedRoot(t)
	netnstest.RequireTool(t, "iptables")
	addLink(t)
	echo := startEcho(t, netip.AddrPortFrom(srvV4, 0))
	for _, trust := range []bool{false, true} {
		t.Run(fmt.Sprintf("TrustSYNData=%v", trust), func(t *testing.T) {
			ts := startServer(t, Config{TrustSYNData: trust})
			undrop := dropClientSegments(t, ts.v4.Port())
			leg := dialLeg(t, ts.v4, header(t, dstOpt(srvV4, echo.Port())))
			if trust {
				waitFor(t, "the dial on the SYN's header", func() bool { return len(ts.dials.calls()) == 1 })
			} else {
				waitFor(t, "the leg accepted", func() bool { return ts.Stats().Accepted == 1 })
				time.Sleep(1500 * time.Millisecond) // past the SYN-ACK's first retransmission
				if calls := ts.dials.calls(); len(calls) != 0 {
					t.Fatalf("mcpgw connected to %v before the client completed its handshake", calls)
				}
			}
			undrop()
			leg.Conn.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := leg.Conn.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4)
			if _, err := io.ReadFull(leg.Conn, buf); err != nil || string(buf) != "ping" {
				t.Fatalf("echo once the handshake completed = %q, %v", buf, err)
			}
			if calls := ts.dials.calls(); len(calls) != 1 {
				t.Errorf("dials %v, want one", calls)
			}
		})
	}
}

// TestIntegrationHandshakeTimeout lets a leg's SYN with its header arrive
// and nothing after it: mcpgw tears the leg down after HeaderTimeout
// without connecting anywhere.
func TestIntegrationHandshakeTimeout(t *testing.T) {
	netnstest.RequireIsolatedRoot(t)
	netnstest.RequireTool(t, "iptables")
	addLink(t)
	echo := startEcho(t, netip.AddrPortFrom(srvV4, 0))
	ts := startServer(t, Config{HeaderTimeout: 500 * time.Millisecond})
	dropClientSegments(t, ts.v4.Port())
	dialLeg(t, ts.v4, header(t, dstOpt(srvV4, echo.Port())))
	waitFor(t, "a handshake teardown", func() bool { return ts.Stats().TornDown[ReasonHandshake] == 1 })
	if calls := ts.dials.calls(); len(calls) != 0 {
		t.Errorf("mcpgw connected to %v for a client that never completed its handshake", calls)
	}
	if st := ts.Stats(); st.Active != 0 || st.Converted != 0 {
		t.Errorf("Stats = %+v, want nothing active or converted", st)
	}
}
