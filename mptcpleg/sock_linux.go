package mptcpleg

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/mcpagent/mcpagent/internal/sockopt"
)

// Kernel constants that golang.org/x/sys/unix v0.30.0 lacks.
const (
	// tcpIsMPTCP is TCP_IS_MPTCP, include/uapi/linux/tcp.h (Linux 5.16).
	tcpIsMPTCP = 43

	// Bits of net.ipv4.tcp_fastopen, include/net/tcp.h and
	// Documentation/networking/ip-sysctl.rst.
	tfoClientEnable        = 0x1   // TFO_CLIENT_ENABLE
	tfoServerEnable        = 0x2   // TFO_SERVER_ENABLE
	tfoServerCookieNotReqd = 0x200 // TFO_SERVER_COOKIE_NOT_REQD

	fastOpenSysctl = "/proc/sys/net/ipv4/tcp_fastopen"
)

// Dial opens a leg to cfg.Remote: a Multipath TCP socket (IPPROTO_MPTCP)
// whose SYN carries cfg.Header as TCP Fast Open data without a cookie
// (MSG_FASTOPEN, TCP_FASTOPEN_NO_COOKIE), so the downstream MCP learns the
// destination without an extra round trip; with cfg.HeaderAfterHandshake
// the Header is the first data after the handshake instead. It returns once the handshake
// has completed (SYN-ACK received) or ctx ends; then the error wraps
// ctx.Err() (context.DeadlineExceeded for a deadline) and the socket is
// closed. A peer that answers without MP_CAPABLE yields a Leg with MPTCP
// false, not an error. Dial never opens a plain TCP socket: without kernel
// MPTCP its error wraps ErrMPTCPDisabled, and if net.ipv4.tcp_fastopen lacks
// the client bit 0x1 it wraps ErrFastOpenDisabled.
//
// Dial is safe for concurrent use.
func Dial(ctx context.Context, cfg DialConfig) (*Leg, error) {
	leg, err := dial(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open leg to %s: %w", cfg.Remote, err)
	}
	return leg, nil
}

func dial(ctx context.Context, cfg DialConfig) (*Leg, error) {
	if !cfg.Remote.IsValid() {
		return nil, errors.New("invalid remote address")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	fd, err := mptcpSocket(cfg.Remote.Addr())
	if err != nil {
		return nil, err
	}
	// From here on f owns fd.
	f := os.NewFile(uintptr(fd), "mptcp-leg")
	defer f.Close()

	if cfg.Mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(cfg.Mark)); err != nil {
			return nil, os.NewSyscallError("setsockopt SO_MARK", err)
		}
	}
	if cc := cfg.CongestionControl; cc != "" {
		if err := unix.SetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_CONGESTION, cc); err != nil {
			return nil, fmt.Errorf("congestion control %q: %w", cc, os.NewSyscallError("setsockopt TCP_CONGESTION", err))
		}
	}
	if cfg.Local.IsValid() {
		if cfg.Local.Is4() != cfg.Remote.Addr().Is4() {
			return nil, fmt.Errorf("local address %s is not of the family of %s", cfg.Local, cfg.Remote)
		}
		// Kernels without the option for MPTCP get the bind alone.
		sockopt.SetBindAddressNoPort(fd)
		if err := unix.Bind(fd, sockaddr(netip.AddrPortFrom(cfg.Local, 0))); err != nil {
			return nil, fmt.Errorf("bind to %s: %w", cfg.Local, os.NewSyscallError("bind", err))
		}
	}
	var sent int
	if cfg.HeaderAfterHandshake {
		err = unix.Connect(fd, sockaddr(cfg.Remote))
	} else {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_FASTOPEN_NO_COOKIE, 1); err != nil {
			return nil, os.NewSyscallError("setsockopt TCP_FASTOPEN_NO_COOKIE", err)
		}
		// The kernel puts the data in the SYN and returns how much it
		// took. EINPROGRESS means it took none: an empty Header, or
		// active Fast Open paused by the kernel's blackhole detection
		// (net.ipv4.tcp_fastopen_blackhole_timeout_sec).
		sent, err = unix.SendmsgN(fd, cfg.Header, nil, sockaddr(cfg.Remote), unix.MSG_FASTOPEN)
	}
	switch {
	case err == unix.EINPROGRESS:
		sent = 0
	case err == unix.EOPNOTSUPP:
		return nil, fmt.Errorf("%w: sendto MSG_FASTOPEN: %w (net.ipv4.tcp_fastopen needs bit %#x)",
			ErrFastOpenDisabled, err, tfoClientEnable)
	case err != nil:
		return nil, os.NewSyscallError("connect", err)
	}
	if err := waitConnected(ctx, f); err != nil {
		return nil, err
	}
	// net.FileConn dups the descriptor; the deferred Close releases ours.
	// Wrapping only now that the socket is connected gives the conn its
	// RemoteAddr.
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("socket became a %T", c)
	}
	if sent < len(cfg.Header) {
		// The SYN did not carry all of it (see above, or a Header longer
		// than one segment); the rest follows the handshake.
		if _, err := tc.Write(cfg.Header[sent:]); err != nil {
			tc.Close()
			return nil, err
		}
	}
	mp, err := IsMPTCP(tc)
	if err != nil {
		tc.Close()
		return nil, err
	}
	return &Leg{Conn: tc, MPTCP: mp}, nil
}

// waitConnected waits, in the runtime poller, until the non-blocking
// connect on f has finished or ctx ends.
func waitConnected(ctx context.Context, f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	// A write deadline in the past wakes the waiting Write below.
	stop := context.AfterFunc(ctx, func() { f.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()
	var connErr error
	err = rc.Write(func(fd uintptr) bool {
		// As in the net package's connect: SO_ERROR holds the outcome;
		// getpeername tells a finished handshake from a spurious wakeup.
		soErr, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case err != nil:
			connErr = os.NewSyscallError("getsockopt SO_ERROR", err)
			return true
		case soErr != 0:
			connErr = os.NewSyscallError("connect", unix.Errno(soErr))
			return true
		}
		_, err = unix.Getpeername(int(fd))
		if err == unix.ENOTCONN {
			return false
		}
		if err != nil {
			connErr = os.NewSyscallError("getpeername", err)
		}
		return true
	})
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return err
	}
	return connErr
}

// TCP states of struct tcp_info's tcpi_state, include/net/tcp_states.h.
const (
	tcpStateSynRecv = 3 // TCP_SYN_RECV
	tcpStateClose   = 7 // TCP_CLOSE
)

// establishedRecheck bounds how long WaitEstablished trusts the kernel to
// wake it: it looks at the state again at least this often.
const establishedRecheck = 100 * time.Millisecond

// WaitEstablished waits until the handshake of c, accepted from a Listen
// listener, has completed, until deadline, or until ctx ends. Accept
// returns a leg whose SYN carried data (Fast Open without cookies) as soon
// as that SYN arrives, before the client's ACK has shown that it owns its
// source address: a forged SYN gets this far, but never further. At the
// deadline the error wraps os.ErrDeadlineExceeded; when ctx ends it wraps
// ctx.Err(); a leg reset meanwhile is an error too. For an MPTCP leg the
// kernel reports the state of the initial subflow (TCP_INFO).
func WaitEstablished(ctx context.Context, c *net.TCPConn, deadline time.Time) error {
	if err := waitEstablished(ctx, c, deadline); err != nil {
		return fmt.Errorf("wait for the leg's handshake: %w", err)
	}
	return nil
}

func waitEstablished(ctx context.Context, c *net.TCPConn, deadline time.Time) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var state uint8
	var infoErr error
	check := func(fd uintptr) bool {
		var info *unix.TCPInfo
		info, infoErr = unix.GetsockoptTCPInfo(int(fd), unix.SOL_TCP, unix.TCP_INFO)
		if infoErr == nil {
			state = info.State
		}
		// A socket in SYN_RECV is writable already; the state change
		// wakes the poller again.
		return infoErr != nil || state != tcpStateSynRecv
	}
	// Most legs are established when accepted: one look, no deadlines.
	if err := rc.Control(func(fd uintptr) { check(fd) }); err != nil {
		return err
	}
	if infoErr == nil && state != tcpStateSynRecv && state != tcpStateClose {
		return nil
	}
	defer c.SetWriteDeadline(time.Time{})
	// A write deadline in the past wakes the waiting Write below.
	stop := context.AfterFunc(ctx, func() { c.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()
	for {
		if ctx.Err() == nil {
			next := time.Now().Add(establishedRecheck)
			if deadline.Before(next) {
				next = deadline
			}
			c.SetWriteDeadline(next)
		}
		err := rc.Write(check)
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case err == nil && infoErr != nil:
			return os.NewSyscallError("getsockopt TCP_INFO", infoErr)
		case err == nil && state == tcpStateClose:
			return errors.New("reset during the handshake")
		case err == nil:
			return nil
		case !errors.Is(err, os.ErrDeadlineExceeded) || !time.Now().Before(deadline):
			return err
		}
	}
}

// Listen opens a Multipath TCP listener on addr (IPv4, or IPv6 only:
// IPV6_V6ONLY) with TCP Fast Open and a queue of qlen pending Fast Open
// requests (TCP_FASTOPEN). The Fast Open data of a leg's SYN, its header,
// is the first bytes read from the accepted connection. Plain TCP clients
// are accepted too; IsMPTCP tells them apart.
//
// Listen does not change sysctls. If net.ipv4.tcp_fastopen lacks the bits
// 0x2|0x200 for a server without cookies, it fails with the error of
// CheckFastOpenServer; without kernel MPTCP its error wraps
// ErrMPTCPDisabled.
func Listen(addr netip.AddrPort, qlen int) (*net.TCPListener, error) {
	ln, err := listen(addr, qlen)
	if err != nil {
		return nil, fmt.Errorf("listen for legs on %s: %w", addr, err)
	}
	return ln, nil
}

func listen(addr netip.AddrPort, qlen int) (*net.TCPListener, error) {
	if !addr.IsValid() {
		return nil, errors.New("invalid address")
	}
	if qlen < 1 {
		return nil, fmt.Errorf("fast open queue length %d, want at least 1", qlen)
	}
	if err := CheckFastOpenServer(); err != nil {
		return nil, err
	}
	fd, err := mptcpSocket(addr.Addr())
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "mptcp-listener")
	defer f.Close()

	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return nil, os.NewSyscallError("setsockopt SO_REUSEADDR", err)
	}
	if addr.Addr().Is6() {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return nil, os.NewSyscallError("setsockopt IPV6_V6ONLY", err)
		}
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_FASTOPEN, qlen); err != nil {
		return nil, os.NewSyscallError("setsockopt TCP_FASTOPEN", err)
	}
	if err := unix.Bind(fd, sockaddr(addr)); err != nil {
		return nil, os.NewSyscallError("bind", err)
	}
	if err := unix.Listen(fd, unix.SOMAXCONN); err != nil {
		return nil, os.NewSyscallError("listen", err)
	}
	l, err := net.FileListener(f)
	if err != nil {
		return nil, err
	}
	tl, ok := l.(*net.TCPListener)
	if !ok {
		l.Close()
		return nil, fmt.Errorf("socket became a %T", l)
	}
	return tl, nil
}

// CheckFastOpenServer reports, as an error wrapping ErrFastOpenDisabled that
// names the setting and the value needed, whether net.ipv4.tcp_fastopen of
// the caller's network namespace lacks the bits 0x2 (server enabled) and
// 0x200 (no cookie required) that a Listen needs to take a header from the
// SYN. Without them a leg still opens, but its header arrives a round trip
// later. It returns nil when both bits are set.
func CheckFastOpenServer() error {
	b, err := os.ReadFile(fastOpenSysctl)
	if err != nil {
		return fmt.Errorf("read net.ipv4.tcp_fastopen: %w", err)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 0, 32)
	if err != nil {
		return fmt.Errorf("read net.ipv4.tcp_fastopen: %w", err)
	}
	return checkFastOpenServer(uint32(v))
}

func checkFastOpenServer(v uint32) error {
	const need = tfoServerEnable | tfoServerCookieNotReqd
	if v&need == need {
		return nil
	}
	return fmt.Errorf("%w for servers: net.ipv4.tcp_fastopen is %#x, needs bits %#x (set it to %#x)",
		ErrFastOpenDisabled, v, need, v|need)
}

// IsMPTCP reports whether c runs Multipath TCP: false for a plain TCP
// socket and for an MPTCP socket that fell back to TCP. It asks the kernel
// (TCP_IS_MPTCP, Linux 5.16), which answers a fallen-back socket from its
// TCP subflow, hence false.
func IsMPTCP(c *net.TCPConn) (bool, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return false, fmt.Errorf("check for multipath TCP: %w", err)
	}
	var v int
	var optErr error
	if err := rc.Control(func(fd uintptr) {
		v, optErr = unix.GetsockoptInt(int(fd), unix.SOL_TCP, tcpIsMPTCP)
	}); err != nil {
		return false, fmt.Errorf("check for multipath TCP: %w", err)
	}
	if optErr != nil {
		return false, fmt.Errorf("check for multipath TCP: %w", os.NewSyscallError("getsockopt TCP_IS_MPTCP", optErr))
	}
	return v != 0, nil
}

// mptcpSocket opens a non-blocking MPTCP stream socket for a's family.
func mptcpSocket(a netip.Addr) (int, error) {
	family := unix.AF_INET6
	if a.Is4() {
		family = unix.AF_INET
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_MPTCP)
	switch err {
	case nil:
		return fd, nil
	case unix.EPROTONOSUPPORT, unix.ENOPROTOOPT, unix.EINVAL:
		// Kernels before 5.6 reject protocol 262 (EINVAL), kernels without
		// CONFIG_MPTCP(_IPV6) the protocol (EPROTONOSUPPORT), and
		// net.mptcp.enabled=0 the socket (ENOPROTOOPT, net/mptcp/protocol.c).
		return -1, fmt.Errorf("%w (needs Linux 5.6 or later with CONFIG_MPTCP and net.mptcp.enabled=1): %w",
			ErrMPTCPDisabled, os.NewSyscallError("socket", err))
	default:
		return -1, os.NewSyscallError("socket", err)
	}
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	}
	return &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
}

// solMPTCP, mptcpTCPInfo and mptcpSubflowAddrs are SOL_MPTCP
// (include/linux/socket.h), MPTCP_TCPINFO and MPTCP_SUBFLOW_ADDRS
// (include/uapi/linux/mptcp.h, Linux 5.16).
const (
	solMPTCP          = 284
	mptcpTCPInfo      = 2
	mptcpSubflowAddrs = 3
)

// Subflows returns the subflows of the MPTCP connection c that are not
// closed, at most MaxSubflows of them, with their addresses and TCP state.
func Subflows(c *net.TCPConn) ([]Subflow, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("subflows: %w", err)
	}
	// Addresses and states come in two requests; a subflow that comes or
	// goes in between shows as lists of different lengths: ask again.
	for range 3 {
		b, err := getSubflowData(rc, mptcpSubflowAddrs, subflowAddrLen)
		if err != nil {
			return nil, err
		}
		addrs, err := parseSubflowAddrs(b)
		if err != nil {
			return nil, err
		}
		if b, err = getSubflowData(rc, mptcpTCPInfo, tcpInfoPrefix); err != nil {
			return nil, err
		}
		states, err := parseSubflowStates(b)
		if err != nil {
			return nil, err
		}
		if sf, ok := joinSubflows(addrs, states); ok {
			return sf, nil
		}
	}
	return nil, errors.New("subflows: they kept changing while being read")
}

// getSubflowData runs one MPTCP getsockopt that returns a struct
// mptcp_subflow_data and an array of elem-byte elements.
func getSubflowData(rc syscall.RawConn, opt, elem int) ([]byte, error) {
	b := subflowDataRequest(elem)
	var optErr error
	if err := rc.Control(func(fd uintptr) {
		n := uint32(len(b))
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, solMPTCP, uintptr(opt),
			uintptr(unsafe.Pointer(&b[0])), uintptr(unsafe.Pointer(&n)), 0)
		if errno != 0 {
			optErr = os.NewSyscallError("getsockopt SOL_MPTCP "+strconv.Itoa(opt), errno)
		}
		b = b[:min(int(n), len(b))]
	}); err != nil {
		return nil, fmt.Errorf("subflows: %w", err)
	}
	if optErr != nil {
		return nil, fmt.Errorf("subflows: %w", optErr)
	}
	return b, nil
}
