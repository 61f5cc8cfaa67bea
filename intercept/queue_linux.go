//go:build linux

package intercept

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	nfqueue "github.com/florianl/go-nfqueue/v2"
	"golang.org/x/sys/unix"

	"github.com/mcpagent/mcpagent/internal/nfqsetup"
)

const (
	// copyRange is how much of each packet the kernel copies to us: the
	// longest IPv4 header (60 bytes; IPv6's is 40) plus the longest TCP
	// header (60) plus the longest MP_CONVERT header in the SYN data (45,
	// which an on-path MCP classifies). ParseSYN needs nothing beyond.
	copyRange = 60 + 60 + 45
	// rcvBufPerPacket is the socket receive buffer reserved per queue
	// slot. A packet message is under 300 bytes, but netlink charges the
	// buffer with each message's truesize, about 1 KiB here.
	rcvBufPerPacket = 2048
)

// Open binds NFQUEUE cfg.Queue and starts the receive loop that hands its
// SYNs to cfg.Handler. It needs CAP_NET_ADMIN in the network namespace of
// the queue. It fails if another socket has bound the queue.
//
// The queue is bound in copy-packet mode with a copy range of 165 bytes,
// with the kernel flags FAIL_OPEN (a full queue or receive buffer accepts
// packets instead of dropping them) and GSO, and with cfg.MaxQueueLen
// slots. SYNs that the kernel queues while Open configures the queue are
// accepted without the Handler when the next SYN arrives.
func Open(cfg Config) (*Interceptor, error) {
	i, err := newInterceptor(cfg)
	if err != nil {
		return nil, err
	}
	q := &nfQueue{i: i}
	q.nf, err = nfqueue.Open(&nfqueue.Config{
		NfQueue:      cfg.Queue,
		MaxQueueLen:  i.cfg.MaxQueueLen,
		MaxPacketLen: copyRange,
		Copymode:     nfqueue.NfQnlCopyPacket,
		Flags:        nfqueue.NfQaCfgFlagFailOpen | nfqueue.NfQaCfgFlagGSO,
		AfFamily:     unix.AF_UNSPEC,
		Logger:       nfLogger{q},
	})
	if err != nil {
		return nil, fmt.Errorf("open netfilter queue socket: %w", err)
	}
	if err := q.setup(); err != nil {
		q.nf.Close()
		return nil, fmt.Errorf("set up netfilter queue socket: %w", err)
	}
	var ctx context.Context
	ctx, q.cancel = context.WithCancel(context.Background())
	i.q = q
	if err := q.nf.RegisterWithErrorFunc(ctx, q.hook, q.receiveError); err != nil {
		q.cancel()
		q.nf.Close()
		if errors.Is(err, unix.EPERM) {
			// nfnetlink answers EPERM both to a caller without the
			// capability and for a queue that another socket has bound.
			return nil, fmt.Errorf("bind netfilter queue %d (needs CAP_NET_ADMIN and a queue no other socket has bound): %w", cfg.Queue, err)
		}
		return nil, fmt.Errorf("bind netfilter queue %d: %w", cfg.Queue, err)
	}
	if err := nfqsetup.Ready(q.nf); err != nil {
		q.close()
		return nil, fmt.Errorf("netfilter queue %d: %w", cfg.Queue, err)
	}
	return i, nil
}

// nfQueue is the queue of an Interceptor on Linux.
type nfQueue struct {
	i       *Interceptor
	nf      *nfqueue.Nfqueue
	cancel  context.CancelFunc // stops the receive loop
	closing atomic.Bool
	started bool // the receive loop has seen a packet; only the loop uses it
}

// setup prepares the socket before the queue is bound (package
// nfqsetup): a receive buffer for a full queue, no ENOBUFS reports (with
// FAIL_OPEN, a packet that did not fit the buffer has already been
// accepted, so there is nothing to recover), and the socket filter that
// keeps packet messages out of go-nfqueue's setup; hook accepts the
// packets it held back.
func (q *nfQueue) setup() error {
	return nfqsetup.Prepare(q.nf, int(q.i.cfg.MaxQueueLen)*rcvBufPerPacket)
}

// hook is the receive loop's callback for each queued packet.
func (q *nfQueue) hook(a nfqueue.Attribute) int {
	if a.PacketID == nil {
		q.i.log.Error("queued packet without an id", "queue", q.i.cfg.Queue)
		return 0
	}
	id := *a.PacketID
	if !q.started {
		q.started = true
		q.acceptFiltered(id)
	}
	var mark uint32
	if a.Mark != nil { // the kernel sends the mark only when it is not 0
		mark = *a.Mark
	}
	var pkt []byte
	if a.Payload != nil {
		pkt = *a.Payload
	}
	q.i.receive(id, mark, pkt)
	return 0
}

// acceptFiltered accepts the packets queued before first, the id of the
// first packet message the receive loop read: the filter of setup dropped
// their messages.
func (q *nfQueue) acceptFiltered(first uint32) {
	n, err := nfqsetup.AcceptBefore(q.nf, first)
	if err != nil {
		q.i.verdictErrors.Add(1)
		q.i.log.Error("accept packets queued while the queue was configured", "queue", q.i.cfg.Queue, "err", err)
		return
	}
	if n > 0 {
		q.i.log.Debug("accepting packets queued while the queue was configured", "queue", q.i.cfg.Queue, "count", n)
	}
}

// receiveError keeps the receive loop running through read errors, and
// stops it when Close has begun.
func (q *nfQueue) receiveError(err error) int {
	if q.closing.Load() {
		return 1
	}
	q.i.receiveErrors.Add(1)
	q.i.log.Warn("receive from netfilter queue", "queue", q.i.cfg.Queue, "err", err)
	return 0
}

func (q *nfQueue) verdict(id uint32, v Verdict, mark uint32) error {
	switch v {
	case Convert, Reject:
		// NF_REPEAT runs the packet through the hook again, now with a
		// mark that the queue rule skips and the verdict's rule takes.
		return q.nf.SetVerdictWithOption(id, nfqueue.NfRepeat, nfqueue.WithMark(mark))
	case Drop:
		return q.nf.SetVerdict(id, nfqueue.NfDrop)
	}
	return q.nf.SetVerdict(id, nfqueue.NfAccept)
}

func (q *nfQueue) close() error {
	q.closing.Store(true)
	q.cancel()
	return q.nf.Close()
}

// nfLogger passes go-nfqueue's messages to the Interceptor's logger. Its
// complaints while the queue closes (an unbind on a closed socket) are
// expected and go to the debug level.
type nfLogger struct{ q *nfQueue }

func (l nfLogger) Debugf(format string, args ...interface{}) {
	l.q.i.log.Debug("nfqueue: "+strings.TrimSpace(fmt.Sprintf(format, args...)), "queue", l.q.i.cfg.Queue)
}

func (l nfLogger) Errorf(format string, args ...interface{}) {
	msg := "nfqueue: " + strings.TrimSpace(fmt.Sprintf(format, args...))
	if l.q.closing.Load() {
		l.q.i.log.Debug(msg, "queue", l.q.i.cfg.Queue)
		return
	}
	l.q.i.log.Error(msg, "queue", l.q.i.cfg.Queue)
}
