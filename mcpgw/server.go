package mcpgw

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcpagent/mcpagent/internal/accept"
	"github.com/mcpagent/mcpagent/mptcpleg"
	"github.com/mcpagent/mcpagent/relay"
)

// Defaults for the Config fields left zero.
const (
	DefaultMaxConnsPerClient = 256
	// DefaultMaxSubflows lets an upstream MCP with two uplinks join its
	// second subflow, with one spare for a subflow re-created after an
	// uplink's address changed while the old one is still closing.
	DefaultMaxSubflows   = 2
	DefaultHeaderTimeout = 5 * time.Second
	DefaultDialTimeout   = 10 * time.Second
)

// MaxSubflows is the largest subflow limit the kernel accepts
// (MPTCP_PM_ADDR_MAX in net/mptcp/pm_netlink.c).
const MaxSubflows = 8

const (
	// fastOpenQueueLen bounds the Fast Open requests that wait for Accept.
	fastOpenQueueLen = 256
	// ownAddrsMaxAge bounds how stale the snapshot of the host's own
	// addresses may be when a destination is checked.
	ownAddrsMaxAge = time.Second
)

// Config configures a Server. Zero durations and limits mean the defaults.
type Config struct {
	// Listen are the addresses to accept legs on; at least one unless
	// OnPath is set. Port 0 picks a free port (see Addrs). An IPv6 address
	// listens for IPv6 only; an IPv4-mapped one is taken as the IPv4
	// address.
	Listen []netip.AddrPort
	// OnPath, if not nil, also makes the Server an on-path MCP (see
	// OnPath); that needs root.
	OnPath *OnPath
	// PreserveSource are the prefixes of source addresses that a leg's
	// source (D=1) MP_CONVERT option may ask for: the connection to the
	// destination is then made from that address (IP_TRANSPARENT, needs
	// CAP_NET_ADMIN), and the network must route the destination's replies
	// to this host, where an on-path MCP's rules deliver them. A source
	// option outside these prefixes is ignored. Nil ignores every source
	// option (section 9.1 of the draft: nothing about the customer's
	// network is used unless configured).
	PreserveSource []netip.Prefix
	// Deny are destination prefixes never connected to, on top of the
	// fixed classes (loopback, multicast, broadcast, unspecified,
	// link-local). IPv4-mapped prefixes also match the IPv4 addresses.
	Deny []netip.Prefix
	// AllowLocal are prefixes of the host's own addresses that clients may
	// nevertheless reach, for a service that runs on the MCP host. It never
	// overrides Deny or the fixed classes.
	AllowLocal []netip.Prefix
	// MaxConnsPerClient bounds the legs open at once from one client, in
	// any phase; a leg over the limit is torn down at once. A client is an
	// IPv4 address or an IPv6 /64: one host holds a whole /64. Default
	// DefaultMaxConnsPerClient.
	MaxConnsPerClient int
	// MaxConns bounds the legs open at once from all clients together; a
	// leg over the limit is torn down at once. Default: as many as the
	// process's open-file limit allows, two descriptors each, after the
	// on-path listeners (OnPath.MaxPorts) and a few others, so that
	// running out of descriptors refuses new legs rather than stalling
	// every accept and dial.
	MaxConns int
	// MaxSubflows is the path manager's limit of additional subflows per
	// MPTCP connection, set in Serve's network namespace (§9.2). At most
	// MaxSubflows; default DefaultMaxSubflows.
	MaxSubflows uint32
	// HeaderTimeout bounds the wait for a complete MP_CONVERT header, and
	// that for the client's handshake. Default DefaultHeaderTimeout.
	HeaderTimeout time.Duration
	// TrustSYNData acts on a leg's header as soon as its SYN arrives with
	// it (TCP Fast Open), before the client has completed its handshake:
	// the connection to the destination then starts half a round trip of
	// the leg earlier. Set it only where clients cannot forge their source
	// addresses (ingress filtering, BCP 38, as section 9.2 of the draft
	// asks): a forged SYN would make the MCP connect, and send the SYN's
	// data, wherever it names. By default the MCP waits for the handshake
	// and does nothing for a client that does not complete it.
	TrustSYNData bool
	// DialTimeout bounds the connection to the destination. Default
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// IdleTimeout resets a relayed leg and its server connection after
	// this long without a byte either way; zero means never.
	IdleTimeout time.Duration
	// Logger receives the logs; nil discards them. Per-leg events are at
	// Debug, starting and stopping at Info.
	Logger *slog.Logger
	// Dial connects to dst over plain TCP, from src when src is valid (a
	// preserved source: a transparent bind) or else from the MCP's own
	// address. It must return a *net.TCPConn. It is the only way the
	// Server opens connections. Nil means dialServer.
	Dial func(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error)
}

// Stats are a Server's counters since New.
type Stats struct {
	// Accepted counts the legs accepted.
	Accepted uint64
	// Converted counts the legs handed to the relay after the
	// destination accepted the connection.
	Converted uint64
	// Fallback counts the accepted legs that are plain TCP, not MPTCP.
	Fallback uint64
	// TornDown counts the legs closed abortively, by reason; nil if none.
	TornDown map[Reason]uint64
	// Active is the number of legs open now, in any phase.
	Active int
}

// Server is a downstream MCP. Its methods are safe for concurrent use.
type Server struct {
	cfg   Config // defaults filled in, prefixes normalized
	log   *slog.Logger
	dial  func(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error)
	own   *ownAddrs
	ready chan struct{}

	served    atomic.Bool
	accepted  atomic.Uint64
	converted atomic.Uint64
	fallback  atomic.Uint64

	mu        sync.Mutex
	addrs     []netip.AddrPort   // bound listen addresses, set once ready
	perClient map[netip.Addr]int // open legs per client (clientOf)
	active    int                // open legs
	tornDown  map[Reason]uint64
}

// New checks cfg and returns a Server; it opens nothing.
func New(cfg Config) (*Server, error) {
	if len(cfg.Listen) == 0 && cfg.OnPath == nil {
		return nil, errors.New("no listen address")
	}
	if cfg.OnPath != nil {
		o := cfg.OnPath.withDefaults()
		if err := o.validate(); err != nil {
			return nil, err
		}
		cfg.OnPath = &o
	}
	listen := make([]netip.AddrPort, 0, len(cfg.Listen))
	for _, ap := range cfg.Listen {
		if !ap.Addr().IsValid() {
			return nil, fmt.Errorf("invalid listen address %v", ap)
		}
		listen = append(listen, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
	}
	cfg.Listen = listen
	var err error
	if cfg.Deny, err = normPrefixes("deny", cfg.Deny); err != nil {
		return nil, err
	}
	if cfg.AllowLocal, err = normPrefixes("allow-local", cfg.AllowLocal); err != nil {
		return nil, err
	}
	if cfg.PreserveSource, err = normPrefixes("preserve-source", cfg.PreserveSource); err != nil {
		return nil, err
	}
	switch {
	case cfg.MaxConnsPerClient < 0:
		return nil, fmt.Errorf("max conns per client %d is negative", cfg.MaxConnsPerClient)
	case cfg.MaxConns < 0:
		return nil, fmt.Errorf("max conns %d is negative", cfg.MaxConns)
	case cfg.MaxSubflows > MaxSubflows:
		return nil, fmt.Errorf("max subflows %d is over the kernel's limit %d", cfg.MaxSubflows, MaxSubflows)
	case cfg.HeaderTimeout < 0 || cfg.DialTimeout < 0 || cfg.IdleTimeout < 0:
		return nil, errors.New("negative timeout")
	}
	if cfg.MaxConnsPerClient == 0 {
		cfg.MaxConnsPerClient = DefaultMaxConnsPerClient
	}
	if cfg.MaxConns == 0 {
		listeners := 0
		if cfg.OnPath != nil {
			listeners = cfg.OnPath.MaxPorts
		}
		cfg.MaxConns = maxConnsForFiles(listeners)
	}
	if cfg.MaxSubflows == 0 {
		cfg.MaxSubflows = DefaultMaxSubflows
	}
	if cfg.HeaderTimeout == 0 {
		cfg.HeaderTimeout = DefaultHeaderTimeout
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		dial:      cfg.Dial,
		ready:     make(chan struct{}),
		perClient: make(map[netip.Addr]int),
		tornDown:  make(map[Reason]uint64),
	}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if s.dial == nil {
		s.dial = dialServer
	}
	s.own = &ownAddrs{list: net.InterfaceAddrs}
	for _, ap := range cfg.Listen {
		s.own.extra = append(s.own.extra, ap.Addr())
	}
	return s, nil
}

func normPrefixes(what string, ps []netip.Prefix) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		if !p.IsValid() {
			return nil, fmt.Errorf("invalid %s prefix %v", what, p)
		}
		out = append(out, normPrefix(p))
	}
	return out, nil
}

// Ready returns a channel that is closed once Serve listens on every
// address.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addrs returns the addresses Serve listens on, with the ports it bound;
// nil until Ready is closed.
func (s *Server) Addrs() []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]netip.AddrPort(nil), s.addrs...)
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	st := Stats{Accepted: s.accepted.Load(), Converted: s.converted.Load(), Fallback: s.fallback.Load()}
	s.mu.Lock()
	defer s.mu.Unlock()
	st.Active = s.active
	for r, n := range s.tornDown {
		if st.TornDown == nil {
			st.TornDown = make(map[Reason]uint64)
		}
		st.TornDown[r] = n
	}
	return st
}

// Serve prepares the kernel (see the package doc), listens on every
// Config.Listen address, starts the on-path MCP if Config.OnPath is set,
// and serves legs until ctx ends; then it removes the on-path rules,
// closes the listeners, tears down the legs not yet relayed, closes the
// relays, waits for all of it and returns nil. It returns an error if it
// cannot start or a listener fails. Serve may be called once.
func (s *Server) Serve(ctx context.Context) error {
	if !s.served.CompareAndSwap(false, true) {
		return errors.New("mcpgw: Serve called twice")
	}
	if err := prepareKernel(s.cfg.MaxSubflows); err != nil {
		return err
	}
	if _, err := s.own.get(time.Now()); err != nil {
		return err
	}
	rl, err := relay.New(relay.Config{IdleTimeout: s.cfg.IdleTimeout, Logger: s.log})
	if err != nil {
		return fmt.Errorf("start relay: %w", err)
	}
	var lns []*net.TCPListener
	closeAll := func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	for _, ap := range s.cfg.Listen {
		ln, err := mptcpleg.Listen(ap, fastOpenQueueLen)
		if err != nil {
			closeAll()
			rl.Close()
			return fmt.Errorf("listen on %s: %w", ap, err)
		}
		lns = append(lns, ln)
	}
	s.mu.Lock()
	for _, ln := range lns {
		s.addrs = append(s.addrs, ln.Addr().(*net.TCPAddr).AddrPort())
	}
	s.mu.Unlock()
	for _, ap := range s.Addrs() {
		s.log.Info("mcpgw listening on "+ap.String(), "addr", ap.String())
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	serve := func(ln *net.TCPListener, onPath bool) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.acceptLoop(ctx, ln, rl, &wg, onPath); err != nil {
				select {
				case errc <- err:
				default:
				}
				cancel()
			}
		}()
	}
	for _, ln := range lns {
		serve(ln, false)
	}
	var onPath *onPathRuntime
	if s.cfg.OnPath != nil {
		onPath, err = startOnPath(*s.cfg.OnPath, s.log, func(ln *net.TCPListener) { serve(ln, true) })
		if err != nil {
			cancel()
			closeAll()
			wg.Wait()
			rl.Close()
			return fmt.Errorf("start on-path MCP: %w", err)
		}
	}
	close(s.ready)
	<-ctx.Done()
	if onPath != nil {
		onPath.close() // closes its listeners
	}
	closeAll()
	wg.Wait()
	rl.Close()
	s.log.Info("mcpgw stopped")
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

// acceptLoop accepts legs from ln, an on-path listener if onPath, until ctx
// ends or ln is closed (an on-path listener may be, for a busier port),
// starting handleLeg for each in wg. It returns an error only if ln fails
// for another reason.
func (s *Server) acceptLoop(ctx context.Context, ln *net.TCPListener, rl *relay.Relay, wg *sync.WaitGroup, onPath bool) error {
	var backoff accept.Backoff
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			wait, retry := backoff.Failed(err)
			if !retry {
				return fmt.Errorf("accept on %s: %w", ln.Addr(), err)
			}
			s.log.Warn("accept", "addr", ln.Addr().String(), "err", err, "retry_in", wait)
			if !accept.Sleep(wait, ctx.Done()) {
				return nil
			}
			continue
		}
		backoff.Succeeded()
		s.accepted.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.handleLeg(ctx, c, rl, onPath)
		}()
	}
}

// handleLeg reads the leg's header, checks the destination, connects to it
// and hands both connections to rl, or tears the leg down. onPath says
// that an on-path listener took the leg over: it was addressed to its
// destination.
func (s *Server) handleLeg(ctx context.Context, c *net.TCPConn, rl *relay.Relay, onPath bool) {
	remote := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	client := clientOf(remote.Addr())
	log := s.log.With("client", remote.String())
	if !s.cfg.TrustSYNData {
		// Before the client counts against its limit: a forged address
		// must not use up another client's share.
		if err := mptcpleg.WaitEstablished(ctx, c, time.Now().Add(s.cfg.HeaderTimeout)); err != nil {
			s.teardown(log, c, netip.Addr{}, s.failReason(ctx, ReasonHandshake), err)
			return
		}
	}
	if reason := s.admit(client); reason != "" {
		s.teardown(log, c, netip.Addr{}, reason, nil)
		return
	}
	fail := func(reason Reason, err error) { s.teardown(log, c, client, reason, err) }
	mptcp, err := mptcpleg.IsMPTCP(c)
	if err != nil {
		log.Debug("cannot tell whether the leg is MPTCP", "err", err)
	}
	if !mptcp {
		s.fallback.Add(1)
	}
	log = log.With("mptcp", mptcp)

	local := c.LocalAddr().(*net.TCPAddr).AddrPort()
	opts, extra, reason, err := s.readHeader(ctx, c)
	if reason != "" {
		fail(reason, err)
		return
	}
	dst, reason := destination(opts, local, onPath)
	if reason != "" {
		fail(reason, nil)
		return
	}
	log = log.With("dst", dst.String())
	src := source(opts, dst, s.cfg.PreserveSource)
	for _, o := range opts {
		if o.Source && o.Addr.Unmap() != src {
			log.Debug("source option ignored", "src", netip.AddrPortFrom(o.Addr, o.Port).String())
		}
	}
	own, err := s.own.get(time.Now())
	if err != nil {
		log.Warn("cannot refresh own addresses; using the last list", "err", err)
	}
	if reason := checkDestination(dst.Addr(), own, s.cfg.Deny, s.cfg.AllowLocal); reason != "" {
		fail(reason, nil)
		return
	}

	dctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
	if src.IsValid() {
		log = log.With("src", src.String())
	}
	nc, err := s.dial(dctx, src, dst)
	cancel()
	if err != nil {
		fail(s.failReason(ctx, ReasonDialFailed), err)
		return
	}
	sc, ok := nc.(*net.TCPConn)
	if !ok {
		nc.Close()
		fail(ReasonDialFailed, fmt.Errorf("dial returned %T, not *net.TCPConn", nc))
		return
	}
	if len(extra) > 0 {
		if _, err := sc.Write(extra); err != nil {
			abort(sc)
			fail(s.failReason(ctx, ReasonDialFailed), fmt.Errorf("write SYN data: %w", err))
			return
		}
	}
	err = rl.Add(c, sc, func(st relay.Stats) {
		s.release(client)
		log.Debug("leg closed", "up", st.AtoB, "down", st.BtoA, "reset", st.Reset, "idle", st.Idle)
	})
	if err != nil {
		// Add did not take the connections: done will not be called.
		abort(sc)
		fail(ReasonShutdown, err)
		return
	}
	s.converted.Add(1)
	log.Debug("leg relayed")
}

// failReason returns ReasonShutdown if ctx ended, else r.
func (s *Server) failReason(ctx context.Context, r Reason) Reason {
	if ctx.Err() != nil {
		return ReasonShutdown
	}
	return r
}

// firstReadLen bounds readHeader's reads: the longest header and one
// full-size segment. Without Fast Open the header comes in a segment of its
// own and the client's first data right behind it; taking both in one read
// lets that data reach the server in one write instead of cut at the
// header's maximum length, with the rest following a relay wakeup later.
const firstReadLen = mptcpleg.MaxHeaderLen + 1500

// readHeader reads from c until its first bytes are a complete MP_CONVERT
// header, within HeaderTimeout; it reads no more than firstReadLen bytes.
// extra are the bytes read after the header: data of the original SYN, and
// whatever the client sent after it that had arrived.
// It returns a non-empty Reason if the leg must be torn down.
func (s *Server) readHeader(ctx context.Context, c *net.TCPConn) (opts []mptcpleg.Option, extra []byte, r Reason, err error) {
	if err := c.SetReadDeadline(time.Now().Add(s.cfg.HeaderTimeout)); err != nil {
		return nil, nil, ReasonReadError, err
	}
	// On shutdown, unblock the read at once.
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Unix(1, 0)) })
	var buf [firstReadLen]byte
	n := 0
	for {
		m, rerr := c.Read(buf[n:])
		n += m
		if m > 0 {
			opts, hl, perr := mptcpleg.ParseHeader(buf[:n])
			if perr == nil {
				if !stop() {
					return nil, nil, ReasonShutdown, nil
				}
				if err := c.SetReadDeadline(time.Time{}); err != nil {
					return nil, nil, ReasonReadError, err
				}
				return opts, append([]byte(nil), buf[hl:n]...), "", nil
			}
			if !errors.Is(perr, mptcpleg.ErrTruncated) {
				stop()
				return nil, nil, headerReason(perr), perr
			}
			if n == len(buf) { // cannot happen with a correct ParseHeader
				stop()
				return nil, nil, ReasonMalformed, perr
			}
		}
		if rerr != nil {
			stop()
			switch {
			case ctx.Err() != nil:
				return nil, nil, ReasonShutdown, nil
			case errors.Is(rerr, os.ErrDeadlineExceeded):
				return nil, nil, ReasonHeaderTimeout, nil
			case errors.Is(rerr, io.EOF):
				return nil, nil, ReasonHeaderTruncated, nil
			}
			return nil, nil, ReasonReadError, rerr
		}
	}
}

// dialServer is the default Config.Dial: plain TCP to dst, from src by a
// transparent bind when src is valid.
func dialServer(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	if src.IsValid() {
		return dialTransparent(ctx, src, dst)
	}
	d := net.Dialer{KeepAlive: -1} // the relay sets it
	d.SetMultipathTCP(false)
	return d.DialContext(ctx, "tcp", dst.String())
}

// clientOf returns the client a leg from addr counts against: the IPv4
// address, or the IPv6 /64 (as its first address).
func clientOf(addr netip.Addr) netip.Addr {
	addr = addr.Unmap()
	if addr.Is4() {
		return addr
	}
	return netip.PrefixFrom(addr, 64).Masked().Addr()
}

// admit counts a new leg from client, or returns why it must not open.
func (s *Server) admit(client netip.Addr) Reason {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.active >= s.cfg.MaxConns:
		return ReasonServerLimit
	case s.perClient[client] >= s.cfg.MaxConnsPerClient:
		return ReasonClientLimit
	}
	s.perClient[client]++
	s.active++
	return ""
}

// release uncounts a leg that admit counted.
func (s *Server) release(client netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.releaseLocked(client)
}

// releaseLocked is release with s.mu held.
func (s *Server) releaseLocked(client netip.Addr) {
	s.active--
	if s.perClient[client]--; s.perClient[client] <= 0 {
		delete(s.perClient, client)
	}
}

// teardown closes the leg c abortively, counts it under reason and logs
// why. If client is valid, it first uncounts the leg that admit counted
// for client. The counters change before the reset goes out, so a client
// that sees the reset sees them updated and may open its next leg at once.
func (s *Server) teardown(log *slog.Logger, c *net.TCPConn, client netip.Addr, reason Reason, err error) {
	s.mu.Lock()
	s.tornDown[reason]++
	if client.IsValid() {
		s.releaseLocked(client)
	}
	s.mu.Unlock()
	abort(c)
	if err != nil {
		log.Debug("leg torn down", "reason", string(reason), "err", err)
	} else {
		log.Debug("leg torn down", "reason", string(reason))
	}
}

// abort closes c with a reset: SO_LINGER 0, which on an MPTCP socket sends
// MP_FASTCLOSE.
func abort(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}

// ownAddrs keeps a snapshot of the host's own addresses no older than
// ownAddrsMaxAge. Safe for concurrent use.
type ownAddrs struct {
	list  func() ([]net.Addr, error)
	extra []netip.Addr

	mu  sync.Mutex
	set addrSet
	at  time.Time
}

// get returns the snapshot, refreshed first if it is stale. If the refresh
// fails it returns the previous snapshot and the error.
func (o *ownAddrs) get(now time.Time) (addrSet, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.at.IsZero() && now.Sub(o.at) < ownAddrsMaxAge {
		return o.set, nil
	}
	ifaddrs, err := o.list()
	if err != nil {
		return o.set, fmt.Errorf("list own addresses: %w", err)
	}
	o.set, o.at = newAddrSet(ifaddrs, o.extra), now
	return o.set, nil
}
