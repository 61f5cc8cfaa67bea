package mcpgw

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mcpagent/mcpagent/intercept"
	"github.com/mcpagent/mcpagent/internal/sockopt"
	"github.com/mcpagent/mcpagent/mptcpleg"
	"github.com/mdlayher/netlink"
	vnl "github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// iptablesTimeout bounds one iptables-restore run, which may wait for the
// xtables lock.
const iptablesTimeout = 30 * time.Second

// onPathRuntime is a running on-path MCP: its rules, routes, queue and
// per-port transparent listeners.
type onPathRuntime struct {
	o      OnPath
	log    *slog.Logger
	accept func(*net.TCPListener) // starts serving a new listener
	diag   *netlink.Conn
	ic     *intercept.Interceptor
	wg     sync.WaitGroup // decision goroutines

	mu       sync.Mutex
	closed   bool
	ports    map[portKey]*portListener
	fullWarn time.Time // when a reset for lack of listeners was last logged as a warning
}

// errPortsFull means a SYN needs a listener for one more port, and all
// OnPath.MaxPorts of them have seen SYNs within OnPath.PortIdle.
var errPortsFull = errors.New("every on-path listener has seen SYNs recently")

// fullWarnEvery spaces the warnings about errPortsFull, which a flood of
// SYNs to many ports would otherwise repeat for each.
const fullWarnEvery = time.Minute

type portKey struct {
	v6   bool
	port uint16
}

// portListener is the transparent listener of one port, opened once.
type portListener struct {
	done    chan struct{} // closed when ln or err is set
	ln      *net.TCPListener
	err     error
	lastSYN time.Time // guarded by onPathRuntime.mu
}

// idlestPort returns the port of the open listener in ports whose last SYN
// is the oldest, if that SYN came before cutoff.
func idlestPort(ports map[portKey]*portListener, cutoff time.Time) (portKey, bool) {
	var idlest portKey
	var at time.Time
	found := false
	for k, p := range ports {
		if p.ln == nil || !p.lastSYN.Before(cutoff) || found && !p.lastSYN.Before(at) {
			continue
		}
		idlest, at, found = k, p.lastSYN, true
	}
	return idlest, found
}

// startOnPath installs the routing and the rules of o, binds its queue and
// returns the running MCP; accept is called, from any goroutine, with
// every listener it opens. On error it leaves nothing behind.
func startOnPath(o OnPath, log *slog.Logger, accept func(*net.TCPListener)) (_ *onPathRuntime, err error) {
	r := &onPathRuntime{o: o, log: log, accept: accept, ports: make(map[portKey]*portListener)}
	defer func() {
		if err != nil {
			r.close()
		}
	}()
	if r.diag, err = netlink.Dial(unix.NETLINK_SOCK_DIAG, nil); err != nil {
		return nil, fmt.Errorf("open socket diagnostics: %w", err)
	}
	if err := addLocalRouting(o); err != nil {
		return nil, err
	}
	r.ic, err = intercept.Open(intercept.Config{
		Queue:       o.Queue,
		ConvertMark: o.ConvertMark,
		RejectMark:  o.RejectMark,
		MarkMask:    o.MarkMask,
		Handler:     r.handleSYN,
		Logger:      log,
	})
	if err != nil {
		return nil, fmt.Errorf("open queue %d: %w", o.Queue, err)
	}
	for _, v6 := range []bool{false, true} {
		restore(v6, removeOnPathRules(v6)) // leftovers of a crashed run
		if err := restore(v6, onPathRules(o, v6)); err != nil {
			return nil, fmt.Errorf("install %s on-path rules: %w", familyName(v6), err)
		}
	}
	log.Info("on-path MCP running", "queue", o.Queue)
	return r, nil
}

// close removes the rules first, so that SYNs pass untouched again, then
// releases the held SYNs, closes the listeners, and removes the routing.
// Connections already accepted belong to the caller.
func (r *onPathRuntime) close() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	for _, v6 := range []bool{false, true} {
		restore(v6, removeOnPathRules(v6))
	}
	if r.ic != nil {
		r.ic.Close()
	}
	r.wg.Wait()
	r.mu.Lock()
	for _, p := range r.ports {
		if p.ln != nil {
			p.ln.Close()
		}
	}
	r.mu.Unlock()
	delLocalRouting(r.o)
	if r.diag != nil {
		r.diag.Close()
	}
}

// handleSYN is the interceptor's Handler.
func (r *onPathRuntime) handleSYN(s intercept.SYN, release func(intercept.Verdict)) {
	switch decideOnPath(s) {
	case terminate:
		key := portKey{v6: s.Dst.Addr().Is6(), port: s.Dst.Port()}
		r.goDecide(release, func() intercept.Verdict {
			if _, err := r.listener(key); err != nil {
				r.logReset(s, err)
				return intercept.Reject
			}
			r.log.Debug("terminating on-path connection", "src", s.Src, "dst", s.Dst)
			return intercept.Convert
		})
	case checkJoin:
		r.goDecide(release, func() intercept.Verdict {
			local, err := r.localToken(s.Token)
			if err != nil {
				r.log.Warn("look up MP_JOIN token; forwarding the subflow", "token", s.Token, "err", err)
			}
			if !local {
				return intercept.Accept
			}
			r.touch(portKey{v6: s.Dst.Addr().Is6(), port: s.Dst.Port()})
			r.log.Debug("terminating subflow", "src", s.Src, "dst", s.Dst, "token", s.Token)
			return intercept.Convert
		})
	case ignoreConvert:
		r.log.Debug("MP_CONVERT in a SYN without MP_CAPABLE ignored", "src", s.Src, "dst", s.Dst, "mptcp", s.MPTCP)
		release(intercept.Accept)
	default:
		release(intercept.Accept)
	}
}

// goDecide runs decide off the receive loop and releases with its verdict.
func (r *onPathRuntime) goDecide(release func(intercept.Verdict), decide func() intercept.Verdict) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		release(intercept.Accept)
		return
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		release(decide())
	}()
}

// logReset logs why a SYN that should have been terminated is reset.
func (r *onPathRuntime) logReset(s intercept.SYN, err error) {
	level := slog.LevelWarn
	if errors.Is(err, errPortsFull) {
		now := time.Now()
		r.mu.Lock()
		if now.Sub(r.fullWarn) < fullWarnEvery {
			level = slog.LevelDebug
		} else {
			r.fullWarn = now
		}
		r.mu.Unlock()
	}
	r.log.Log(context.Background(), level, "cannot terminate on-path connection; resetting it", "src", s.Src, "dst", s.Dst, "err", err)
}

// touch records a SYN for the listener of key, if it has one.
func (r *onPathRuntime) touch(key portKey) {
	now := time.Now()
	r.mu.Lock()
	if p, ok := r.ports[key]; ok {
		p.lastSYN = now
	}
	r.mu.Unlock()
}

// listener returns the transparent listener of key, opening it and handing
// it to accept on first use. With OnPath.MaxPorts listeners open it first
// closes the idlest, or fails with errPortsFull.
func (r *onPathRuntime) listener(key portKey) (*net.TCPListener, error) {
	now := time.Now()
	r.mu.Lock()
	p, ok := r.ports[key]
	if ok {
		p.lastSYN = now
		r.mu.Unlock()
		<-p.done
		return p.ln, p.err
	}
	if len(r.ports) >= r.o.MaxPorts {
		idlest, found := idlestPort(r.ports, now.Add(-r.o.PortIdle))
		if !found {
			r.mu.Unlock()
			return nil, errPortsFull
		}
		// Its accept loop ends; the connections it accepted go on.
		old := r.ports[idlest].ln
		old.Close()
		delete(r.ports, idlest)
		r.log.Info("transparent listener closed for a busier port", "addr", old.Addr().String())
	}
	p = &portListener{done: make(chan struct{}), lastSYN: now}
	r.ports[key] = p
	r.mu.Unlock()
	ln, err := listenTransparent(netip.AddrPortFrom(tproxyAddr(key.v6), key.port))
	r.mu.Lock()
	switch {
	case err != nil:
		delete(r.ports, key) // try again for the next SYN
	case r.closed:
		ln.Close()
		ln, err = nil, errors.New("on-path MCP closed")
	default:
		r.log.Info("transparent listener opened", "addr", ln.Addr().String())
		r.accept(ln)
	}
	p.ln, p.err = ln, err
	r.mu.Unlock()
	close(p.done)
	return ln, err
}

// listenTransparent opens a Multipath TCP listener with TCP Fast Open on
// addr and sets IP_TRANSPARENT (IPV6_TRANSPARENT), which TPROXY requires
// of the socket it delivers to; the kernel applies it to the listening
// subflow too (net/mptcp/sockopt.c).
func listenTransparent(addr netip.AddrPort) (*net.TCPListener, error) {
	ln, err := mptcpleg.Listen(addr, fastOpenQueueLen)
	if err != nil {
		return nil, err
	}
	if err := setTransparent(ln, addr.Addr().Is6()); err != nil {
		ln.Close()
		return nil, fmt.Errorf("transparent listener on %s: %w", addr, err)
	}
	return ln, nil
}

// setTransparent sets IP_TRANSPARENT or IPV6_TRANSPARENT on ln's socket.
func setTransparent(ln *net.TCPListener, v6 bool) error {
	rc, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	return controlTransparent(rc, v6)
}

// controlTransparent sets IP_TRANSPARENT or IPV6_TRANSPARENT on rc's socket.
func controlTransparent(rc syscall.RawConn, v6 bool) error {
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = transparent(int(fd), v6) }); err != nil {
		return err
	}
	return serr
}

// dialTransparent connects to dst from src, an address of another host
// (IP_TRANSPARENT): the server sees src as the client. The replies to src
// must be routed to this host, where the rule for transparent sockets
// delivers them.
func dialTransparent(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	d := net.Dialer{
		LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)),
		KeepAlive: -1, // the relay sets it
		Control: func(_, _ string, rc syscall.RawConn) error {
			if err := controlTransparent(rc, src.Is6()); err != nil {
				return err
			}
			return sockopt.BindAddressNoPort("", "", rc)
		},
	}
	d.SetMultipathTCP(false)
	return d.DialContext(ctx, "tcp", dst.String())
}

func transparent(fd int, v6 bool) error {
	if v6 {
		return os.NewSyscallError("setsockopt IPV6_TRANSPARENT", unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1))
	}
	return os.NewSyscallError("setsockopt IP_TRANSPARENT", unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1))
}

// Socket diagnostics (include/uapi/linux/inet_diag.h): a request for one
// socket is struct inet_diag_req_v2 (56 bytes) followed by the attribute
// INET_DIAG_REQ_PROTOCOL, because IPPROTO_MPTCP does not fit the
// request's 8-bit protocol field. For MPTCP the kernel finds the socket by
// the token in idiag_cookie[0] (net/mptcp/mptcp_diag.c, dump_one).
const (
	inetDiagReqLen      = 56
	inetDiagCookieOff   = 48
	inetDiagReqProtocol = 3
)

// localToken reports whether an MPTCP connection of this network namespace
// has the local token tok: MP_JOINs carrying it belong to this host.
func (r *onPathRuntime) localToken(tok uint32) (bool, error) {
	req := make([]byte, inetDiagReqLen)
	req[0] = unix.AF_INET
	req[1] = unix.IPPROTO_MPTCP & 0xff
	binary.NativeEndian.PutUint32(req[4:8], 0xffffffff) // every state
	binary.NativeEndian.PutUint32(req[inetDiagCookieOff:], tok)
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(inetDiagReqProtocol, unix.IPPROTO_MPTCP)
	attrs, err := ae.Encode()
	if err != nil {
		return false, err
	}
	msgs, err := r.diag.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.SOCK_DIAG_BY_FAMILY, Flags: netlink.Request},
		Data:   append(req, attrs...),
	})
	var oe *netlink.OpError
	if errors.As(err, &oe) && errors.Is(oe.Err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("mptcp socket diagnostics for token %#x: %w", tok, err)
	}
	return len(msgs) > 0, nil
}

// addLocalRouting makes packets with TProxyMark local: "ip rule add fwmark
// M/MASK lookup T" and "ip route add local default dev lo table T", for
// IPv4 and IPv6, replacing what a previous run left.
func addLocalRouting(o OnPath) error {
	delLocalRouting(o)
	lo, err := vnl.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		rt := localRoute(o, fam)
		rt.LinkIndex = lo.Attrs().Index
		if err := vnl.RouteReplace(rt); err != nil {
			delLocalRouting(o)
			return fmt.Errorf("add local route to table %d: %w", o.Table, err)
		}
		if err := vnl.RuleAdd(markRule(o, fam)); err != nil {
			delLocalRouting(o)
			return fmt.Errorf("add rule fwmark %#x/%#x lookup %d: %w", o.TProxyMark, o.MarkMask, o.Table, err)
		}
	}
	return nil
}

// delLocalRouting removes what addLocalRouting added; what is gone is fine.
func delLocalRouting(o OnPath) {
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		for vnl.RuleDel(markRule(o, fam)) == nil {
		}
		vnl.RouteDel(localRoute(o, fam))
	}
}

func markRule(o OnPath, fam int) *vnl.Rule {
	r := vnl.NewRule()
	r.Family = fam
	r.Mark = o.TProxyMark
	m := o.MarkMask
	r.Mask = &m
	r.Table = o.Table
	r.Priority = o.RulePriority
	return r
}

func localRoute(o OnPath, fam int) *vnl.Route {
	dst := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	if fam == unix.AF_INET6 {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &vnl.Route{Dst: dst, Table: o.Table, Type: unix.RTN_LOCAL, Scope: unix.RT_SCOPE_HOST, Family: fam}
}

// restore runs iptables-restore (ip6tables-restore) --noflush with script.
func restore(v6 bool, script string) error {
	prog := "iptables-restore"
	if v6 {
		prog = "ip6tables-restore"
	}
	ctx, cancel := context.WithTimeout(context.Background(), iptablesTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, prog, "-w", "--noflush")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", prog, err, strings.TrimSpace(string(out)))
	}
	return nil
}
