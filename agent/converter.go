package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mcpagent/mcpagent/intercept"
	"github.com/mcpagent/mcpagent/mptcpleg"
	"github.com/mcpagent/mcpagent/policy"
)

// flowKey names a LAN connection: the client and its original destination,
// both unmapped, as the SYN and later the accepted socket see them.
type flowKey struct{ src, dst netip.AddrPort }

func newFlowKey(src, dst netip.AddrPort) flowKey {
	return flowKey{
		netip.AddrPortFrom(src.Addr().Unmap(), src.Port()),
		netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port()),
	}
}

type flowState uint8

const (
	flowDialing flowState = iota // the SYN is held while the leg opens
	flowReady                    // the leg is up and the SYN released; waiting for accept
	flowDecided                  // released unconverted; remembered for retransmitted SYNs
)

type flow struct {
	state   flowState
	verdict intercept.Verdict // flowDecided
	leg     *mptcpleg.Leg     // flowReady
	expires time.Time         // flowReady, flowDecided
}

// How long the converter remembers a released flow: a ready leg waits
// claimTTL for the LAN handshake to reach the listener; a decision is kept
// decidedTTL after the last copy of its SYN so that a SYN retransmitted
// meanwhile gets the same verdict (a SYN let through direct must not be
// converted when it comes again, nor the reverse: the client would get two
// different SYN-ACKs). Linux retransmits a SYN after 1, 3, 7, 15 and 31 s,
// Windows after 3 and 9 s; each copy restarts the time.
const (
	claimTTL   = 10 * time.Second
	decidedTTL = 30 * time.Second
)

// maxRemembered bounds the flows the converter keeps: past it, a new
// decision is not remembered (its retransmitted SYN is decided afresh), so
// that a LAN host flooding SYNs cannot grow the map without bound.
const maxRemembered = 16384

// defaultMaxPending bounds the legs being opened or open and not yet
// claimed by an accepted LAN connection, so that a LAN host flooding SYNs
// costs at most that many legs: a port scan's SYNs convert, but no
// handshake follows to claim their legs, which wait claimTTL. Past it new
// flows take the fallback at once.
const defaultMaxPending = 4096

// dialFunc opens a leg to mcp carrying header, its initial subflow from
// local (invalid: routing chooses); tests replace it.
type dialFunc func(ctx context.Context, mcp netip.AddrPort, local netip.Addr, header []byte) (*mptcpleg.Leg, error)

// legDialer returns the dialFunc that opens real legs, with MP_CONVERT in
// the SYN (fastOpen) or in the first segment after the handshake, and the
// congestion control cc ("": the system's).
func legDialer(fastOpen bool, cc string) dialFunc {
	return func(ctx context.Context, mcp netip.AddrPort, local netip.Addr, header []byte) (*mptcpleg.Leg, error) {
		return mptcpleg.Dial(ctx, mptcpleg.DialConfig{Remote: mcp, Local: local, Header: header, HeaderAfterHandshake: !fastOpen, CongestionControl: cc})
	}
}

// converterStats counts what the converter did. Fields are read atomically.
type converterStats struct {
	Native, Converted, Fallback, Rejected, Duplicates, Unclaimed, Orphans, LateLegs, TCPFallbackLegs atomic.Uint64
}

// converter holds SYNs while their legs open and hands each leg to the
// accepted LAN connection of the same flow. It is safe for concurrent use.
type converter struct {
	policy *policy.Policy
	dial   dialFunc
	// sources, if not nil, returns the addresses to try in turn for the
	// initial subflow of a leg to remote, best uplink first.
	sources func(remote netip.Addr) []netip.Addr
	// legOpened, if not nil, learns the source of each leg whose initial
	// subflow came up from one that sources returned.
	legOpened func(src netip.Addr)
	// onPath addresses each leg to the flow's destination with an empty
	// MP_CONVERT, for an MCP on the path (config.MCPModeOnPath); the
	// policy then only passes native MPTCP.
	onPath bool
	// source, if valid, goes in a source MP_CONVERT option of each leg
	// whose destination is of its family.
	source     netip.Addr
	legTimeout time.Duration
	maxPending int
	now        func() time.Time
	log        *slog.Logger
	stats      converterStats

	ctx context.Context // cancelled by close: aborts every dial
	wg  sync.WaitGroup  // dial goroutines

	mu      sync.Mutex
	flows   map[flowKey]*flow
	pending int // flows dialing or ready
	closed  bool
}

func newConverter(ctx context.Context, p *policy.Policy, dial dialFunc, legTimeout time.Duration, log *slog.Logger) *converter {
	return &converter{
		policy:     p,
		dial:       dial,
		legTimeout: legTimeout,
		maxPending: defaultMaxPending,
		now:        time.Now,
		log:        log,
		ctx:        ctx,
		flows:      map[flowKey]*flow{},
	}
}

func verdictFor(a policy.Action) intercept.Verdict {
	if a == policy.Reject {
		return intercept.Reject
	}
	return intercept.Accept
}

// handleSYN is the interceptor's Handler: it never blocks.
func (c *converter) handleSYN(s intercept.SYN, release func(intercept.Verdict)) {
	key := newFlowKey(s.Src, s.Dst)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		release(intercept.Accept)
		return
	}
	if f, ok := c.flows[key]; ok {
		v := f.verdict
		switch f.state {
		case flowDialing:
			v = intercept.Drop // the first copy is still held
		case flowReady:
			v = intercept.Convert
		default:
			f.expires = c.now().Add(decidedTTL)
		}
		c.mu.Unlock()
		c.stats.Duplicates.Add(1)
		release(v)
		return
	}
	d := c.decideLocked(key, s.MPTCP != intercept.NativeNone)
	if d.Action != policy.Convert {
		v := verdictFor(d.Action)
		if len(c.flows) < maxRemembered {
			c.flows[key] = &flow{state: flowDecided, verdict: v, expires: c.now().Add(decidedTTL)}
		}
		c.mu.Unlock()
		c.countDecision(d)
		c.log.Debug("syn not converted", "src", s.Src, "dst", s.Dst, "reason", d.Reason, "action", d.Action)
		release(v)
		return
	}
	c.flows[key] = &flow{state: flowDialing}
	c.pending++
	c.wg.Add(1)
	c.mu.Unlock()
	go c.openLeg(key, d.MCP, release)
}

// decideLocked decides a new flow: the policy's decision, on path a leg
// to the flow's destination, and the fallback past the pending limit.
// c.mu must be held.
func (c *converter) decideLocked(key flowKey, native bool) policy.Decision {
	d := c.policy.Decide(policy.Flow{Src: key.src, Dst: key.dst, NativeMPTCP: native})
	if c.onPath && d.Reason != policy.ReasonNative {
		// The leg goes where the SYN was going; an MCP on the way takes it.
		d = policy.Decision{Action: policy.Convert, MCP: key.dst, Reason: policy.ReasonConvert}
	}
	if d.Action == policy.Convert && c.pending >= c.maxPending {
		d = c.policy.Fallback()
		d.Reason = "too-many-pending"
	}
	return d
}

func (c *converter) countDecision(d policy.Decision) {
	switch {
	case d.Reason == policy.ReasonNative:
		c.stats.Native.Add(1)
	case d.Action == policy.Reject:
		c.stats.Rejected.Add(1)
	default:
		c.stats.Fallback.Add(1)
	}
}

// openLeg opens the leg for one held SYN and releases the SYN: converted
// when the leg is up, else with the fallback verdict.
func (c *converter) openLeg(key flowKey, mcp netip.AddrPort, release func(intercept.Verdict)) {
	defer c.wg.Done()
	leg, err := c.dialLeg(key, mcp)
	v := c.finishLeg(key, mcp, leg, err)
	release(v)
}

// dialLeg opens the leg of key to mcp.
func (c *converter) dialLeg(key flowKey, mcp netip.AddrPort) (*mptcpleg.Leg, error) {
	header, err := c.header(key)
	if err != nil {
		return nil, err
	}
	leg, err := c.dialOverUplinks(mcp, header)
	if err == nil && c.onPath && !leg.MPTCP {
		// No MCP on the path answered: the destination itself did, and
		// must not get the MP_CONVERT bytes as data.
		abort(leg.Conn)
		return nil, errors.New("no on-path MCP: the SYN-ACK came without MP_CAPABLE")
	}
	return leg, err
}

// openLate opens a leg for a LAN connection that the listener accepted
// without one: its handshake completed only after its leg had waited
// claimTTL and been closed, as when the LAN loses SYN-ACKs. Such a
// connection is slow, not broken, so it gets a leg now, as a new flow
// would, rather than a reset. done gets the leg, or the error if the flow
// is not to be converted now or its leg fails; it runs on a goroutine
// that close waits for.
func (c *converter) openLate(src, dst netip.AddrPort, done func(*mptcpleg.Leg, error)) {
	key := newFlowKey(src, dst)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		done(nil, errors.New("agent stopping"))
		return
	}
	d := c.decideLocked(key, false)
	if d.Action != policy.Convert {
		c.mu.Unlock()
		done(nil, fmt.Errorf("flow not converted now (%s)", d.Reason))
		return
	}
	c.pending++
	c.wg.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.wg.Done()
		leg, err := c.dialLeg(key, d.MCP)
		c.mu.Lock()
		c.pending--
		if err == nil && c.closed {
			abort(leg.Conn)
			leg, err = nil, errors.New("agent stopping")
		}
		c.mu.Unlock()
		if err == nil {
			c.stats.LateLegs.Add(1)
		}
		done(leg, err)
	}()
}

// dialOverUplinks opens the leg within legTimeout, its initial subflow over
// the best uplink first. An attempt whose SYN gets no answer in its share
// of the time left is abandoned for the next uplink: the last attempt gets
// all that is left.
func (c *converter) dialOverUplinks(mcp netip.AddrPort, header []byte) (*mptcpleg.Leg, error) {
	ctx, cancel := context.WithTimeout(c.ctx, c.legTimeout)
	defer cancel()
	var srcs []netip.Addr
	if c.sources != nil {
		srcs = c.sources(mcp.Addr())
	}
	if len(srcs) == 0 {
		return c.dial(ctx, mcp, netip.Addr{}, header)
	}
	var errs []error
	for i, src := range srcs {
		attempt := ctx
		if deadline, ok := ctx.Deadline(); ok && i < len(srcs)-1 {
			share := time.Until(deadline) / time.Duration(len(srcs)-i)
			var cancelAttempt context.CancelFunc
			attempt, cancelAttempt = context.WithTimeout(ctx, share)
			defer cancelAttempt()
		}
		leg, err := c.dial(attempt, mcp, src, header)
		if err == nil {
			if c.legOpened != nil {
				c.legOpened(src)
			}
			return leg, nil
		}
		errs = append(errs, fmt.Errorf("from %s: %w", src, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

// header returns the MP_CONVERT options and EOL of key's leg: the
// destination (empty on path), then the source if one is configured.
func (c *converter) header(key flowKey) ([]byte, error) {
	dst := mptcpleg.Option{Protocol: mptcpleg.ProtocolTCP, Addr: key.dst.Addr(), Port: key.dst.Port()}
	if c.onPath {
		dst = mptcpleg.Option{Protocol: mptcpleg.ProtocolTCP}
	}
	opts := []mptcpleg.Option{dst}
	if c.source.IsValid() && c.source.Is4() == key.dst.Addr().Is4() {
		opts = append(opts, mptcpleg.Option{Source: true, Protocol: mptcpleg.ProtocolTCP, Addr: c.source})
	}
	return mptcpleg.AppendHeader(nil, opts...)
}

// finishLeg records the outcome of a dial and returns the verdict for the
// held SYN.
func (c *converter) finishLeg(key flowKey, mcp netip.AddrPort, leg *mptcpleg.Leg, err error) intercept.Verdict {
	if err != nil && c.ctx.Err() == nil {
		// Outside the lock, which every SYN takes: a slow log must not
		// hold them up.
		c.log.Warn("leg failed; falling back", "src", key.src, "dst", key.dst, "mcp", mcp, "err", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil || c.closed {
		c.pending--
		if leg != nil {
			abort(leg.Conn)
		}
		// On path, mcp is the destination: no MCP health. A router out of
		// descriptors or memory says nothing about the MCP either.
		if err != nil && c.ctx.Err() == nil && !c.onPath && !localShortage(err) {
			c.policy.Failed(mcp, c.now())
		}
		d := c.policy.Fallback()
		c.countDecision(d)
		v := verdictFor(d.Action)
		if c.closed || c.ctx.Err() != nil {
			v = intercept.Accept // shutting down: fail open
		}
		c.flows[key] = &flow{state: flowDecided, verdict: v, expires: c.now().Add(decidedTTL)}
		return v
	}
	if !c.onPath {
		c.policy.Succeeded(mcp)
	}
	c.stats.Converted.Add(1)
	if !leg.MPTCP {
		c.stats.TCPFallbackLegs.Add(1)
	}
	c.flows[key] = &flow{state: flowReady, leg: leg, expires: c.now().Add(claimTTL)}
	return intercept.Convert
}

// localShortage reports whether err is the router running short of
// descriptors or memory, which would fail a leg to any MCP.
func localShortage(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}

// claim hands over the leg of the flow that the listener just accepted.
func (c *converter) claim(src, dst netip.AddrPort) (*mptcpleg.Leg, bool) {
	key := newFlowKey(src, dst)
	c.mu.Lock()
	defer c.mu.Unlock()
	f, ok := c.flows[key]
	if !ok || f.state != flowReady {
		c.stats.Orphans.Add(1)
		return nil, false
	}
	delete(c.flows, key)
	c.pending--
	return f.leg, true
}

// sweep forgets expired flows and closes legs nobody claimed.
func (c *converter) sweep() {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, f := range c.flows {
		if f.state == flowDialing || now.Before(f.expires) {
			continue
		}
		if f.state == flowReady {
			c.stats.Unclaimed.Add(1)
			abort(f.leg.Conn)
			c.pending--
		}
		delete(c.flows, k)
	}
}

// close stops accepting new flows, waits for dials to end (the caller
// cancels ctx first) and closes unclaimed legs.
func (c *converter) close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.wg.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, f := range c.flows {
		if f.state == flowReady {
			abort(f.leg.Conn)
			c.pending--
		}
		delete(c.flows, k)
	}
}

// abort closes c with a reset rather than a FIN: the peer must not take a
// torn-down connection for a complete one.
func abort(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}
