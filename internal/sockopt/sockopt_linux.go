package sockopt

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// SetBindAddressNoPort makes a bind of fd to an address leave the choice of
// the port to connect (IP_BIND_ADDRESS_NO_PORT, Linux 4.2), which needs
// only the four-tuple to be unique. Bind alone must avoid every port of the
// address in use, TIME_WAIT included, and gets slow, then fails, after
// thousands of connections from that address.
func SetBindAddressNoPort(fd int) error {
	return os.NewSyscallError("setsockopt IP_BIND_ADDRESS_NO_PORT",
		unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1))
}

// BindAddressNoPort is a net.Dialer Control for a dial from a given
// address: SetBindAddressNoPort on its socket.
func BindAddressNoPort(_, _ string, rc syscall.RawConn) error {
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = SetBindAddressNoPort(int(fd)) }); err != nil {
		return err
	}
	return serr
}
