package firewall

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mcpagent/mcpagent/internal/netnstest"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// inNetNS runs f on a thread switched into ns; sockets f creates stay in
// ns.
func inNetNS(t *testing.T, ns netns.NsHandle, f func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			// The thread cannot be trusted any more; locked, it ends with
			// the goroutine.
			panic(err)
		}
	}()
	f()
}

// newHost makes an anonymous network namespace linked to this one by a veth
// pair: here is routerIf with routerAddr, there is the host's end with
// hostAddr and a default route via routerAddr.
func newHost(t *testing.T, routerIf, routerAddr, hostAddr string) netns.NsHandle {
	t.Helper()
	var ns netns.NsHandle
	func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		orig, err := netns.Get()
		if err != nil {
			t.Fatal(err)
		}
		defer orig.Close()
		if ns, err = netns.New(); err != nil {
			t.Fatal(err)
		}
		if err := netns.Set(orig); err != nil {
			panic(err)
		}
	}()
	t.Cleanup(func() { ns.Close() })
	// Without duplicate address detection on the link-local addresses too,
	// the first IPv6 connection waits for it to finish.
	noDAD := func() {
		if err := os.WriteFile("/proc/sys/net/ipv6/conf/default/accept_dad", []byte("0"), 0); err != nil {
			t.Fatal(err)
		}
	}
	noDAD()
	inNetNS(t, ns, noDAD)
	peer := routerIf + "p"
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: routerIf}, PeerName: peer}))
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(routerIf); err == nil {
			netlink.LinkDel(l)
		}
	})
	l, err := netlink.LinkByName(routerIf)
	must(err)
	must(netlink.AddrAdd(l, parseAddr(t, routerAddr)))
	must(netlink.LinkSetUp(l))
	p, err := netlink.LinkByName(peer)
	must(err)
	must(netlink.LinkSetNsFd(p, int(ns)))

	h, err := netlink.NewHandleAt(ns)
	must(err)
	defer h.Close()
	lo, err := h.LinkByName("lo")
	must(err)
	must(h.LinkSetUp(lo))
	p, err = h.LinkByName(peer)
	must(err)
	must(h.AddrAdd(p, parseAddr(t, hostAddr)))
	must(h.LinkSetUp(p))
	gw, _, err := net.ParseCIDR(routerAddr)
	must(err)
	must(h.RouteAdd(&netlink.Route{LinkIndex: p.Attrs().Index, Gw: gw}))
	return ns
}

// parseAddr parses an address with prefix length; an IPv6 address skips
// duplicate address detection, so it is usable at once.
func parseAddr(t *testing.T, s string) *netlink.Addr {
	t.Helper()
	a, err := netlink.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	if a.IP.To4() == nil {
		a.Flags |= unix.IFA_F_NODAD
	}
	return a
}

// acceptOne accepts one connection on ln and returns its local address and
// first line, or the error.
func acceptOne(ln net.Listener) <-chan string {
	ch := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- err.Error()
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 5)
		if _, err := io.ReadFull(c, buf); err != nil {
			ch <- fmt.Sprintf("%s read: %v", c.LocalAddr(), err)
			return
		}
		ch <- fmt.Sprintf("%s %s", c.LocalAddr(), buf)
	}()
	return ch
}

// TestIntegrationDataPath sends real connections from a LAN host through
// the iptables rules; see testDataPath.
func TestIntegrationDataPath(t *testing.T) {
	netnstest.RequireIsolatedRoot(t)
	netnstest.RequireTool(t, programs...)
	testDataPath(t, dataPathBackend{
		install: func(t *testing.T, r Rules) *Firewall {
			fw, err := Install(context.Background(), BackendIPTables, r, nil)
			if err != nil {
				t.Fatal(err)
			}
			return fw
		},
		markSYN: func(t *testing.T, r Rules, v6 bool, port string, mark uint32) {
			// Ahead of the agent's chain, which leaves marked SYNs alone.
			prog := familyOf(v6).iptables
			spec := []string{"PREROUTING", "-i", "lan0", "-p", "tcp", "--syn", "--dport", port, "-j", "MARK", "--set-xmark", markArg(markValue{mark, r.MarkMask})}
			cmd(t, "", append([]string{prog, "-w", "-t", "mangle", "-I"}, spec...)...)
			t.Cleanup(func() { cmd(t, "", append([]string{prog, "-w", "-t", "mangle", "-D"}, spec...)...) })
		},
		queued: func(t *testing.T, v6 bool) uint64 {
			listing := cmd(t, "", familyOf(v6).iptables, "-w", "-t", "mangle", "-L", chainIntercept, "-n", "-v", "-x")
			return counted(t, listing, `(?m)^\s*(\d+)\s+\d+\s+NFQUEUE`)
		},
	})
}

// dataPathNet is one address family's addresses in testDataPath.
type dataPathNet struct {
	name               string
	v6                 bool
	routerLAN, lanHost string // with prefix length
	routerWAN, server  string // with prefix length
	forwarding         string
}

var dataPathNets = []dataPathNet{
	{"IPv4", false, "192.168.7.1/24", "192.168.7.2/24", "198.51.100.254/24", "198.51.100.1/24", "/proc/sys/net/ipv4/ip_forward"},
	{"IPv6", true, "fd00:7::1/64", "fd00:7::2/64", "2001:db8:100::fe/64", "2001:db8:100::1/64", "/proc/sys/net/ipv6/conf/all/forwarding"},
}

// testDataPath sends, for IPv4 and IPv6, real connections from a LAN host
// through the rules that install puts in place, with SYN marks applied by
// markSYN the way the agent's verdicts would: unmarked SYNs flow on although
// nobody reads the queue; a SYN with the reject mark is answered with a
// reset; a SYN with the convert mark, and the rest of its connection, reach
// a transparent listener; traffic to the router's own address is left
// alone.
//
// It also checks the heartbeats: SYNs reach the queue rule, as queued
// counts them, only within AliveTimeout of a heartbeat.
func testDataPath(t *testing.T, b dataPathBackend) {
	for _, n := range dataPathNets {
		t.Run(n.name, func(t *testing.T) { testDataPathNet(t, n, b) })
	}
}

// dataPathBackend is what testDataPath needs of a backend.
type dataPathBackend struct {
	install func(t *testing.T, r Rules) *Firewall
	// markSYN marks the LAN's SYNs to port with mark ahead of the rules.
	markSYN func(t *testing.T, r Rules, v6 bool, port string, mark uint32)
	// queued returns how many packets the queue rule of the family has
	// taken.
	queued func(t *testing.T, v6 bool) uint64
}

func testDataPathNet(t *testing.T, n dataPathNet, b dataPathBackend) {
	install, markSYN := b.install, b.markSYN
	if err := os.WriteFile(n.forwarding, []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	lan := newHost(t, "lan0", n.routerLAN, n.lanHost)
	server := newHost(t, "wan0", n.routerWAN, n.server)
	network, family, sol, transparent := "tcp4", netlink.FAMILY_V4, unix.SOL_IP, unix.IP_TRANSPARENT
	if n.v6 {
		network, family, sol, transparent = "tcp6", netlink.FAMILY_V6, unix.SOL_IPV6, unix.IPV6_TRANSPARENT
	}
	ip := func(prefixed string) string { return strings.Split(prefixed, "/")[0] }
	addr := func(prefixed, port string) string { return net.JoinHostPort(ip(prefixed), port) }

	r := testRules()
	r.LANInterfaces = []string{"lan0"}
	r.AliveTimeout = time.Second
	fw := install(t, r)
	t.Cleanup(func() { fw.Close() })
	// Stand-ins for the agent's verdicts on SYNs to ports 81 to 83, and
	// for package route's TPROXY routing.
	for port, mark := range map[string]uint32{"81": r.RejectMark, "82": r.ConvertMark, "83": r.ConvertMark} {
		markSYN(t, r, n.v6, port, mark)
	}
	mask := r.MarkMask
	rule := netlink.NewRule()
	rule.Family, rule.Priority, rule.Table, rule.Mark, rule.Mask = family, 100, 100, r.TProxyMark, &mask
	if err := netlink.RuleAdd(rule); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netlink.RuleDel(rule) })
	local := &netlink.Route{Table: 100, Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST, LinkIndex: 1,
		Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}}
	if n.v6 {
		local.Dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	if err := netlink.RouteAdd(local); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netlink.RouteDel(local) })

	// The server answers on 80, 81 and the port of the agent's transparent
	// listener, and would refuse 82 and 83.
	tproxyPort := fmt.Sprint(r.TProxyPort)
	servers := map[string]<-chan string{}
	listeners := map[string]net.Listener{}
	inNetNS(t, server, func() {
		for _, port := range []string{"80", "81", tproxyPort} {
			ln, err := net.Listen(network, addr(n.server, port))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			listeners[port] = ln
			servers[port] = acceptOne(ln)
		}
	})
	// The agent's transparent listener, and a service of the router.
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), sol, transparent, 1) }); err != nil {
			return err
		}
		return serr
	}}
	lc.SetMultipathTCP(false)
	listenAt := r.TProxyListeners()[0]
	if n.v6 {
		listenAt = r.TProxyListeners()[1]
	}
	tproxy, err := lc.Listen(context.Background(), network, listenAt.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tproxy.Close() })
	service, err := net.Listen(network, addr(n.routerLAN, "83"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { service.Close() })

	dial := func(addr string) error {
		var err error
		var c net.Conn
		inNetNS(t, lan, func() { c, err = net.DialTimeout(network, addr, 3*time.Second) })
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("hello"))
		return err
	}
	get := func(ch <-chan string) string {
		select {
		case s := <-ch:
			return s
		case <-time.After(5 * time.Second):
			return "nothing accepted"
		}
	}

	// Nobody reads the queue: the SYN is accepted and forwarded. Before
	// the first heartbeat it does not even reach the queue rule; within
	// AliveTimeout of one it does; after that, no more.
	hb, err := NewHeartbeat(r)
	if err != nil {
		t.Fatal(err)
	}
	defer hb.Close()
	for _, step := range []struct {
		name   string
		before func()
		queued uint64
	}{
		{"no heartbeat yet", func() {}, 0},
		{"heartbeat", func() {
			if err := hb.Beat(); err != nil {
				t.Errorf("Beat: %v", err)
			}
		}, 1},
		{"heartbeat expired", func() { time.Sleep(r.AliveTimeout + 100*time.Millisecond) }, 0},
		{"heartbeat again", func() {
			if err := hb.Beat(); err != nil {
				t.Errorf("Beat: %v", err)
			}
		}, 1},
	} {
		// Counted first: listing the rules takes a while, which must not
		// come between the heartbeat and the connection.
		before := b.queued(t, n.v6)
		step.before()
		if err := dial(addr(n.server, "80")); err != nil {
			t.Errorf("%s: unmarked connection through the router: %v", step.name, err)
		} else if got := get(servers["80"]); got != addr(n.server, "80")+" hello" {
			t.Errorf("%s: server on port 80 got %q", step.name, got)
		}
		servers["80"] = acceptOne(listeners["80"])
		if got := b.queued(t, n.v6) - before; got != step.queued {
			t.Errorf("%s: the queue rule took %d SYNs, want %d", step.name, got, step.queued)
		}
	}
	// A server port that is the transparent listener's own: only
	// connections the agent converted belong to that listener, which
	// listens on every address.
	if err := dial(addr(n.server, tproxyPort)); err != nil {
		t.Errorf("unmarked connection to the server's port %s: %v", tproxyPort, err)
	} else if got := get(servers[tproxyPort]); got != addr(n.server, tproxyPort)+" hello" {
		t.Errorf("server on port %s got %q", tproxyPort, got)
	}
	// The reject mark: a reset from the router, although the server listens.
	start := time.Now()
	if err := dial(addr(n.server, "81")); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("connection with the reject mark: %v, want connection refused", err)
	} else if d := time.Since(start); d > time.Second {
		t.Errorf("reset took %v", d)
	}
	// The convert mark: the transparent listener gets the connection, with
	// the original destination, and its data.
	tproxied := acceptOne(tproxy)
	if err := dial(addr(n.server, "82")); err != nil {
		t.Errorf("connection with the convert mark: %v", err)
	} else if got := get(tproxied); got != addr(n.server, "82")+" hello" {
		t.Errorf("transparent listener got %q", got)
	}
	// The router's own address: never diverted, even with a mark.
	direct := acceptOne(service)
	stray := acceptOne(tproxy)
	if err := dial(addr(n.routerLAN, "83")); err != nil {
		t.Errorf("connection to the router: %v", err)
	} else if got := get(direct); got != addr(n.routerLAN, "83")+" hello" {
		t.Errorf("router's listener got %q", got)
	}
	tproxy.Close()
	if got := get(stray); got == addr(n.routerLAN, "83")+" hello" {
		t.Error("the transparent listener got the connection to the router")
	}

	// Without the rules, a heartbeat goes through, and Beat says so.
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := hb.Beat(); err == nil || !strings.Contains(err.Error(), "no longer installed") {
		t.Errorf("Beat without the rules: %v, want an error saying they are gone", err)
	}
}
