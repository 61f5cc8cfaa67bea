// Package accept paces a listener's accept loop through errors that pass,
// such as running out of file descriptors. It does not accept: the loops
// of the agent, its control socket and mcpgw do, and ask it how long to
// wait.
package accept

import (
	"errors"
	"net"
	"time"
)

// The waits between failed accepts double from minWait up to maxWait, as
// net/http's server does.
const (
	minWait = 5 * time.Millisecond
	maxWait = time.Second
)

// Backoff paces the retries of one accept loop. The zero value is ready.
// It is not safe for concurrent use.
type Backoff struct {
	wait time.Duration
}

// Failed takes the error of an accept and returns how long to wait before
// the next one, or false if the loop must end: the listener was closed, or
// the error is not the network's (a net.Error). An error such as EMFILE,
// ENFILE or ENOBUFS passes once connections close, and the connections
// waiting meanwhile stay in the listen queue.
func (b *Backoff) Failed(err error) (time.Duration, bool) {
	var ne net.Error
	if !errors.As(err, &ne) || errors.Is(err, net.ErrClosed) {
		return 0, false
	}
	b.wait = min(max(2*b.wait, minWait), maxWait)
	return b.wait, true
}

// Succeeded resets the wait after an accept that succeeded.
func (b *Backoff) Succeeded() { b.wait = 0 }

// Sleep waits d, or less if stop is closed meanwhile: a loop being stopped
// must not sit out its wait. It reports whether d passed.
func Sleep(d time.Duration, stop <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-stop:
		return false
	}
}
