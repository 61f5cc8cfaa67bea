package intercept

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Verdict is what becomes of a held SYN.
type Verdict uint8

const (
	Accept  Verdict = iota // let the SYN continue unchanged (plain routing)
	Convert                // set the convert mark and repeat the hook: the TPROXY rule takes it
	Reject                 // set the reject mark and repeat: a filter rule answers with a TCP reset
	Drop                   // drop this copy (e.g. a retransmitted SYN whose first copy is still held)
)

func (v Verdict) String() string {
	switch v {
	case Accept:
		return "accept"
	case Convert:
		return "convert"
	case Reject:
		return "reject"
	case Drop:
		return "drop"
	}
	return fmt.Sprintf("Verdict(%d)", uint8(v))
}

// Handler decides the fate of a SYN. It is called on the receive loop for
// each queued SYN that parsed, one at a time, and must not block: it must
// return before the next SYN can be read. It calls release exactly once,
// from any goroutine, before or after it returns; calls after the first
// are ignored and counted in Stats.ReleasedTwice. A verdict other than the
// four defined ones is taken as Accept.
type Handler func(s SYN, release func(Verdict))

// Config configures an Interceptor.
type Config struct {
	// Queue is the NFQUEUE number that the firewall's queue rule names.
	Queue uint16
	// ConvertMark and RejectMark are the mark values, within MarkMask,
	// that Convert and Reject give a packet. They must be non-zero and
	// differ: the queue rule matches marks with no bit of MarkMask set,
	// so a marked packet is not queued again when its hook repeats.
	ConvertMark uint32
	RejectMark  uint32
	// MarkMask selects the bits of the packet mark that verdicts change;
	// the packet keeps its other bits.
	MarkMask uint32
	// MaxQueueLen is the number of packets the kernel holds for the queue
	// before it accepts further packets unseen (fail-open); 0 means
	// DefaultMaxQueueLen.
	MaxQueueLen uint32
	// Handler decides each SYN; it must not be nil.
	Handler Handler
	// Logger receives errors and, at debug level, one line per packet;
	// nil discards them.
	Logger *slog.Logger
}

// DefaultMaxQueueLen is the queue length used when Config.MaxQueueLen is 0.
const DefaultMaxQueueLen = 4096

func (c *Config) check() error {
	switch {
	case c.Handler == nil:
		return errors.New("no handler")
	case c.MarkMask == 0:
		return errors.New("mark mask is 0")
	case c.ConvertMark == 0 || c.ConvertMark&^c.MarkMask != 0:
		return fmt.Errorf("convert mark %#x is zero or outside mark mask %#x", c.ConvertMark, c.MarkMask)
	case c.RejectMark == 0 || c.RejectMark&^c.MarkMask != 0:
		return fmt.Errorf("reject mark %#x is zero or outside mark mask %#x", c.RejectMark, c.MarkMask)
	case c.ConvertMark == c.RejectMark:
		return fmt.Errorf("convert and reject marks are both %#x", c.ConvertMark)
	}
	return nil
}

// Stats counts what an Interceptor did since Open.
type Stats struct {
	Queued      uint64 // packets read from the queue
	ParseErrors uint64 // packets that did not parse as a SYN: accepted at once, never shown to the Handler
	// Verdicts given by the Handler, by kind.
	Accepted, Converted, Rejected, Dropped uint64

	ClosedAccepted uint64 // packets Close accepted: held when it began, or queued while it ran
	Expired        uint64 // packets ExpireHeld accepted: the Handler held them too long
	ReleasedLate   uint64 // release calls after Close or ExpireHeld had accepted the packet
	ReleasedTwice  uint64 // release calls for a packet the Handler had already released (ignored)
	VerdictErrors  uint64 // verdicts that could not be sent to the kernel
	ReceiveErrors  uint64 // errors the receive loop logged and survived
	Held           int    // packets the Handler holds now
}

// queue is the kernel side of an Interceptor.
type queue interface {
	// verdict sends the verdict for packet id; mark is the packet's new
	// mark for Convert and Reject and is ignored otherwise.
	verdict(id uint32, v Verdict, mark uint32) error
	// close stops the receive loop, waits for it and unbinds the queue.
	close() error
}

// An Interceptor holds the SYNs queued to one NFQUEUE until its Handler
// releases them. Open returns one; the zero value is not usable. Its
// methods are safe for concurrent use.
type Interceptor struct {
	cfg Config
	log *slog.Logger
	q   queue // set before the receive loop starts

	queued, parseErrors                    atomic.Uint64
	accepted, converted, rejected, dropped atomic.Uint64
	closedAccepted, expired, late, twice   atomic.Uint64
	verdictErrors, receiveErrors           atomic.Uint64

	closeOnce sync.Once
	closeErr  error

	// mu orders verdicts against Close: verdicts for packets of receive
	// are sent with mu held, and Close accepts the held packets and sets
	// closed in one hold of mu, so no release sends a verdict after Close
	// has swept.
	mu     sync.Mutex
	closed bool             // Close has begun: packets are accepted at once
	held   map[uint32]*hold // by kernel packet id: shown to the Handler, not yet released

	now func() time.Time // the clock of holds; tests replace it
}

// hold is one packet shown to the Handler.
type hold struct {
	id    uint32    // the kernel's packet id
	mark  uint32    // the packet's mark when it was queued
	since time.Time // when it was shown to the Handler
	swept bool      // Close or ExpireHeld accepted it
}

func newInterceptor(cfg Config) (*Interceptor, error) {
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("intercept config: %w", err)
	}
	if cfg.MaxQueueLen == 0 {
		cfg.MaxQueueLen = DefaultMaxQueueLen
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Interceptor{cfg: cfg, log: log, held: make(map[uint32]*hold), now: time.Now}, nil
}

// receive handles packet id, queued with the given mark; pkt is its
// captured bytes. It runs on the receive loop.
func (i *Interceptor) receive(id, mark uint32, pkt []byte) {
	i.queued.Add(1)
	s, err := ParseSYN(pkt)
	i.mu.Lock()
	switch {
	case err != nil:
		i.parseErrors.Add(1)
		i.log.Debug("accepting a packet that is not a syn", "queue", i.cfg.Queue, "id", id, "err", err)
	case i.closed:
		i.closedAccepted.Add(1)
	default:
		h := &hold{id: id, mark: mark, since: i.now()}
		i.held[id] = h
		i.mu.Unlock()
		i.log.Debug("syn", "queue", i.cfg.Queue, "id", id, "src", s.Src, "dst", s.Dst, "mptcp", s.MPTCP, "data", s.DataLen)
		i.cfg.Handler(s, func(v Verdict) { i.release(h, v) })
		return
	}
	i.verdictLocked(id, Accept, 0)
	i.mu.Unlock()
}

// release gives h the Handler's verdict v.
func (i *Interceptor) release(h *hold, v Verdict) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.held[h.id] != h {
		if h.swept {
			i.late.Add(1)
		} else {
			i.twice.Add(1)
			i.log.Warn("syn released twice", "queue", i.cfg.Queue, "id", h.id, "verdict", v)
		}
		return
	}
	delete(i.held, h.id)
	switch v {
	case Accept:
		i.accepted.Add(1)
	case Convert:
		i.converted.Add(1)
	case Reject:
		i.rejected.Add(1)
	case Drop:
		i.dropped.Add(1)
	default:
		i.log.Error("invalid verdict, accepting", "queue", i.cfg.Queue, "id", h.id, "verdict", v)
		i.accepted.Add(1)
		v = Accept
	}
	i.verdictLocked(h.id, v, h.mark)
}

// verdictLocked sends verdict v for packet id, which was queued with mark.
// i.mu must be held.
//
// A packet whose verdict never reaches the kernel stays queued, holding one
// of the queue's slots until the queue is unbound; with enough of them the
// queue fills and every SYN bypasses the agent. So a failed verdict is sent
// once more, and if that fails too the packet is accepted as it came.
func (i *Interceptor) verdictLocked(id uint32, v Verdict, mark uint32) {
	queued := mark
	switch v {
	case Convert:
		mark = mark&^i.cfg.MarkMask | i.cfg.ConvertMark
	case Reject:
		mark = mark&^i.cfg.MarkMask | i.cfg.RejectMark
	}
	attempts := []struct {
		v    Verdict
		mark uint32
	}{{v, mark}, {v, mark}, {Accept, queued}}
	for n, a := range attempts {
		err := i.q.verdict(id, a.v, a.mark)
		if err == nil {
			if n > 0 {
				i.log.Info("verdict sent", "queue", i.cfg.Queue, "id", id, "verdict", a.v, "attempt", n+1)
			}
			return
		}
		i.verdictErrors.Add(1)
		i.log.Error("send verdict", "queue", i.cfg.Queue, "id", id, "verdict", a.v, "attempt", n+1, "err", err)
	}
}

// Close accepts every packet the Handler still holds, then unbinds the
// queue and waits for the receive loop to end. Packets queued while Close
// runs are accepted without the Handler; the few the kernel queues after
// the loop has stopped are dropped by the kernel when the queue is
// unbound, and their senders retransmit them into the queue-bypass rule.
// Release calls after Close are counted and otherwise ignored. Close is
// idempotent: later calls wait for the first and return its result.
func (i *Interceptor) Close() error {
	i.closeOnce.Do(func() {
		i.mu.Lock()
		i.closed = true
		for id, h := range i.held {
			h.swept = true
			delete(i.held, id)
			i.closedAccepted.Add(1)
			i.verdictLocked(id, Accept, 0)
		}
		i.mu.Unlock()
		if err := i.q.close(); err != nil {
			i.closeErr = fmt.Errorf("close queue %d: %w", i.cfg.Queue, err)
		}
	})
	return i.closeErr
}

// ExpireHeld accepts every packet the Handler has held for longer than
// maxAge, unchanged, and returns how many it accepted: a Handler that fails
// to release a SYN, through a bug or a wedged goroutine, must not hold its
// connection up for good, nor fill the queue. A release of such a packet
// later is counted in Stats.ReleasedLate and sends nothing. It scans every
// held packet, so it is meant for a periodic sweep, not for each packet.
func (i *Interceptor) ExpireHeld(maxAge time.Duration) int {
	i.mu.Lock()
	defer i.mu.Unlock()
	oldest := i.now().Add(-maxAge)
	n := 0
	for id, h := range i.held {
		if !h.since.Before(oldest) {
			continue
		}
		h.swept = true
		delete(i.held, id)
		i.expired.Add(1)
		i.verdictLocked(id, Accept, 0)
		n++
	}
	return n
}

// Stats returns the counters. It may be called at any time, also after
// Close.
func (i *Interceptor) Stats() Stats {
	i.mu.Lock()
	held := len(i.held)
	i.mu.Unlock()
	return Stats{
		Queued:         i.queued.Load(),
		ParseErrors:    i.parseErrors.Load(),
		Accepted:       i.accepted.Load(),
		Converted:      i.converted.Load(),
		Rejected:       i.rejected.Load(),
		Dropped:        i.dropped.Load(),
		ClosedAccepted: i.closedAccepted.Load(),
		Expired:        i.expired.Load(),
		ReleasedLate:   i.late.Load(),
		ReleasedTwice:  i.twice.Load(),
		VerdictErrors:  i.verdictErrors.Load(),
		ReceiveErrors:  i.receiveErrors.Load(),
		Held:           held,
	}
}
