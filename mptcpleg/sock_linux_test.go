package mptcpleg

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mcpagent/mcpagent/internal/netnstest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const mptcpEnabledSysctl = "/proc/sys/net/mptcp/enabled"

func TestCheckFastOpenServerBits(t *testing.T) {
	tests := []struct {
		v    uint32
		want bool // true: accepted
	}{
		{v: 0x0}, {v: 0x1}, {v: 0x3}, {v: 0x201}, {v: 0x400},
		{v: 0x202, want: true}, {v: 0x203, want: true}, {v: 0x603, want: true},
	}
	for _, tt := range tests {
		err := checkFastOpenServer(tt.v)
		if (err == nil) != tt.want {
			t.Errorf("checkFastOpenServer(%#x) = %v, want accepted %t", tt.v, err, tt.want)
		}
		if err != nil && (!errors.Is(err, ErrFastOpenDisabled) || !strings.Contains(err.Error(), "net.ipv4.tcp_fastopen")) {
			t.Errorf("checkFastOpenServer(%#x) = %q, want ErrFastOpenDisabled naming the sysctl", tt.v, err)
		}
	}
}

// setSysctl writes v to the sysctl file p of the test namespace and
// restores the old value when t ends.
func setSysctl(t *testing.T, p, v string) {
	t.Helper()
	old, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
		t.Fatalf("write %s: %v", p, err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(p, old, 0o644); err != nil {
			t.Errorf("restore %s: %v", p, err)
		}
	})
}

// setupFastOpen requires the test namespace and enables cookie-less TCP
// Fast Open on both sides in it.
func setupFastOpen(t *testing.T) {
	t.Helper()
	netnstest.RequireIsolatedRoot(t)
	setSysctl(t, fastOpenSysctl, "0x203")
}

// addrPort returns the address a listener is bound to.
func addrPort(t *testing.T, a net.Addr) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

func mustHeader(t *testing.T, opts ...Option) []byte {
	t.Helper()
	h, err := AppendHeader(nil, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// exchange checks that data flows both ways over an established leg.
func exchange(t *testing.T, client, server *net.TCPConn) {
	t.Helper()
	for _, dir := range []struct {
		from, to *net.TCPConn
		msg      string
	}{
		{client, server, "upstream to downstream"},
		{server, client, "downstream to upstream"},
	} {
		if _, err := dir.from.Write([]byte(dir.msg)); err != nil {
			t.Fatalf("write %s: %v", dir.msg, err)
		}
		got := make([]byte, len(dir.msg))
		if _, err := io.ReadFull(dir.to, got); err != nil {
			t.Fatalf("read %s: %v", dir.msg, err)
		}
		if string(got) != dir.msg {
			t.Fatalf("read %q, want %q", got, dir.msg)
		}
	}
}

func TestIntegrationDialListen(t *testing.T) {
	setupFastOpen(t)
	tests := []struct {
		name   string
		listen netip.AddrPort
		opt    Option
	}{
		{
			name:   "IPv4",
			listen: netip.MustParseAddrPort("127.0.0.1:0"),
			opt:    Option{Protocol: ProtocolTCP, Addr: netip.MustParseAddr("192.0.2.1"), Port: 443},
		},
		{
			name:   "IPv6",
			listen: netip.MustParseAddrPort("[::1]:0"),
			opt:    Option{Protocol: ProtocolTCP, Addr: netip.MustParseAddr("2001:db8::1"), Port: 80},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := Listen(tt.listen, 16)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			remote := addrPort(t, ln.Addr())
			header := mustHeader(t, tt.opt)

			leg, err := Dial(context.Background(), DialConfig{Remote: remote, Header: header})
			if err != nil {
				t.Fatal(err)
			}
			defer leg.Conn.Close()
			if !leg.MPTCP {
				t.Error("Leg.MPTCP = false, want true")
			}
			if got := leg.Conn.RemoteAddr().String(); got != remote.String() {
				t.Errorf("RemoteAddr = %s, want %s", got, remote)
			}
			srv, err := ln.AcceptTCP()
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			if mp, err := IsMPTCP(srv); err != nil || !mp {
				t.Errorf("IsMPTCP(accepted) = %t, %v, want true", mp, err)
			}
			if mp, err := IsMPTCP(leg.Conn); err != nil || !mp {
				t.Errorf("IsMPTCP(dialed) = %t, %v, want true", mp, err)
			}

			// The header is the first read, alone: it came as the SYN's data.
			buf := make([]byte, 512)
			n, err := srv.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf[:n], header) {
				t.Fatalf("first read % x, want the header % x", buf[:n], header)
			}
			opts, hn, err := ParseHeader(buf[:n])
			if err != nil || hn != n || len(opts) != 1 || opts[0] != tt.opt {
				t.Errorf("ParseHeader of the first read = %+v, %d, %v, want %+v", opts, hn, err, tt.opt)
			}
			exchange(t, leg.Conn, srv)
		})
	}
}

// TestIntegrationDialLongHeader checks that a Header too long for one SYN
// still arrives whole: the kernel sends what fits in the SYN and Dial
// writes the rest after the handshake.
func TestIntegrationDialLongHeader(t *testing.T) {
	setupFastOpen(t)
	ln, err := Listen(netip.MustParseAddrPort("127.0.0.1:0"), 16)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// Larger than the 64 KiB MTU of lo, so larger than any SYN.
	header := bytes.Repeat([]byte("0123456789abcdef"), 16<<10)

	type result struct {
		got []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.AcceptTCP()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
			done <- result{err: err}
			return
		}
		got := make([]byte, len(header))
		_, err = io.ReadFull(c, got)
		done <- result{got, err}
	}()
	leg, err := Dial(context.Background(), DialConfig{Remote: addrPort(t, ln.Addr()), Header: header})
	if err != nil {
		t.Fatal(err)
	}
	defer leg.Conn.Close()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !bytes.Equal(r.got, header) {
		t.Fatal("the server read something else than the header")
	}
}

// TestIntegrationDialSYNCarriesHeader watches lo and checks that the leg's
// first SYN carries MP_CAPABLE and the header as its payload, and that the
// listener took that data in the SYN: the SYN-ACK acknowledges it.
func TestIntegrationDialSYNCarriesHeader(t *testing.T) {
	setupFastOpen(t)
	for _, listen := range []string{"127.0.0.1:0", "[::1]:0"} {
		t.Run(listen, func(t *testing.T) {
			capt := newCapture(t)
			ln, err := Listen(netip.MustParseAddrPort(listen), 16)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			header := mustHeader(t,
				Option{Protocol: ProtocolTCP, Addr: netip.MustParseAddr("2001:db8::7"), Port: 8443},
				Option{Source: true, Protocol: ProtocolTCP, Addr: netip.MustParseAddr("192.168.1.20"), Port: 51000})
			leg, err := Dial(context.Background(), DialConfig{Remote: addrPort(t, ln.Addr()), Header: header})
			if err != nil {
				t.Fatal(err)
			}
			defer leg.Conn.Close()
			local := addrPort(t, leg.Conn.LocalAddr())

			syn := capt.next(t, func(s segment) bool { return s.src == local })
			if syn.flags&(tcpSYN|tcpACK) != tcpSYN {
				t.Errorf("first segment from %s has flags %#x, want SYN", local, syn.flags)
			}
			if !syn.mpCapable() {
				t.Errorf("SYN options % x lack MP_CAPABLE", syn.opts)
			}
			if !bytes.Equal(syn.payload, header) {
				t.Errorf("SYN payload % x, want the header % x", syn.payload, header)
			}
			synAck := capt.next(t, func(s segment) bool { return s.dst == local })
			if synAck.flags&(tcpSYN|tcpACK) != tcpSYN|tcpACK {
				t.Errorf("first segment to %s has flags %#x, want SYN-ACK", local, synAck.flags)
			}
			if !synAck.mpCapable() {
				t.Errorf("SYN-ACK options % x lack MP_CAPABLE", synAck.opts)
			}
			if want := syn.seq + 1 + uint32(len(header)); synAck.ack != want {
				t.Errorf("SYN-ACK acknowledges %d, want %d (SYN data accepted)", synAck.ack, want)
			}
		})
	}
}

// TestIntegrationDialHeaderAfterHandshake checks the other placement: a
// SYN without payload, then the header as the first data segment, and the
// listener reads it first.
func TestIntegrationDialHeaderAfterHandshake(t *testing.T) {
	setupFastOpen(t)
	capt := newCapture(t)
	ln, err := Listen(netip.MustParseAddrPort("127.0.0.1:0"), 16)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	header := mustHeader(t, Option{Protocol: ProtocolTCP, Addr: netip.MustParseAddr("203.0.113.10"), Port: 80})
	leg, err := Dial(context.Background(), DialConfig{Remote: addrPort(t, ln.Addr()), Header: header, HeaderAfterHandshake: true})
	if err != nil {
		t.Fatal(err)
	}
	defer leg.Conn.Close()
	local := addrPort(t, leg.Conn.LocalAddr())
	syn := capt.next(t, func(s segment) bool { return s.src == local })
	if syn.flags&(tcpSYN|tcpACK) != tcpSYN || !syn.mpCapable() || len(syn.payload) != 0 {
		t.Errorf("SYN flags %#x, MP_CAPABLE %v, payload % x; want an MPTCP SYN without data", syn.flags, syn.mpCapable(), syn.payload)
	}
	data := capt.next(t, func(s segment) bool { return s.src == local && len(s.payload) > 0 })
	if !bytes.Equal(data.payload, header) {
		t.Errorf("first data % x, want the header % x", data.payload, header)
	}
	srv, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	got := make([]byte, len(header))
	if _, err := io.ReadFull(srv, got); err != nil || !bytes.Equal(got, header) {
		t.Fatalf("listener read % x, %v; want the header", got, err)
	}
	if !leg.MPTCP {
		t.Error("leg is not MPTCP")
	}
}

func TestIntegrationDialFallback(t *testing.T) {
	setupFastOpen(t)
	// A plain TCP server stands for a peer or middlebox without MPTCP: its
	// SYN-ACK has no MP_CAPABLE.
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	l, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := l.(*net.TCPListener)
	defer ln.Close()
	header := mustHeader(t, Option{Protocol: ProtocolTCP, Addr: netip.MustParseAddr("192.0.2.9"), Port: 25})

	leg, err := Dial(context.Background(), DialConfig{Remote: addrPort(t, ln.Addr()), Header: header})
	if err != nil {
		t.Fatal(err)
	}
	defer leg.Conn.Close()
	if leg.MPTCP {
		t.Error("Leg.MPTCP = true toward a plain TCP server, want false")
	}
	srv, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if mp, err := IsMPTCP(srv); err != nil || mp {
		t.Errorf("IsMPTCP(plain TCP server side) = %t, %v, want false", mp, err)
	}
	// The server did not take the SYN's data; the kernel sent it again
	// after the handshake.
	got := make([]byte, len(header))
	if _, err := io.ReadFull(srv, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, header) {
		t.Fatalf("server read % x, want the header % x", got, header)
	}
	exchange(t, leg.Conn, srv)
}

func TestIntegrationDialRefused(t *testing.T) {
	setupFastOpen(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	remote := addrPort(t, l.Addr())
	l.Close()

	before := openSockets(t)
	start := time.Now()
	leg, err := Dial(context.Background(), DialConfig{Remote: remote, Header: []byte{0x1e, 0x04, 0xe0, 0x06, 0x00}})
	if elapsed := time.Since(start); elapsed > time.Second {
		t.Errorf("Dial took %v for a refused connection", elapsed)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("Dial = %v, %v, want ECONNREFUSED", leg, err)
	}
	checkSockets(t, before)
}

// blackhole adds, inside the test namespace, a veth pair whose first end
// routes blackholeNet to a neighbour that does not exist: SYNs sent there
// vanish without an answer. It removes the pair when t ends.
func blackhole(t *testing.T) *netlink.Veth {
	t.Helper()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "mplegbh0"}, PeerName: "mplegbh1"}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	t.Cleanup(func() {
		if err := netlink.LinkDel(veth); err != nil {
			t.Errorf("delete veth: %v", err)
		}
	})
	peer, err := netlink.LinkByName(veth.PeerName)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := netlink.ParseAddr("198.51.100.1/24")
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []error{
		netlink.AddrAdd(veth, addr),
		netlink.LinkSetUp(veth),
		netlink.LinkSetUp(peer),
		netlink.NeighAdd(&netlink.Neigh{
			LinkIndex:    veth.Index,
			State:        netlink.NUD_PERMANENT,
			IP:           net.ParseIP("198.51.100.2"),
			HardwareAddr: net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02},
		}),
	} {
		if step != nil {
			t.Fatalf("set up blackhole: %v", step)
		}
	}
	return veth
}

var blackholeDst = netip.MustParseAddrPort("198.51.100.2:443")

func TestIntegrationDialTimeout(t *testing.T) {
	setupFastOpen(t)
	blackhole(t)
	header := []byte{0x1e, 0x04, 0xe0, 0x06, 0x00}

	t.Run("deadline", func(t *testing.T) {
		before := openSockets(t)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		leg, err := Dial(ctx, DialConfig{Remote: blackholeDst, Header: header})
		elapsed := time.Since(start)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Dial = %v, %v, want an error wrapping context.DeadlineExceeded", leg, err)
		}
		if elapsed < 300*time.Millisecond || elapsed > 450*time.Millisecond {
			t.Errorf("Dial returned after %v, want about 300ms", elapsed)
		}
		checkSockets(t, before)
	})
	t.Run("cancel", func(t *testing.T) {
		before := openSockets(t)
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(100*time.Millisecond, cancel)
		leg, err := Dial(ctx, DialConfig{Remote: blackholeDst, Header: header})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Dial = %v, %v, want an error wrapping context.Canceled", leg, err)
		}
		checkSockets(t, before)
	})
}

// TestIntegrationDialMark checks that Mark reaches the leg's packets: a
// policy rule for the mark sends them to an unreachable route, while
// unmarked packets follow the main table into the blackhole.
func TestIntegrationDialMark(t *testing.T) {
	setupFastOpen(t)
	blackhole(t)
	const mark, table = 0x4d, 77
	_, dst, err := net.ParseCIDR("198.51.100.0/24")
	if err != nil {
		t.Fatal(err)
	}
	route := &netlink.Route{Dst: dst, Type: unix.RTN_UNREACHABLE, Table: table}
	if err := netlink.RouteAdd(route); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netlink.RouteDel(route) })
	rule := netlink.NewRule()
	rule.Mark, rule.Table = mark, table
	if err := netlink.RuleAdd(rule); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netlink.RuleDel(rule) })

	header := []byte{0x1e, 0x04, 0xe0, 0x06, 0x00}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = Dial(ctx, DialConfig{Remote: blackholeDst, Header: header, Mark: mark})
	if !errors.Is(err, syscall.EHOSTUNREACH) {
		t.Errorf("Dial with mark %#x = %v, want EHOSTUNREACH from the marked table", mark, err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = Dial(ctx, DialConfig{Remote: blackholeDst, Header: header})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Dial without mark = %v, want a timeout in the blackhole", err)
	}
}

func TestIntegrationFastOpenSysctl(t *testing.T) {
	setupFastOpen(t)
	any4 := netip.MustParseAddrPort("127.0.0.1:0")
	for _, v := range []string{"1", "0x3", "0x201"} {
		t.Run("listen with "+v, func(t *testing.T) {
			setSysctl(t, fastOpenSysctl, v)
			if err := CheckFastOpenServer(); !errors.Is(err, ErrFastOpenDisabled) {
				t.Errorf("CheckFastOpenServer = %v, want ErrFastOpenDisabled", err)
			}
			ln, err := Listen(any4, 16)
			if err == nil {
				ln.Close()
			}
			if !errors.Is(err, ErrFastOpenDisabled) || !strings.Contains(err.Error(), "net.ipv4.tcp_fastopen") ||
				!strings.Contains(err.Error(), "0x202") {
				t.Errorf("Listen = %v, want ErrFastOpenDisabled naming net.ipv4.tcp_fastopen and bits 0x202", err)
			}
		})
	}
	t.Run("dial without the client bit", func(t *testing.T) {
		ln, err := Listen(any4, 16)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		setSysctl(t, fastOpenSysctl, "0x202")
		leg, err := Dial(context.Background(), DialConfig{Remote: addrPort(t, ln.Addr()), Header: []byte{0}})
		if !errors.Is(err, ErrFastOpenDisabled) || !strings.Contains(err.Error(), "net.ipv4.tcp_fastopen") {
			t.Errorf("Dial = %v, %v, want ErrFastOpenDisabled naming net.ipv4.tcp_fastopen", leg, err)
		}
	})
	if err := CheckFastOpenServer(); err != nil {
		t.Errorf("CheckFastOpenServer with 0x203 = %v", err)
	}
}

func TestIntegrationMPTCPDisabled(t *testing.T) {
	setupFastOpen(t)
	setSysctl(t, mptcpEnabledSysctl, "0")
	_, err := Dial(context.Background(), DialConfig{Remote: netip.MustParseAddrPort("127.0.0.1:9"), Header: []byte{0}})
	if !errors.Is(err, ErrMPTCPDisabled) || !strings.Contains(err.Error(), "net.mptcp.enabled=1") {
		t.Errorf("Dial = %v, want ErrMPTCPDisabled naming net.mptcp.enabled", err)
	}
	ln, err := Listen(netip.MustParseAddrPort("[::1]:0"), 16)
	if err == nil {
		ln.Close()
	}
	if !errors.Is(err, ErrMPTCPDisabled) {
		t.Errorf("Listen = %v, want ErrMPTCPDisabled", err)
	}
}

// openSockets lists the sockets among the process's descriptors.
func openSockets(t *testing.T) map[string]bool {
	t.Helper()
	fds, err := filepath.Glob("/proc/self/fd/*")
	if err != nil {
		t.Fatal(err)
	}
	socks := make(map[string]bool)
	for _, fd := range fds {
		if target, err := os.Readlink(fd); err == nil && strings.HasPrefix(target, "socket:") {
			socks[filepath.Base(fd)+" "+target] = true
		}
	}
	return socks
}

// checkSockets fails t if a socket is open that was not open before.
func checkSockets(t *testing.T, before map[string]bool) {
	t.Helper()
	for s := range openSockets(t) {
		if !before[s] {
			t.Errorf("socket left open: fd %s", s)
		}
	}
}

// TCP flags.
const (
	tcpSYN = 0x02
	tcpACK = 0x10
)

// segment is a TCP segment seen on lo.
type segment struct {
	src, dst      netip.AddrPort
	flags         byte
	seq, ack      uint32
	opts, payload []byte
}

// mpCapable reports whether the segment carries MP_CAPABLE (option kind
// 30, subtype 0).
func (s segment) mpCapable() bool {
	for o := s.opts; len(o) > 0; {
		switch o[0] {
		case 0: // EOL
			return false
		case 1: // NOP
			o = o[1:]
			continue
		}
		if len(o) < 2 || int(o[1]) < 2 || int(o[1]) > len(o) {
			return false
		}
		if o[0] == OptionKind && o[1] >= 3 && o[2]>>4 == 0 {
			return true
		}
		o = o[o[1]:]
	}
	return false
}

// capture is an AF_PACKET socket on lo.
type capture struct{ fd int }

func newCapture(t *testing.T) *capture {
	t.Helper()
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	proto := htons(unix.ETH_P_ALL)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: lo.Index}); err != nil {
		t.Fatal(err)
	}
	tv := unix.NsecToTimeval((2 * time.Second).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	return &capture{fd}
}

// next returns the first received TCP segment for which match is true.
func (c *capture) next(t *testing.T, match func(segment) bool) segment {
	t.Helper()
	buf := make([]byte, 1<<16)
	for {
		n, from, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			t.Fatalf("capture on lo: %v", err)
		}
		// lo shows each packet twice; keep the received copy.
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if s, ok := parseFrame(buf[:n]); ok && match(s) {
			return s
		}
	}
}

// parseFrame decodes a TCP segment in an Ethernet frame from lo.
func parseFrame(f []byte) (segment, bool) {
	if len(f) < 14 {
		return segment{}, false
	}
	var src, dst netip.Addr
	var tcp []byte
	p := f[14:]
	switch binary.BigEndian.Uint16(f[12:14]) {
	case unix.ETH_P_IP:
		if len(p) < 20 || p[9] != unix.IPPROTO_TCP {
			return segment{}, false
		}
		ihl, total := int(p[0]&0x0f)*4, int(binary.BigEndian.Uint16(p[2:4]))
		if total > len(p) || ihl > total {
			return segment{}, false
		}
		src, dst = netip.AddrFrom4([4]byte(p[12:16])), netip.AddrFrom4([4]byte(p[16:20]))
		tcp = p[ihl:total]
	case unix.ETH_P_IPV6:
		if len(p) < 40 || p[6] != unix.IPPROTO_TCP {
			return segment{}, false
		}
		end := 40 + int(binary.BigEndian.Uint16(p[4:6]))
		if end > len(p) {
			return segment{}, false
		}
		src, dst = netip.AddrFrom16([16]byte(p[8:24])), netip.AddrFrom16([16]byte(p[24:40]))
		tcp = p[40:end]
	default:
		return segment{}, false
	}
	if len(tcp) < 20 {
		return segment{}, false
	}
	off := int(tcp[12]>>4) * 4
	if off < 20 || off > len(tcp) {
		return segment{}, false
	}
	return segment{
		src:     netip.AddrPortFrom(src, binary.BigEndian.Uint16(tcp[0:2])),
		dst:     netip.AddrPortFrom(dst, binary.BigEndian.Uint16(tcp[2:4])),
		seq:     binary.BigEndian.Uint32(tcp[4:8]),
		ack:     binary.BigEndian.Uint32(tcp[8:12]),
		flags:   tcp[13],
		opts:    append([]byte(nil), tcp[20:off]...),
		payload: append([]byte(nil), tcp[off:]...),
	}, true
}

// htons converts v to network byte order as the AF_PACKET protocol
// argument wants it.
func htons(v uint16) uint16 {
	return binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, v))
}

// TestIntegrationDialLocalAndSubflows: a leg bound to a local address
// leaves from it, with the congestion control asked for, and
// Subflows reports its subflow.
func TestIntegrationDialLocalAndSubflows(t *testing.T) {
	setupFastOpen(t)
	ln, err := Listen(netip.MustParseAddrPort("127.0.0.1:0"), 16)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	remote := addrPort(t, ln.Addr())
	local := netip.MustParseAddr("127.0.0.2")
	leg, err := Dial(context.Background(), DialConfig{Remote: remote, Local: local, CongestionControl: "reno",
		Header: mustHeader(t, Option{Protocol: ProtocolTCP, Addr: netip.MustParseAddr("192.0.2.1"), Port: 80})})
	if err != nil {
		t.Fatal(err)
	}
	defer leg.Conn.Close()
	srv, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if got := addrPort(t, leg.Conn.LocalAddr()).Addr(); got != local {
		t.Errorf("leg left from %v, want %v", got, local)
	}
	rc, err := leg.Conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var cc string
	rc.Control(func(fd uintptr) { cc, err = unix.GetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION) })
	if err != nil || cc != "reno" {
		t.Errorf("congestion control %q, %v; want reno", cc, err)
	}
	subflows, err := Subflows(leg.Conn)
	if err != nil {
		t.Fatal(err)
	}
	want := []Subflow{{Local: addrPort(t, leg.Conn.LocalAddr()), Remote: remote, State: TCPEstablished}}
	if len(subflows) != 1 || subflows[0] != want[0] {
		t.Errorf("Subflows = %+v, want %+v", subflows, want)
	}

	if _, err := Dial(context.Background(), DialConfig{Remote: remote, Local: netip.MustParseAddr("::1")}); err == nil || !strings.Contains(err.Error(), "not of the family") {
		t.Errorf("an IPv6 local address for an IPv4 remote: err %v", err)
	}
}

// A leg from a local address takes a port that legs from that address to
// another destination use: the port is chosen at connect, for the whole
// four-tuple, not at bind. With two ports in the range, both held by legs
// to one listener, a leg to another listener still opens.
func TestIntegrationDialLocalSharesPorts(t *testing.T) {
	setupFastOpen(t)
	setSysctl(t, "/proc/sys/net/ipv4/ip_local_port_range", "40000 40001")
	local := netip.MustParseAddr("127.0.0.2")
	var remotes []netip.AddrPort
	for _, addr := range []string{"127.0.0.1:5001", "127.0.0.1:5002"} { // outside the range
		ln, err := Listen(netip.MustParseAddrPort(addr), 16)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		remotes = append(remotes, addrPort(t, ln.Addr()))
	}
	ports := map[uint16]bool{}
	for _, remote := range []netip.AddrPort{remotes[0], remotes[0], remotes[1]} {
		leg, err := Dial(context.Background(), DialConfig{Remote: remote, Local: local, HeaderAfterHandshake: true})
		if err != nil {
			t.Fatalf("leg to %v with ports %v in use: %v", remote, ports, err)
		}
		defer leg.Conn.Close()
		ports[addrPort(t, leg.Conn.LocalAddr()).Port()] = true
	}
	if len(ports) != 2 {
		t.Errorf("legs left from ports %v, want both of 40000 and 40001", ports)
	}
}
