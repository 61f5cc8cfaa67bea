package mptcppm

import (
	"errors"
	"fmt"
	"math"
	"net"
	"sync"
	"sync/atomic"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"golang.org/x/net/bpf"
)

// EventConn receives the path manager's events (the mptcp_pm_events
// multicast group) for the network namespace it was opened in.
//
// Receive must not be called from more than one goroutine at a time.
// Close may be called at any time, also while Receive blocks: it unblocks
// Receive, which then returns an error wrapping net.ErrClosed.
type EventConn struct {
	c        *genetlink.Conn
	familyID uint16

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// ListenEvents opens an EventConn in the calling thread's network
// namespace. It needs CAP_NET_ADMIN there.
// The error wraps ErrNotSupported when the kernel has no MPTCP path
// manager.
//
// With types, only events of those types reach the EventConn: a socket
// filter drops the others in the kernel. The path manager sends several
// events for every connection, so a reader that wants a few rare ones
// should not wake up for each.
func ListenEvents(types ...EventType) (*EventConn, error) {
	c, err := dial()
	if err != nil {
		return nil, err
	}
	return newEventConn(c, types)
}

// eventFilter returns a classic BPF program that passes the messages whose
// generic netlink command is one of types. The kernel sends each event in
// a datagram of its own, so the command is the byte right after the
// netlink header.
func eventFilter(types []EventType) ([]bpf.RawInstruction, error) {
	if len(types) > 255-2 {
		return nil, fmt.Errorf("%d event types: too many for one filter", len(types))
	}
	const cmdOffset = 16 // sizeof(struct nlmsghdr)
	prog := []bpf.Instruction{bpf.LoadAbsolute{Off: cmdOffset, Size: 1}}
	for i, t := range types {
		// On a match, skip the remaining tests and the drop.
		prog = append(prog, bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(t), SkipTrue: uint8(len(types) - i)})
	}
	// The kernel keeps as many bytes as the filter returns: 0 drops the
	// message, MaxInt32 keeps all of it (and stays positive where a
	// filter's result is read as a 32-bit int).
	prog = append(prog, bpf.RetConstant{Val: 0}, bpf.RetConstant{Val: math.MaxInt32})
	return bpf.Assemble(prog)
}

// newEventConn joins c to the events group, filtered to types if any,
// and takes ownership of c, closing it on error.
func newEventConn(c *genetlink.Conn, types []EventType) (*EventConn, error) {
	f, err := lookupFamily(c)
	if err != nil {
		c.Close()
		return nil, err
	}
	if len(types) > 0 {
		// Only now: the filter would drop the family lookup's answer,
		// and before joining, so that no other event gets in.
		prog, err := eventFilter(types)
		if err == nil {
			err = c.SetBPF(prog)
		}
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("filter mptcp_pm events: %w", err)
		}
	}
	for _, g := range f.Groups {
		if g.Name != eventsGroup {
			continue
		}
		if err := c.JoinGroup(g.ID); err != nil {
			c.Close()
			return nil, fmt.Errorf("join multicast group %s: %w", eventsGroup, err)
		}
		return &EventConn{c: c, familyID: f.ID}, nil
	}
	c.Close()
	return nil, fmt.Errorf("generic netlink family %q has no group %q: %w", familyName, eventsGroup, ErrNotSupported)
}

// Receive blocks until the kernel sends events and returns them in order.
//
// If some messages do not decode, Receive returns the events that did with
// an error naming the others; the EventConn stays usable. If the socket's
// buffer overflowed, the error wraps syscall.ENOBUFS: events were lost,
// and the caller should resynchronise its view, then keep receiving.
func (ec *EventConn) Receive() ([]Event, error) {
	for {
		msgs, nmsgs, err := ec.c.Receive()
		if err != nil {
			if ec.closed.Load() {
				// The socket's own error says "use of closed file" or
				// EBADF; callers test for the documented one.
				err = net.ErrClosed
			}
			return nil, fmt.Errorf("receive mptcp_pm events: %w", err)
		}
		var (
			evs  []Event
			errs []error
		)
		for i, m := range msgs {
			if nmsgs[i].Header.Type != netlink.HeaderType(ec.familyID) {
				continue
			}
			ev, err := parseEvent(m)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			evs = append(evs, ev)
		}
		if len(evs) > 0 || len(errs) > 0 {
			return evs, errors.Join(errs...)
		}
	}
}

// Close closes the socket and unblocks a pending Receive. It is safe to
// call more than once; later calls return what the first returned.
func (ec *EventConn) Close() error {
	ec.closeOnce.Do(func() {
		ec.closed.Store(true)
		ec.closeErr = ec.c.Close()
	})
	return ec.closeErr
}
