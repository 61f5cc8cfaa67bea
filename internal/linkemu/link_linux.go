//go:build linux

package linkemu

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	nfqueue "github.com/florianl/go-nfqueue/v2"
	"golang.org/x/sys/unix"

	"github.com/mcpagent/mcpagent/internal/nfqsetup"
)

// rcvBufPerPacket is the socket receive buffer reserved per queue slot:
// netlink charges each metadata message's truesize, under 1 KiB.
const rcvBufPerPacket = 1024

// Open binds NFQUEUE cfg.Queue in metadata-only copy mode and starts
// emulating. It needs CAP_NET_ADMIN in the queue's network namespace and
// fails if another socket has bound the queue. Close releases it.
func Open(cfg Config) (*Link, error) {
	l := newLink(cfg)
	q := &nfLink{l: l, sched: newScheduler(cfg.Seed), held: make(chan held, l.cfg.MaxQueueLen), done: make(chan struct{})}
	var err error
	q.nf, err = nfqueue.Open(&nfqueue.Config{
		NfQueue:     cfg.Queue,
		MaxQueueLen: l.cfg.MaxQueueLen,
		Copymode:    nfqueue.NfQnlCopyMeta,
		// GSO: hold a GSO packet as one, as the link's sender made it.
		Flags:    nfqueue.NfQaCfgFlagGSO,
		AfFamily: unix.AF_UNSPEC,
		Logger:   nfLogger{q},
	})
	if err != nil {
		return nil, fmt.Errorf("open netfilter queue socket: %w", err)
	}
	if err := nfqsetup.Prepare(q.nf, int(l.cfg.MaxQueueLen)*rcvBufPerPacket); err != nil {
		q.nf.Close()
		return nil, fmt.Errorf("set up netfilter queue socket: %w", err)
	}
	var ctx context.Context
	ctx, q.cancel = context.WithCancel(context.Background())
	if err := q.nf.RegisterWithErrorFunc(ctx, q.hook, q.receiveError); err != nil {
		q.cancel()
		q.nf.Close()
		if errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("bind netfilter queue %d (needs CAP_NET_ADMIN and a queue no other socket has bound): %w", cfg.Queue, err)
		}
		return nil, fmt.Errorf("bind netfilter queue %d: %w", cfg.Queue, err)
	}
	q.wg.Add(1)
	go q.release()
	l.q = q
	if err := nfqsetup.Ready(q.nf); err != nil {
		l.Close()
		return nil, fmt.Errorf("netfilter queue %d: %w", cfg.Queue, err)
	}
	return l, nil
}

// Close unbinds the queue, releases every packet still held at once, and
// waits for its goroutines. It is idempotent and returns the first call's
// error.
func (l *Link) Close() error {
	if l.q == nil {
		return nil
	}
	l.q.closeOnce.Do(func() { l.q.closeErr = l.q.close() })
	return l.q.closeErr
}

// held is a packet waiting for its release time.
type held struct {
	id uint32
	at time.Time
}

// nfLink is the queue of a Link on Linux.
type nfLink struct {
	l      *Link
	nf     *nfqueue.Nfqueue
	cancel context.CancelFunc // stops the receive loop

	// Only the receive loop uses sched and started.
	sched   *scheduler
	started bool

	held chan held // in order of arrival, so of release time
	done chan struct{}
	wg   sync.WaitGroup // the release goroutine

	closing   atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// hook is the receive loop's callback for each queued packet.
func (q *nfLink) hook(a nfqueue.Attribute) int {
	if a.PacketID == nil {
		q.l.log.Error("queued packet without an id", "queue", q.l.cfg.Queue)
		return 0
	}
	id := *a.PacketID
	if !q.started {
		q.started = true
		if _, err := nfqsetup.AcceptBefore(q.nf, id); err != nil {
			q.l.errors.Add(1)
			q.l.log.Error("accept packets queued during setup", "queue", q.l.cfg.Queue, "err", err)
		}
	}
	at, drop := q.sched.admit(q.l.Params(), time.Now())
	if !drop {
		select {
		case q.held <- held{id: id, at: at}:
			return 0
		default: // more packets than the kernel's queue holds: cannot happen
		}
	}
	q.verdict(id, nfqueue.NfDrop)
	return 0
}

// release accepts each held packet at its release time, in order; once
// Close has begun, at once.
func (q *nfLink) release() {
	defer q.wg.Done()
	for {
		select {
		case h := <-q.held:
			on := q.wait(h.at)
			q.verdict(h.id, nfqueue.NfAccept)
			if !on {
				q.flush()
				return
			}
		case <-q.done:
			q.flush()
			return
		}
	}
}

// wait waits until at; it returns false if Close began first. It sleeps
// in nanosleep, not on a Go timer: the runtime's timers can fire up to a
// millisecond late, which would add that much to every delay.
func (q *nfLink) wait(at time.Time) bool {
	for {
		select {
		case <-q.done:
			return false
		default:
		}
		d := time.Until(at)
		if d <= 0 {
			return true
		}
		// Wake up now and then to notice Close.
		ts := unix.NsecToTimespec(int64(min(d, closeCheck)))
		unix.Nanosleep(&ts, nil) // EINTR: the loop sleeps again
	}
}

// closeCheck is how long wait sleeps at most before it looks at done.
const closeCheck = 10 * time.Millisecond

// flush accepts every packet still held.
func (q *nfLink) flush() {
	for {
		select {
		case h := <-q.held:
			q.verdict(h.id, nfqueue.NfAccept)
		default:
			return
		}
	}
}

func (q *nfLink) verdict(id uint32, v int) {
	if err := q.nf.SetVerdict(id, v); err != nil {
		if !q.closing.Load() {
			q.l.errors.Add(1)
			q.l.log.Error("verdict", "queue", q.l.cfg.Queue, "err", err)
		}
		return
	}
	if v == nfqueue.NfAccept {
		q.l.passed.Add(1)
	} else {
		q.l.dropped.Add(1)
	}
}

// receiveError keeps the receive loop running through read errors, and
// stops it when Close has begun.
func (q *nfLink) receiveError(err error) int {
	if q.closing.Load() {
		return 1
	}
	q.l.errors.Add(1)
	q.l.log.Warn("receive from netfilter queue", "queue", q.l.cfg.Queue, "err", err)
	return 0
}

// close stops the receive loop, releases the held packets and closes the
// socket.
func (q *nfLink) close() error {
	q.cancel()
	close(q.done)
	q.wg.Wait()
	q.closing.Store(true)
	return q.nf.Close()
}

// nfLogger passes go-nfqueue's messages to the Link's logger; its
// complaints while the queue closes go to the debug level.
type nfLogger struct{ q *nfLink }

func (n nfLogger) Debugf(format string, args ...interface{}) {
	n.q.l.log.Debug("nfqueue: "+strings.TrimSpace(fmt.Sprintf(format, args...)), "queue", n.q.l.cfg.Queue)
}

func (n nfLogger) Errorf(format string, args ...interface{}) {
	msg := "nfqueue: " + strings.TrimSpace(fmt.Sprintf(format, args...))
	if n.q.closing.Load() {
		n.q.l.log.Debug(msg, "queue", n.q.l.cfg.Queue)
		return
	}
	n.q.l.log.Error(msg, "queue", n.q.l.cfg.Queue)
}
