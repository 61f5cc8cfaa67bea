package intercept_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
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

	"github.com/mcpagent/mcpagent/intercept"
	"github.com/mcpagent/mcpagent/internal/netnstest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { netnstest.Main(m) }

// The lab: the test's namespace is the router; a veth pair leads to a
// client namespace of the lab's own, from which real sockets connect.
// The router's mangle PREROUTING marks every SYN from the client with
// presetMark (bits outside markMask that verdicts must keep), queues it
// while no bit of markMask is set, and counts packets coming back with the
// convert or reject mark added to presetMark. A nat rule redirects
// converted SYNs to a second listener; a filter rule resets rejected ones.
const (
	testQueue   = 4242
	markMask    = 0xff00
	convertMark = 0x0100
	rejectMark  = 0x0200
	presetMark  = 0x70007
)

// family is one IP version of the lab.
type family struct {
	name         string
	iptables     string
	router       netip.Prefix // the router end of the veth
	client       netip.Prefix // the client end
	routerNet    string       // for net.Listen
	plain, redir *listener    // listener of the connections and target of the convert REDIRECT
}

type lab struct {
	veth     string // the router end
	clientNS int    // fd of the client namespace
	families []*family
}

var labSeq int

// newLab builds the lab and installs its rules; t.Cleanup removes them.
func newLab(t *testing.T) *lab {
	t.Helper()
	netnstest.RequireIsolatedRoot(t)
	netnstest.RequireTool(t, "iptables", "ip6tables")
	labSeq++
	l := &lab{veth: fmt.Sprintf("icptr%d", labSeq)}
	peer := fmt.Sprintf("icptc%d", labSeq)

	ns, err := newNetNS()
	if err != nil {
		t.Fatalf("create client namespace: %v", err)
	}
	l.clientNS = ns
	t.Cleanup(func() { unix.Close(ns) })

	la := netlink.NewLinkAttrs()
	la.Name = l.veth
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: peer}); err != nil {
		t.Fatalf("add veth %s: %v", l.veth, err)
	}
	t.Cleanup(func() {
		if link, err := netlink.LinkByName(l.veth); err == nil {
			netlink.LinkDel(link)
		}
	})
	peerLink, err := netlink.LinkByName(peer)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetNsFd(peerLink, ns); err != nil {
		t.Fatalf("move %s to the client namespace: %v", peer, err)
	}

	l.families = []*family{
		{name: "ipv4", iptables: "iptables", routerNet: "tcp4",
			router: netip.MustParsePrefix("10.77.0.1/24"), client: netip.MustParsePrefix("10.77.0.2/24")},
		{name: "ipv6", iptables: "ip6tables", routerNet: "tcp6",
			router: netip.MustParsePrefix("fd77::1/64"), client: netip.MustParsePrefix("fd77::2/64")},
	}
	if err := configureLink(l.veth, l.families, func(f *family) netip.Prefix { return f.router }); err != nil {
		t.Fatal(err)
	}
	if err := inNS(ns, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		return configureLink(peer, l.families, func(f *family) netip.Prefix { return f.client })
	}); err != nil {
		t.Fatalf("configure client namespace: %v", err)
	}

	for _, f := range l.families {
		f.plain = listen(t, f.routerNet, netip.AddrPortFrom(f.router.Addr(), 0))
		f.redir = listen(t, f.routerNet, netip.AddrPortFrom(f.router.Addr(), 0))
		// mangle returns a rule for the client's SYNs in mangle PREROUTING.
		mangle := func(args ...string) []string {
			return append([]string{"-t", "mangle", "-A", "PREROUTING", "-i", l.veth, "-p", "tcp", "--syn"}, args...)
		}
		rules := [][]string{
			mangle("-m", "mark", "--mark", "0", "-j", "MARK", "--set-mark", hex(presetMark)),
			mangle("-m", "mark", "--mark", "0/"+hex(markMask), "-m", "comment", "--comment", "icpt-queue",
				"-j", "NFQUEUE", "--queue-num", strconv.Itoa(testQueue), "--queue-bypass"),
			mangle("-m", "mark", "--mark", hex(presetMark|convertMark), "-m", "comment", "--comment", "icpt-convert", "-j", "ACCEPT"),
			mangle("-m", "mark", "--mark", hex(presetMark|rejectMark), "-m", "comment", "--comment", "icpt-reject", "-j", "ACCEPT"),
			{"-t", "nat", "-A", "PREROUTING", "-i", l.veth, "-p", "tcp", "-m", "mark", "--mark", hex(convertMark) + "/" + hex(markMask),
				"-j", "REDIRECT", "--to-ports", strconv.Itoa(int(f.redir.addr.Port()))},
			{"-t", "filter", "-A", "INPUT", "-i", l.veth, "-p", "tcp", "-m", "mark", "--mark", hex(rejectMark) + "/" + hex(markMask),
				"-j", "REJECT", "--reject-with", "tcp-reset"},
		}
		for _, r := range rules {
			run(t, f.iptables, r...)
			del := append([]string(nil), r...)
			del[2] = "-D"
			t.Cleanup(func() { exec.Command(f.iptables, del...).Run() })
		}
	}
	return l
}

func hex(v uint32) string { return fmt.Sprintf("%#x", v) }

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// counter returns the packet count of f's mangle PREROUTING rule with the
// given comment.
func (f *family) counter(t *testing.T, comment string) int {
	t.Helper()
	out := run(t, f.iptables, "-t", "mangle", "-L", "PREROUTING", "-v", "-x", "-n")
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "/* "+comment+" */") {
			n, err := strconv.Atoi(strings.Fields(line)[0])
			if err != nil {
				t.Fatalf("counter of %s in %q: %v", comment, line, err)
			}
			return n
		}
	}
	t.Fatalf("no rule %s in\n%s", comment, out)
	return 0
}

// configureLink gives link its address of each family and brings it up.
func configureLink(name string, fams []*family, prefix func(*family) netip.Prefix) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	for _, f := range fams {
		p := prefix(f)
		// NODAD: the address is usable at once, not after duplicate
		// address detection.
		a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}, Flags: unix.IFA_F_NODAD}
		if err := netlink.AddrAdd(link, a); err != nil {
			return fmt.Errorf("add %v to %s: %w", p, name, err)
		}
	}
	return netlink.LinkSetUp(link)
}

// newNetNS creates a network namespace and returns an fd for it.
func newNetNS() (int, error) {
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// Never unlocked: the thread ends with this goroutine, so no
		// other goroutine ever runs in the new namespace.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ch <- result{-1, err}
			return
		}
		fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		ch <- result{fd, err}
	}()
	r := <-ch
	return r.fd, r.err
}

// inNS runs f on a thread in the namespace ns. Sockets f creates belong to
// ns for good; goroutines f starts run elsewhere. The thread is never used
// again, but if it was the main thread, it lives on in ns (the runtime
// parks the main thread instead of ending it), and /proc/self/net then
// shows ns.
func inNS(ns int, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked, as in newNetNS
		if err := unix.Setns(ns, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter namespace: %w", err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// dial connects from the client namespace to dst, over Multipath TCP if
// mptcp is set, and returns the connection's local address.
func (l *lab) dial(dst netip.AddrPort, mptcp bool) (netip.AddrPort, error) {
	var local netip.AddrPort
	err := inNS(l.clientNS, func() error {
		d := net.Dialer{Timeout: 5 * time.Second}
		d.SetMultipathTCP(mptcp)
		// A literal address: Dial creates the socket on this goroutine.
		c, err := d.Dial("tcp", dst.String())
		if err != nil {
			return err
		}
		defer c.Close()
		local = c.LocalAddr().(*net.TCPAddr).AddrPort()
		return nil
	})
	return local, err
}

// sendFastOpen connects from the client namespace to dst with a SYN that
// carries data (TCP Fast Open without a cookie) and returns the local
// address.
func (l *lab) sendFastOpen(dst netip.AddrPort, data []byte) (netip.AddrPort, error) {
	var local netip.AddrPort
	err := inNS(l.clientNS, func() error {
		var sa unix.Sockaddr
		domain := unix.AF_INET
		if dst.Addr().Is4() {
			sa = &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
		} else {
			domain = unix.AF_INET6
			sa = &unix.SockaddrInet6{Port: int(dst.Port()), Addr: dst.Addr().As16()}
		}
		fd, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_FASTOPEN_NO_COOKIE, 1); err != nil {
			return fmt.Errorf("TCP_FASTOPEN_NO_COOKIE: %w", err)
		}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &unix.Timeval{Sec: 5}); err != nil {
			return err
		}
		// Blocking: returns once the handshake is done.
		if err := unix.Sendto(fd, data, unix.MSG_FASTOPEN, sa); err != nil {
			return fmt.Errorf("sendto MSG_FASTOPEN: %w", err)
		}
		got, err := unix.Getsockname(fd)
		if err != nil {
			return err
		}
		switch a := got.(type) {
		case *unix.SockaddrInet4:
			local = netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
		case *unix.SockaddrInet6:
			local = netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port))
		}
		return nil
	})
	return local, err
}

// listener accepts connections and reports their remote addresses.
type listener struct {
	addr  netip.AddrPort
	peers chan netip.AddrPort
}

func listen(t *testing.T, network string, addr netip.AddrPort) *listener {
	t.Helper()
	ln, err := net.Listen(network, addr.String())
	if err != nil {
		t.Fatal(err)
	}
	l := &listener{addr: ln.Addr().(*net.TCPAddr).AddrPort(), peers: make(chan netip.AddrPort, 16)}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			// Read to the client's close: closing with unread data (a
			// fast open SYN's) would reset the connection.
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				io.Copy(io.Discard, c)
			}()
			select {
			case l.peers <- c.RemoteAddr().(*net.TCPAddr).AddrPort():
			case <-done:
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(done)
		ln.Close()
		wg.Wait()
	})
	return l
}

// expectPeer fails t unless l accepted a connection from peer.
func (l *listener) expectPeer(t *testing.T, peer netip.AddrPort) {
	t.Helper()
	select {
	case got := <-l.peers:
		if got != peer {
			t.Errorf("listener %v accepted a connection from %v, want %v", l.addr, got, peer)
		}
	case <-time.After(2 * time.Second):
		t.Errorf("listener %v accepted no connection from %v", l.addr, peer)
	}
}

// expectNone fails t if l accepted a connection.
func (l *listener) expectNone(t *testing.T) {
	t.Helper()
	select {
	case got := <-l.peers:
		t.Errorf("listener %v accepted a connection from %v, want none", l.addr, got)
	default:
	}
}

// decider is the tests' Handler: it records each SYN and passes it to the
// current decide function.
type decider struct {
	mu     sync.Mutex
	decide intercept.Handler
	syns   chan intercept.SYN
}

func newDecider() *decider {
	return &decider{syns: make(chan intercept.SYN, 64)}
}

func (d *decider) set(h intercept.Handler) {
	d.mu.Lock()
	d.decide = h
	d.mu.Unlock()
}

func (d *decider) handle(s intercept.SYN, release func(intercept.Verdict)) {
	select {
	case d.syns <- s:
	default: // the test checks the count
	}
	d.mu.Lock()
	h := d.decide
	d.mu.Unlock()
	h(s, release)
}

// take returns the SYNs the Handler saw so far.
func (d *decider) take() []intercept.SYN {
	var out []intercept.SYN
	for {
		select {
		case s := <-d.syns:
			out = append(out, s)
		default:
			return out
		}
	}
}

func always(v intercept.Verdict) intercept.Handler {
	return func(_ intercept.SYN, release func(intercept.Verdict)) { release(v) }
}

// open binds the test queue with h; t.Cleanup closes it and fails t if it
// logged a warning or an error.
func open(t *testing.T, h intercept.Handler) *intercept.Interceptor {
	t.Helper()
	var log lockedBuffer
	i, err := intercept.Open(intercept.Config{
		Queue:       testQueue,
		ConvertMark: convertMark,
		RejectMark:  rejectMark,
		MarkMask:    markMask,
		Handler:     h,
		Logger:      slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := i.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if s := log.String(); s != "" {
			t.Errorf("the Interceptor logged:\n%s", s)
		}
	})
	return i
}

// lockedBuffer is a bytes.Buffer for concurrent writers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestIntegrationVerdicts(t *testing.T) {
	l := newLab(t)
	d := newDecider()
	i := open(t, d.handle)

	for _, f := range l.families {
		t.Run(f.name, func(t *testing.T) {
			t.Run("accept plain SYN", func(t *testing.T) {
				d.set(always(intercept.Accept))
				before := i.Stats()
				local, err := l.dial(f.plain.addr, false)
				if err != nil {
					t.Fatalf("dial %v: %v", f.plain.addr, err)
				}
				f.plain.expectPeer(t, local)
				want := []intercept.SYN{{Src: local, Dst: f.plain.addr, MPTCP: intercept.NativeNone}}
				if got := d.take(); !equalSYNs(got, want) {
					t.Errorf("Handler saw %+v, want %+v", got, want)
				}
				if got := i.Stats(); got.Accepted != before.Accepted+1 || got.Queued != before.Queued+1 {
					t.Errorf("Stats went from %+v to %+v, want one more queued and accepted", before, got)
				}
			})

			t.Run("MP_CAPABLE SYN", func(t *testing.T) {
				d.set(always(intercept.Accept))
				local, err := l.dial(f.plain.addr, true)
				if err != nil {
					t.Fatalf("dial %v over MPTCP: %v", f.plain.addr, err)
				}
				f.plain.expectPeer(t, local)
				want := []intercept.SYN{{Src: local, Dst: f.plain.addr, MPTCP: intercept.NativeCapable}}
				if got := d.take(); !equalSYNs(got, want) {
					t.Errorf("Handler saw %+v, want %+v", got, want)
				}
			})

			t.Run("fast open data beyond the copy range", func(t *testing.T) {
				d.set(always(intercept.Accept))
				local, err := l.sendFastOpen(f.plain.addr, make([]byte, 300))
				if err != nil {
					t.Fatalf("fast open to %v: %v", f.plain.addr, err)
				}
				f.plain.expectPeer(t, local)
				want := []intercept.SYN{{Src: local, Dst: f.plain.addr, DataLen: 300}}
				if got := d.take(); !equalSYNs(got, want) {
					t.Errorf("Handler saw %+v, want %+v", got, want)
				}
			})

			t.Run("convert keeps the other mark bits", func(t *testing.T) {
				d.set(always(intercept.Convert))
				before := f.counter(t, "icpt-convert")
				local, err := l.dial(f.plain.addr, false)
				if err != nil {
					t.Fatalf("dial %v: %v", f.plain.addr, err)
				}
				// The REDIRECT for the convert mark took the SYN.
				f.redir.expectPeer(t, local)
				f.plain.expectNone(t)
				if got := f.counter(t, "icpt-convert"); got != before+1 {
					t.Errorf("rule for mark %#x counted %d packets, want %d", presetMark|convertMark, got, before+1)
				}
				if got := len(d.take()); got != 1 {
					t.Errorf("Handler saw %d SYNs, want 1: the marked SYN must not be queued again", got)
				}
			})

			t.Run("reject answers with a reset", func(t *testing.T) {
				d.set(always(intercept.Reject))
				before := f.counter(t, "icpt-reject")
				_, err := l.dial(f.plain.addr, false)
				if !errors.Is(err, syscall.ECONNREFUSED) {
					t.Fatalf("dial %v: %v, want connection refused", f.plain.addr, err)
				}
				if got := f.counter(t, "icpt-reject"); got != before+1 {
					t.Errorf("rule for mark %#x counted %d packets, want %d", presetMark|rejectMark, got, before+1)
				}
				if got := len(d.take()); got != 1 {
					t.Errorf("Handler saw %d SYNs, want 1", got)
				}
				f.plain.expectNone(t)
			})

			t.Run("drop: the client retransmits", func(t *testing.T) {
				var mu sync.Mutex
				seen := map[netip.AddrPort]bool{}
				d.set(func(s intercept.SYN, release func(intercept.Verdict)) {
					mu.Lock()
					defer mu.Unlock()
					if seen[s.Src] {
						release(intercept.Accept)
						return
					}
					seen[s.Src] = true
					release(intercept.Drop)
				})
				start := time.Now()
				local, err := l.dial(f.plain.addr, false)
				if err != nil {
					t.Fatalf("dial %v: %v", f.plain.addr, err)
				}
				f.plain.expectPeer(t, local)
				syn := intercept.SYN{Src: local, Dst: f.plain.addr}
				if got := d.take(); !equalSYNs(got, []intercept.SYN{syn, syn}) {
					t.Errorf("Handler saw %+v, want the SYN and its retransmission", got)
				}
				// Linux retransmits a SYN after its initial RTO of 1 s.
				if el := time.Since(start); el < 900*time.Millisecond {
					t.Errorf("connected after %v, before a retransmission", el)
				}
			})

			t.Run("release later from another goroutine", func(t *testing.T) {
				d.set(func(s intercept.SYN, release func(intercept.Verdict)) {
					time.AfterFunc(200*time.Millisecond, func() { release(intercept.Accept) })
				})
				start := time.Now()
				local, err := l.dial(f.plain.addr, false)
				if err != nil {
					t.Fatalf("dial %v: %v", f.plain.addr, err)
				}
				if el := time.Since(start); el < 200*time.Millisecond || el > 900*time.Millisecond {
					t.Errorf("connected after %v, want just over 200ms", el)
				}
				f.plain.expectPeer(t, local)
				if got := len(d.take()); got != 1 {
					t.Errorf("Handler saw %d SYNs, want 1", got)
				}
			})
		})
	}
}

func equalSYNs(a, b []intercept.SYN) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if a[k] != b[k] {
			return false
		}
	}
	return true
}

// TestIntegrationBypass checks the rules' fail-open half: without a bound
// queue, before Open and after Close, SYNs pass through --queue-bypass.
func TestIntegrationBypass(t *testing.T) {
	l := newLab(t)
	for _, f := range l.families {
		t.Run(f.name, func(t *testing.T) {
			check := func(when string) {
				t.Helper()
				before := f.counter(t, "icpt-queue")
				start := time.Now()
				local, err := l.dial(f.plain.addr, false)
				if err != nil {
					t.Fatalf("%s: dial %v: %v", when, f.plain.addr, err)
				}
				if el := time.Since(start); el > 900*time.Millisecond {
					t.Errorf("%s: connected after %v, want no retransmission", when, el)
				}
				f.plain.expectPeer(t, local)
				if got := f.counter(t, "icpt-queue"); got != before+1 {
					t.Errorf("%s: queue rule counted %d packets, want %d", when, got, before+1)
				}
			}
			check("before Open")
			d := newDecider()
			d.set(always(intercept.Accept))
			i := open(t, d.handle)
			if err := i.Close(); err != nil {
				t.Fatal(err)
			}
			check("after Close")
			if got := d.take(); len(got) != 0 {
				t.Errorf("Handler saw %+v, want nothing", got)
			}
		})
	}
}

// TestIntegrationCloseAcceptsHeld holds a SYN, closes the Interceptor and
// expects the connection to complete without a retransmission.
func TestIntegrationCloseAcceptsHeld(t *testing.T) {
	l := newLab(t)
	for _, f := range l.families {
		t.Run(f.name, func(t *testing.T) {
			held := make(chan func(intercept.Verdict), 1)
			i := open(t, func(_ intercept.SYN, release func(intercept.Verdict)) { held <- release })
			type result struct {
				local netip.AddrPort
				err   error
				at    time.Duration
			}
			done := make(chan result, 1)
			start := time.Now()
			go func() {
				local, err := l.dial(f.plain.addr, false)
				done <- result{local, err, time.Since(start)}
			}()
			var release func(intercept.Verdict)
			select {
			case release = <-held:
			case <-time.After(2 * time.Second):
				t.Fatal("the Handler got no SYN")
			}
			if got := i.Stats().Held; got != 1 {
				t.Errorf("Stats().Held = %d, want 1", got)
			}
			if err := i.Close(); err != nil {
				t.Fatal(err)
			}
			r := <-done
			if r.err != nil {
				t.Fatalf("dial %v: %v", f.plain.addr, r.err)
			}
			if r.at > 900*time.Millisecond {
				t.Errorf("connected after %v: by a retransmission, not by Close", r.at)
			}
			f.plain.expectPeer(t, r.local)
			release(intercept.Reject) // late: ignored
			st := i.Stats()
			if st.ClosedAccepted != 1 || st.ReleasedLate != 1 || st.Rejected != 0 || st.Held != 0 {
				t.Errorf("Stats = %+v, want 1 closed-accepted, 1 released late, none rejected or held", st)
			}
		})
	}
}

// TestIntegrationOpenErrors checks that a queue bound twice is refused.
func TestIntegrationOpenErrors(t *testing.T) {
	netnstest.RequireIsolatedRoot(t)
	open(t, always(intercept.Accept))
	_, err := intercept.Open(intercept.Config{Queue: testQueue, ConvertMark: convertMark, RejectMark: rejectMark, MarkMask: markMask, Handler: always(intercept.Accept)})
	if !errors.Is(err, unix.EPERM) || !strings.Contains(err.Error(), "queue 4242") || !strings.Contains(err.Error(), "other socket has bound") {
		t.Errorf("second Open of queue %d: %v, want EPERM naming the queue and the cause", testQueue, err)
	}
}

// TestIntegrationOpenUnderLoad binds the queue again and again while the
// client sends SYNs as fast as it can. SYNs queued while Open configures
// the queue must neither make it fail nor stay held in the kernel.
func TestIntegrationOpenUnderLoad(t *testing.T) {
	l := newLab(t)
	f := l.families[0]
	var paused, stop atomic.Bool
	flooded := make(chan error, 1)
	// Port 9 has no listener: the router answers each SYN with a reset,
	// which ends the client socket at once.
	go func() { flooded <- l.flood(netip.AddrPortFrom(f.router.Addr(), 9), &paused, &stop) }()
	defer func() {
		stop.Store(true)
		if err := <-flooded; err != nil {
			t.Errorf("flood: %v", err)
		}
	}()
	var log lockedBuffer
	const n = 30
	for k := 0; k < n; k++ {
		// Let the flood run at full speed.
		for before := f.counter(t, "icpt-queue"); f.counter(t, "icpt-queue") < before+100; {
			time.Sleep(time.Millisecond)
		}
		i, err := intercept.Open(intercept.Config{Queue: testQueue, ConvertMark: convertMark, RejectMark: rejectMark, MarkMask: markMask,
			Handler: always(intercept.Accept), Logger: slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug}))})
		if err != nil {
			t.Fatalf("Open %d of %d: %v", k+1, n, err)
		}
		// Once a SYN has come through, every SYN is accepted at once:
		// without new ones, the kernel soon holds none.
		deadline := time.Now().Add(time.Second)
		for i.Stats().Queued == 0 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Microsecond)
		}
		paused.Store(true)
		for held := queueTotal(t, testQueue); held != 0; held = queueTotal(t, testQueue) {
			if time.Now().After(deadline) {
				t.Errorf("Open %d of %d: the kernel still holds %d packets after 1s", k+1, n, held)
				break
			}
			time.Sleep(time.Millisecond)
		}
		if err := i.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		paused.Store(false)
	}
	// The race this test is about did happen.
	if races := strings.Count(log.String(), "accepting packets queued while the queue was configured"); races == 0 {
		t.Errorf("no SYN arrived while Open configured the queue; the flood is too slow")
	} else {
		t.Logf("SYNs arrived while Open configured the queue %d times in %d", races, n)
	}
}

// queueTotal returns the number of packets the kernel holds for queue, from
// /proc/net/netfilter/nfnetlink_queue (net/netfilter/nfnetlink_queue.c,
// seq_show: queue, portid, total, ...).
func queueTotal(t *testing.T, queue uint16) int {
	t.Helper()
	// Of this thread's namespace: /proc/self is the main thread's, which
	// may have ended in the client namespace (see inNS).
	runtime.LockOSThread()
	b, err := os.ReadFile("/proc/thread-self/net/netfilter/nfnetlink_queue")
	runtime.UnlockOSThread()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == strconv.Itoa(int(queue)) {
			n, err := strconv.Atoi(f[2])
			if err != nil {
				t.Fatalf("parse %q: %v", line, err)
			}
			return n
		}
	}
	t.Fatalf("queue %d not bound:\n%s", queue, b)
	return 0
}

// flood starts non-blocking connects to dst from the client namespace, as
// fast as it can while paused is not set, until stop is set.
func (l *lab) flood(dst netip.AddrPort, paused, stop *atomic.Bool) error {
	return inNS(l.clientNS, func() error {
		sa := &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
		for !stop.Load() {
			if paused.Load() {
				time.Sleep(100 * time.Microsecond)
				continue
			}
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			err = unix.Connect(fd, sa)
			unix.Close(fd) // the SYN is on its way
			if err != nil && err != unix.EINPROGRESS {
				return err
			}
		}
		return nil
	})
}
