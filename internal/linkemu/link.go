package linkemu

import (
	"io"
	"log/slog"
	"sync/atomic"
)

// Config configures a Link.
type Config struct {
	// Queue is the NFQUEUE number the firewall sends the link
	// direction's packets to.
	Queue uint16
	// Params are the initial settings.
	Params Params
	// MaxQueueLen is the number of packets the kernel holds for the
	// queue; more are dropped, as a full link buffer would. 0 means
	// DefaultMaxQueueLen.
	MaxQueueLen uint32
	// Seed seeds the random loss and jitter; runs with the same seed and
	// the same packets make the same choices.
	Seed uint64
	// Logger receives errors; nil discards them.
	Logger *slog.Logger
}

// DefaultMaxQueueLen is the queue length used when Config.MaxQueueLen is
// 0: more than 1 s of full-size packets at 100 Mbit/s.
const DefaultMaxQueueLen = 10000

// Stats count a Link's packets since Open.
type Stats struct {
	Passed  uint64 // released after their delay
	Dropped uint64 // dropped for loss, while down, or for a full queue
	Errors  uint64 // verdicts the kernel refused
}

// Link is one emulated link direction bound to an NFQUEUE. Its methods are
// safe for concurrent use.
type Link struct {
	cfg    Config
	log    *slog.Logger
	params atomic.Pointer[Params]

	passed, dropped, errors atomic.Uint64

	q *nfLink // the OS side; nil until Open has bound the queue
}

// Set replaces the settings; packets that arrive from now on get them.
// Packets already held keep their release times.
func (l *Link) Set(p Params) { l.params.Store(&p) }

// Params returns the current settings.
func (l *Link) Params() Params { return *l.params.Load() }

// Stats returns the packet counts so far.
func (l *Link) Stats() Stats {
	return Stats{Passed: l.passed.Load(), Dropped: l.dropped.Load(), Errors: l.errors.Load()}
}

func newLink(cfg Config) *Link {
	if cfg.MaxQueueLen == 0 {
		cfg.MaxQueueLen = DefaultMaxQueueLen
	}
	l := &Link{cfg: cfg, log: cfg.Logger}
	if l.log == nil {
		l.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	l.Set(cfg.Params)
	return l
}
