package sockopt

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// BindAddressNoPort is a net.Dialer Control for a dial from a given
// address: it leaves the choice of the port to connect, which needs only
// the four-tuple to be unique (IP_BIND_ADDRESS_NO_PORT, Linux 4.2). Bind
// alone must avoid every port of the address in use, TIME_WAIT included,
// and gets slow, then fails, after thousands of connections from it.
func BindAddressNoPort(_, _ string, rc syscall.RawConn) error {
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	}); err != nil {
		return err
	}
	return os.NewSyscallError("setsockopt IP_BIND_ADDRESS_NO_PORT", serr)
}
