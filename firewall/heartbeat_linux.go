package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

// Heartbeat sends the heartbeats that keep the rules' queue open: one UDP
// datagram per address family to the loopback address at Rules.TProxyPort,
// marked with Rules.TProxyMark. No other local datagram is so marked: the
// agent's transparent sockets are TCP. (Routing by that mark delivers
// locally, as the loopback destination does anyway.) The rules drop it, recording that the family's agent is
// alive; SYNs of the family are queued only within Rules.AliveTimeout of
// the last heartbeat.
//
// A Heartbeat is not safe for concurrent use.
type Heartbeat struct {
	socks [2]heartbeatSocket
}

type heartbeatSocket struct {
	fd int
	to netip.AddrPort
}

// NewHeartbeat opens the sockets of r's heartbeats; setting their mark
// needs CAP_NET_ADMIN.
func NewHeartbeat(r Rules) (*Heartbeat, error) {
	h := &Heartbeat{socks: [2]heartbeatSocket{{fd: -1}, {fd: -1}}}
	for i, v6 := range []bool{false, true} {
		domain := unix.AF_INET
		if v6 {
			domain = unix.AF_INET6
		}
		fd, err := unix.Socket(domain, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			h.Close()
			return nil, fmt.Errorf("heartbeat socket: %w", os.NewSyscallError("socket", err))
		}
		h.socks[i] = heartbeatSocket{fd, netip.AddrPortFrom(tproxyAddr(v6), r.TProxyPort)}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(r.TProxyMark)); err != nil {
			h.Close()
			return nil, fmt.Errorf("heartbeat socket: %w", os.NewSyscallError("setsockopt SO_MARK", err))
		}
	}
	return h, nil
}

// Beat sends one heartbeat per family. The rules drop each one, which the
// kernel reports to the sender as EPERM: a heartbeat that goes through
// shows that the rules are gone, and Beat says so.
func (h *Heartbeat) Beat() error {
	var errs []error
	for _, s := range h.socks {
		a := s.to.Addr()
		var to unix.Sockaddr
		if a.Is4() {
			to = &unix.SockaddrInet4{Addr: a.As4(), Port: int(s.to.Port())}
		} else {
			to = &unix.SockaddrInet6{Addr: a.As16(), Port: int(s.to.Port())}
		}
		switch err := unix.Sendto(s.fd, nil, 0, to); err {
		case unix.EPERM:
		case nil:
			errs = append(errs, fmt.Errorf("heartbeat to %s passed the rules: they are no longer installed", s.to))
		default:
			errs = append(errs, fmt.Errorf("heartbeat to %s: %w", s.to, os.NewSyscallError("sendto", err)))
		}
	}
	return errors.Join(errs...)
}

// Close closes the sockets. The rules stop queueing SYNs AliveTimeout after
// the last heartbeat.
func (h *Heartbeat) Close() error {
	for i, s := range h.socks {
		if s.fd >= 0 {
			unix.Close(s.fd)
			h.socks[i].fd = -1
		}
	}
	return nil
}
