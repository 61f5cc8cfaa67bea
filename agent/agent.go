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
	"time"

	"github.com/mcpagent/mcpagent/config"
	"github.com/mcpagent/mcpagent/control"
	"github.com/mcpagent/mcpagent/firewall"
	"github.com/mcpagent/mcpagent/intercept"
	"github.com/mcpagent/mcpagent/internal/accept"
	"github.com/mcpagent/mcpagent/mptcpleg"
	"github.com/mcpagent/mcpagent/mptcppm"
	"github.com/mcpagent/mcpagent/policy"
	"github.com/mcpagent/mcpagent/relay"
	"github.com/mcpagent/mcpagent/route"
)

// sweepInterval is how often expired flows are forgotten and down MCPs are
// considered for a probe.
const sweepInterval = time.Second

// aliveTimeout is how long the firewall rules queue SYNs after the agent's
// last heartbeat, which each sweep sends: three sweeps may be late before
// SYNs flow on unconverted, and a stopped agent holds up new connections
// for no longer than that.
const aliveTimeout = 3 * time.Second

// Run runs the agent until ctx ends, then removes everything it installed.
// Cancellation is not an error. It fails fast, with a one-line reason, when
// the system lacks something it needs.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger) (err error) {
	if err := preflight(cfg); err != nil {
		return err
	}
	// undo collects the teardown of every step, run in reverse on return.
	var undo []func()
	defer func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}()

	unlock, err := lockRun(cfg, nil)
	if err != nil {
		return err
	}
	undo = append(undo, unlock)

	rl, err := relay.New(relay.Config{IdleTimeout: time.Duration(cfg.IdleTimeout), Logger: log.With("component", "relay")})
	if err != nil {
		return fmt.Errorf("start relay: %w", err)
	}
	undo = append(undo, func() { rl.Close() })

	eps, err := newEndpointSync(cfg.MaxSubflows, limitsFile(cfg), oursFile(cfg), log.With("component", "endpoints"))
	if err != nil {
		return err
	}
	undo = append(undo, eps.close)
	ups := newUplinkManager(cfg, eps, log.With("component", "uplinks"))
	pol := policy.New(policy.Config{MCPs: cfg.MCP.Addrs, Fallback: fallbackAction(cfg.Fallback)})
	prov, inf := startDHCP(cfg, pol, log.With("component", "dhcp"))
	if inf != nil {
		undo = append(undo, inf.close)
	}
	rc := routeConfig(cfg)
	rc.OnChange = func(s []route.UplinkState) { ups.update(s); inf.uplinksChanged(s) }
	rc.Logger = log.With("component", "route")
	rt, err := route.Start(rc)
	if err != nil {
		return fmt.Errorf("set up routing: %w", err)
	}
	undo = append(undo, func() { rt.Close() })
	ups.refresh(rt.State)

	legCtx, cancelLegs := context.WithCancel(context.Background())
	// On path, MP_CONVERT must travel in the SYN: that is all an on-path
	// MCP sees when it decides whether to take the connection over.
	onPath := cfg.MCP.Mode == config.MCPModeOnPath
	conv := newConverter(legCtx, pol, legDialer(cfg.LegFastOpen || onPath, cfg.CongestionControl), time.Duration(cfg.LegTimeout), log.With("component", "convert"))
	conv.onPath, conv.source, conv.sources, conv.legOpened = onPath, cfg.MCP.Source(), ups.initialSources, ups.legOpened
	var probes sync.WaitGroup
	undo = append(undo, func() { cancelLegs(); probes.Wait(); conv.close() })
	kick := newProbeKicks(len(cfg.Uplinks))
	if !onPath {
		// On path there is no MCP address to probe toward: the uplinks
		// count as healthy while they are up.
		probes.Add(1)
		go func() {
			defer probes.Done()
			ups.probeUplinks(legCtx, pol.Preferred, time.Duration(cfg.Probe.Interval), time.Duration(cfg.Probe.Timeout), kick)
		}()
	}
	if events, err := mptcppm.ListenEvents(mptcppm.EventSubClosed); err != nil {
		log.Warn("no path manager events: subflows are not followed", "err", err)
	} else {
		done := make(chan struct{})
		go func() {
			defer close(done)
			ups.watchSubflows(events, kick)
		}()
		undo = append(undo, func() { events.Close(); <-done })
	}

	legs := newLegRegistry()
	rules := firewallRules(cfg)
	for _, addr := range rules.TProxyListeners() {
		ln, err := listenTransparent(addr)
		if err != nil {
			return fmt.Errorf("transparent listener on %s: %w", addr, err)
		}
		stop, done := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(done)
			acceptLoop(ln, stop, conv, rl, legs, log)
		}()
		undo = append(undo, func() { close(stop); ln.Close(); <-done })
	}

	ic, err := intercept.Open(intercept.Config{
		Queue:       cfg.Netfilter.Queue,
		ConvertMark: rules.ConvertMark,
		RejectMark:  rules.RejectMark,
		MarkMask:    rules.MarkMask,
		Handler:     conv.handleSYN,
		Logger:      log.With("component", "intercept"),
	})
	if err != nil {
		return fmt.Errorf("open queue %d: %w", cfg.Netfilter.Queue, err)
	}
	// Closing the interceptor releases held SYNs unconverted: fail-open.
	undo = append(undo, func() { ic.Close() })

	fw, err := firewall.Install(ctx, firewall.Backend(cfg.Firewall), rules, log.With("component", "firewall"))
	if err != nil {
		return fmt.Errorf("install firewall rules: %w", err)
	}
	undo = append(undo, func() {
		if err := fw.Close(); err != nil {
			log.Error("remove firewall rules", "err", err)
		}
	})
	hb, err := firewall.NewHeartbeat(rules)
	if err != nil {
		return err
	}
	undo = append(undo, func() { hb.Close() })
	beat := heartbeat(hb, log.With("component", "firewall"))
	beat()

	ctl, err := control.Listen(control.Config{
		Path:   cfg.ControlSocket,
		DHCP:   dhcpHandler(cfg, prov),
		Status: func() control.Status { return status(ups, legs, conv) },
		Logger: log.With("component", "control"),
	})
	if err != nil {
		return err
	}
	undo = append(undo, func() { ctl.Close() })
	replayDHCP(cfg, prov)

	// The watchdog stops first on return: undoing the steps above may take
	// longer than it allows.
	start := time.Now()
	var swept atomic.Int64 // time.Duration since start
	watchTick := time.NewTicker(sweepInterval)
	stopWatch, watchDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watchDone)
		watch(watchTick.C, stopWatch, start, &swept, sweepInterval, wedgedAfter, func(stalled time.Duration) { crash(log, stalled) })
	}()
	undo = append(undo, func() { watchTick.Stop(); close(stopWatch); <-watchDone })

	log.Info("agent running", "lan", cfg.LANInterfaces, "uplinks", len(cfg.Uplinks), "mcp", cfg.MCP.Addrs, "mcp_source", mcpSource(cfg), "fallback", cfg.Fallback)
	maxHold := time.Duration(cfg.LegTimeout) + heldSYNGrace
	tick := time.NewTicker(sweepInterval)
	defer tick.Stop()
	lastSweep := time.Now()
	for {
		select {
		case <-ctx.Done():
			log.Info("agent stopping", "converted", conv.stats.Converted.Load(), "fallback", conv.stats.Fallback.Load())
			return nil
		case <-tick.C:
			now := time.Now()
			if gap := now.Sub(lastSweep); gap > aliveTimeout {
				log.Warn("the agent did not run for a while; meanwhile new connections bypassed it", "gap", gap.Round(time.Millisecond).String())
			}
			lastSweep = now
			conv.sweep()
			if n := ic.ExpireHeld(maxHold); n > 0 {
				log.Error("SYNs held past their leg's timeout; accepted unconverted", "count", n, "max_hold", maxHold.String())
			}
			for _, m := range pol.DueProbes(time.Now()) {
				probes.Add(1)
				go func() {
					defer probes.Done()
					probe(legCtx, pol, m, time.Duration(cfg.LegTimeout), log)
				}()
			}
			swept.Store(int64(time.Since(start)))
			beat()
		}
	}
}

// firewallRules returns the netfilter rules of cfg.
func firewallRules(cfg *config.Config) firewall.Rules {
	convertMark, rejectMark, tproxyMark := cfg.Netfilter.Marks()
	return firewall.Rules{
		LANInterfaces: cfg.LANInterfaces,
		Queue:         cfg.Netfilter.Queue,
		TProxyPort:    cfg.Netfilter.TProxyPort,
		ConvertMark:   convertMark,
		RejectMark:    rejectMark,
		TProxyMark:    tproxyMark,
		MarkMask:      uint32(cfg.Netfilter.MarkMask),
		AliveTimeout:  aliveTimeout,
	}
}

// routeConfig returns the policy routing of cfg, without OnChange and
// Logger.
func routeConfig(cfg *config.Config) route.Config {
	uplinks := make([]route.Uplink, len(cfg.Uplinks))
	for i, u := range cfg.Uplinks {
		uplinks[i] = route.Uplink{Name: u.Name, Interface: u.Interface, Table: cfg.Routing.TableBase + 1 + i}
	}
	_, _, tproxyMark := cfg.Netfilter.Marks()
	return route.Config{
		Uplinks:       uplinks,
		LANInterfaces: cfg.LANInterfaces,
		TProxyMark:    tproxyMark,
		MarkMask:      uint32(cfg.Netfilter.MarkMask),
		TProxyTable:   cfg.Routing.TableBase,
		RulePriority:  cfg.Routing.RulePref,
	}
}

// Files beside the control socket: the path manager's limits the agent
// found, and the endpoints it added. A clean stop removes both, so either
// one left shows a run that did not stop cleanly.
func limitsFile(cfg *config.Config) string { return cfg.ControlSocket + ".limits" }
func oursFile(cfg *config.Config) string   { return cfg.ControlSocket + ".endpoints" }

func fallbackAction(f config.Fallback) policy.Action {
	if f == config.FallbackReject {
		return policy.Reject
	}
	return policy.Pass
}

// probe completes a TCP handshake with a down MCP and resets it: the
// handshake alone shows the MCP is back. It sends no MP_CONVERT: an empty
// one is no valid off-path leg, and the MCP's reset for it could beat the
// handshake's completion and fail the probe of an MCP that is up.
func probe(ctx context.Context, pol *policy.Policy, mcp netip.AddrPort, timeout time.Duration, log *slog.Logger) {
	if err := probeHandshake(ctx, netip.Addr{}, mcp, timeout); err != nil {
		// The MCP stays down; DueProbes already restarted its clock.
		log.Debug("mcp probe failed", "mcp", mcp, "err", err)
		return
	}
	pol.Succeeded(mcp)
	log.Info("mcp is up again", "mcp", mcp)
}

// tcpAcceptor is the transparent listener (*net.TCPListener).
type tcpAcceptor interface {
	AcceptTCP() (*net.TCPConn, error)
}

// acceptLoop pairs each connection the TPROXY rule delivers with the leg of
// its flow and hands both to the relay; legs lists the pairs the relay
// holds. It ends when ln is closed. Out of file descriptors or memory, it
// waits and accepts again: a loop that ended would leave every converted
// connection waiting in the listen queue. Closing stop cuts such a wait
// short.
func acceptLoop(ln tcpAcceptor, stop <-chan struct{}, conv *converter, rl *relay.Relay, legs *legRegistry, log *slog.Logger) {
	var backoff accept.Backoff
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			wait, retry := backoff.Failed(err)
			if !retry {
				if !errors.Is(err, net.ErrClosed) {
					log.Error("accept on transparent listener", "err", err)
				}
				return
			}
			log.Warn("accept on transparent listener", "err", err, "retry_in", wait)
			if !accept.Sleep(wait, stop) {
				return
			}
			continue
		}
		backoff.Succeeded()
		src := c.RemoteAddr().(*net.TCPAddr).AddrPort()
		dst := c.LocalAddr().(*net.TCPAddr).AddrPort()
		if leg, ok := conv.claim(src, dst); ok {
			relayPair(rl, legs, c, leg, src, dst, log)
			continue
		}
		conv.openLate(src, dst, func(leg *mptcpleg.Leg, err error) {
			if err != nil {
				log.Debug("accepted connection without a leg; resetting it", "src", src, "dst", dst, "err", err)
				abort(c)
				return
			}
			log.Debug("leg opened for a connection accepted late", "src", src, "dst", dst)
			relayPair(rl, legs, c, leg, src, dst, log)
		})
	}
}

// relayPair hands the LAN connection c of src to dst and its leg to rl.
func relayPair(rl *relay.Relay, legs *legRegistry, c *net.TCPConn, leg *mptcpleg.Leg, src, dst netip.AddrPort, log *slog.Logger) {
	legs.add(leg, src, dst)
	if err := rl.Add(c, leg.Conn, func(relay.Stats) { legs.remove(leg) }); err != nil {
		legs.remove(leg)
		log.Debug("relay refused pair", "src", src, "dst", dst, "err", err)
	}
}
