package relay

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Config configures a Relay. The zero value is usable.
type Config struct {
	// IdleTimeout closes a pair abortively when no byte has moved in either
	// direction for this long. Zero means no idle timeout. The check is
	// coarse: a pair is closed about IdleTimeout to 1.25 × IdleTimeout
	// after its last byte.
	IdleTimeout time.Duration

	// KeepAlive is the TCP keepalive idle time and probe interval set on
	// both sockets of each pair; after three unanswered probes the kernel
	// reports an error and the pair is reset. Zero means a default of 30 s;
	// negative turns keepalive off.
	KeepAlive time.Duration

	// Workers is the number of workers, each a goroutine with an epoll
	// instance of its own; a pair stays with one worker. Zero means
	// runtime.GOMAXPROCS(0).
	Workers int

	// Logger receives errors of the workers and, at debug level, one line
	// per finished pair. Nil discards everything.
	Logger *slog.Logger
}

// keepAliveProbes is the TCP_KEEPCNT set with Config.KeepAlive.
const keepAliveProbes = 3

// defaultKeepAlive is the keepalive used when Config.KeepAlive is zero.
const defaultKeepAlive = 30 * time.Second

// keepAlive returns the keepalive idle time and interval, or 0 for off.
func (c *Config) keepAlive() time.Duration {
	switch {
	case c.KeepAlive == 0:
		return defaultKeepAlive
	case c.KeepAlive < 0:
		return 0
	}
	return c.KeepAlive
}

func (c *Config) workers() int {
	if c.Workers == 0 {
		return runtime.GOMAXPROCS(0)
	}
	return c.Workers
}

func (c *Config) logger() *slog.Logger {
	if c.Logger == nil {
		return slog.New(discardHandler{})
	}
	return c.Logger
}

func (c *Config) validate() error {
	switch {
	case c.IdleTimeout < 0:
		return fmt.Errorf("negative idle timeout %v", c.IdleTimeout)
	case c.Workers < 0:
		return fmt.Errorf("negative worker count %d", c.Workers)
	}
	return nil
}

// sweepInterval returns how often workers look for idle pairs, or 0 when
// there is no idle timeout.
func (c *Config) sweepInterval() time.Duration {
	if c.IdleTimeout == 0 {
		return 0
	}
	return max(c.IdleTimeout/4, time.Millisecond)
}

// Stats tells how a pair ended.
type Stats struct {
	AtoB, BtoA int64 // bytes delivered from a to b and from b to a
	Reset      bool  // the pair ended with a reset or error (including Close)
	Idle       bool  // the pair ended by the idle timeout
}

// A Relay relays pairs of sockets. Its methods are safe for concurrent use.
// Create one with New; the zero value is not usable.
type Relay struct {
	cfg    Config
	log    *slog.Logger
	keep   time.Duration // keepalive idle time and interval; 0: off
	sweep  time.Duration // idle sweep interval; 0: no idle timeout
	epoch  time.Time     // origin of the workers' clock
	nextID atomic.Uint64 // last pair id handed out
	next   atomic.Uint32 // round-robin worker choice
	live   atomic.Int64  // pairs added and not yet closed

	workers   []*worker
	wg        sync.WaitGroup // the workers' goroutines
	closeOnce sync.Once
}

// New starts a Relay with its workers.
func New(cfg Config) (*Relay, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	r := &Relay{
		cfg:   cfg,
		log:   cfg.logger(),
		keep:  cfg.keepAlive(),
		sweep: cfg.sweepInterval(),
		epoch: time.Now(),
	}
	if err := r.start(cfg.workers()); err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	return r, nil
}

// Add takes ownership of a and b and relays them until both directions
// finish; done, if not nil, is then called once, from a worker goroutine,
// after both sockets are closed. done must not block and must not call
// Close. Add does not block.
//
// A reset or error on either socket, the idle timeout and Close end the
// pair abortively: both sockets are closed with SO_LINGER 0, which sends a
// RST (on an MPTCP socket, MP_FASTCLOSE).
//
// After Close, Add closes a and b and returns an error wrapping
// net.ErrClosed.
func (r *Relay) Add(a, b *net.TCPConn, done func(Stats)) error {
	if a == nil || b == nil {
		closeConns(a, b)
		return fmt.Errorf("relay: add: nil connection")
	}
	return r.add(a, b, done)
}

// Len returns the number of pairs currently relayed: added, and not yet
// closed.
func (r *Relay) Len() int { return int(r.live.Load()) }

// Close aborts all pairs (their done callbacks see Stats.Reset), stops the
// workers and waits for them. Close is idempotent; every call waits.
func (r *Relay) Close() error {
	r.closeOnce.Do(r.stop)
	r.wg.Wait()
	return nil
}

// closeConns closes the connections that are not nil.
func closeConns(cs ...*net.TCPConn) {
	for _, c := range cs {
		if c != nil {
			c.Close()
		}
	}
}

// discardHandler is a slog.Handler that drops everything.
type discardHandler struct{}

func (discardHandler) Enabled(context.Context, slog.Level) bool  { return false }
func (discardHandler) Handle(context.Context, slog.Record) error { return nil }
func (h discardHandler) WithAttrs([]slog.Attr) slog.Handler      { return h }
func (h discardHandler) WithGroup(string) slog.Handler           { return h }
