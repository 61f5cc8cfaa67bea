package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/mcpagent/mcpagent/config"
)

// preflight refuses to start, with a one-line reason, on a system that
// lacks what the agent needs.
func preflight(cfg *config.Config) error {
	if v, err := readSysctl("net/mptcp/enabled"); err != nil {
		return fmt.Errorf("this kernel has no Multipath TCP (CONFIG_MPTCP): %w", err)
	} else if v != 1 {
		return fmt.Errorf("multipath TCP is disabled: set net.mptcp.enabled=1")
	}
	if v, err := readSysctl("net/ipv4/tcp_fastopen"); err == nil && v&1 == 0 {
		return fmt.Errorf("TCP Fast Open is disabled for clients: net.ipv4.tcp_fastopen is %#x, it needs bit 0x1", v)
	}
	if cc := cfg.CongestionControl; cc != "" {
		if err := checkCongestionControl(cc); err != nil {
			return err
		}
	}
	for _, name := range cfg.LANInterfaces {
		if _, err := net.InterfaceByName(name); err != nil {
			return fmt.Errorf("lan interface %q: %w", name, err)
		}
	}
	for _, u := range cfg.Uplinks {
		if _, err := net.InterfaceByName(u.Interface); err != nil {
			return fmt.Errorf("uplink %s: interface %q: %w", u.Name, u.Interface, err)
		}
	}
	return nil
}

// checkCongestionControl reports whether sockets can use the congestion
// control cc: setting it on a scratch socket loads its module if needed.
func checkCongestionControl(cc string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return os.NewSyscallError("socket", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_CONGESTION, cc); err != nil {
		avail, _ := os.ReadFile("/proc/sys/net/ipv4/tcp_available_congestion_control")
		return fmt.Errorf("congestion control %q is not available (net.ipv4.tcp_available_congestion_control: %s): %w",
			cc, strings.TrimSpace(string(avail)), err)
	}
	return nil
}

func readSysctl(name string) (int, error) {
	b, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// listenTransparent opens the listener the TPROXY rule delivers released
// SYNs to. IP_TRANSPARENT lets it accept connections addressed to any
// destination; it is plain TCP on purpose (the LAN side is single-path).
func listenTransparent(addr netip.AddrPort) (*net.TCPListener, error) {
	network, level, opt := "tcp4", unix.SOL_IP, unix.IP_TRANSPARENT
	if addr.Addr().Is6() {
		network, level, opt = "tcp6", unix.SOL_IPV6, unix.IPV6_TRANSPARENT
	}
	lc := net.ListenConfig{
		KeepAlive: -1, // the relay sets it on each accepted connection
		Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), level, opt, 1) }); err != nil {
				return err
			}
			return serr
		},
	}
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), network, addr.String())
	if err != nil {
		return nil, err
	}
	return ln.(*net.TCPListener), nil
}

// linkCounters returns the bytes the interface received and sent, or zeros
// if it cannot be read (it may have gone).
func linkCounters(ifname string) (rx, tx uint64) {
	l, err := netlink.LinkByName(ifname)
	if err != nil || l.Attrs().Statistics == nil {
		return 0, 0
	}
	s := l.Attrs().Statistics
	return s.RxBytes, s.TxBytes
}

// lockRun takes the lock that a running agent holds for its whole run, a
// lock on the file beside the control socket (".lock"), which the kernel
// releases when the process ends however it ends. With giveUp nil it fails
// at once if another process holds it; else it waits until giveUp closes.
func lockRun(cfg *config.Config, giveUp <-chan struct{}) (unlock func(), err error) {
	path := cfg.ControlSocket + ".lock"
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if err != unix.EWOULDBLOCK || giveUp == nil {
			f.Close()
			if err == unix.EWOULDBLOCK {
				return nil, fmt.Errorf("another mcpagent is running: it holds %s", path)
			}
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-giveUp:
			f.Close()
			return nil, fmt.Errorf("mcpagent still running: it holds %s", path)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
