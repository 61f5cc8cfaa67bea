//go:build !linux

package relay

import (
	"errors"
	"fmt"
	"net"
	"runtime"
)

// worker is the Linux worker; other systems have none.
type worker struct{}

func (r *Relay) start(int) error {
	return fmt.Errorf("%w on %s: needs Linux (epoll, splice)", errors.ErrUnsupported, runtime.GOOS)
}

func (r *Relay) stop() {}

func (r *Relay) add(a, b *net.TCPConn, _ func(Stats)) error {
	closeConns(a, b)
	return fmt.Errorf("relay: add: %w", net.ErrClosed)
}
