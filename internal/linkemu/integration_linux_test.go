package linkemu_test

import (
	"context"
	"errors"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/mcpagent/mcpagent/internal/testbed"
)

// Addresses of the testbed (scripts/testbed.sh).
const (
	serverAddr = "203.0.113.10" // srv, reached over DSL
	mcpAddr    = "198.51.100.1" // mcp, reached over LTE in this test
	testPort   = "9000"
)

// TestIntegrationCalibration checks the emulated links of the testbed
// against their settings, measured from the LAN host through the router
// (the traffic the testbed carries is forwarded, as a real access link's):
// the connect time (one round trip) and the goodput of one TCP download
// within 10 % of the settings, the spread that jitter adds, the loss of UDP
// datagrams within 20 %, and changes of delay, rate and state while
// traffic runs.
func TestIntegrationCalibration(t *testing.T) {
	tb := testbed.Up(t, testbed.Options{Emulate: true, DSLLink: "delay=10ms", LTELink: "delay=30ms"})
	// The router's default route is DSL; reach the MCP host over LTE.
	tb.Run(t, "cpe", "ip", "route", "add", mcpAddr+"/32", "via", "100.64.0.1", "dev", "wan1")

	profiles := []struct {
		name, node, addr string
		rate             float64 // bit/s, the testbed's default tbf rate
		delay            time.Duration
	}{
		{name: "DSL 20 Mbit/s 10 ms", node: "srv", addr: serverAddr, rate: 20e6, delay: 10 * time.Millisecond},
		{name: "LTE 40 Mbit/s 30 ms", node: "mcp", addr: mcpAddr, rate: 40e6, delay: 30 * time.Millisecond},
	}
	for _, p := range profiles {
		t.Run(p.name, func(t *testing.T) {
			ln := listen(t, tb, p.node, p.addr)
			rtt := medianConnectTime(t, tb, ln, 21)
			checkWithin(t, "round-trip time (ms)", ms(rtt), ms(2*p.delay), 0.10)
			s := startDownload(t, tb, ln)
			got := s.rate(time.Second, 4*time.Second)
			checkWithin(t, "one TCP flow's goodput (Mbit/s)", got/1e6, p.rate/1e6, 0.10)
		})
	}

	t.Run("changes while traffic runs", func(t *testing.T) {
		ln := listen(t, tb, "srv", serverAddr)
		s := startDownload(t, tb, ln)
		s.rate(time.Second, time.Second) // past slow start
		tb.SetLink(t, "dsl", "rate=10mbit")
		got := s.rate(time.Second, 3*time.Second)
		checkWithin(t, "goodput after rate=10mbit (Mbit/s)", got/1e6, 10, 0.10)
		tb.SetLink(t, "dsl", "delay=40ms")
		time.Sleep(100 * time.Millisecond) // the emulator re-reads on SIGHUP
		s.stop()
		rtt := medianConnectTime(t, tb, ln, 11)
		checkWithin(t, "round-trip time after delay=40ms (ms)", ms(rtt), 80, 0.10)

		tb.SetLink(t, "dsl", "down")
		time.Sleep(100 * time.Millisecond) // the emulator re-reads on SIGHUP
		if c, err := dial(t, tb, ln, 500*time.Millisecond); err == nil {
			c.Close()
			t.Fatal("connected over a link that is down")
		}
		tb.SetLink(t, "dsl", "up", "rate=20mbit", "delay=10ms")
		time.Sleep(100 * time.Millisecond)
		c, err := dial(t, tb, ln, 2*time.Second)
		if err != nil {
			t.Fatalf("no connection after the link came back up: %v", err)
		}
		c.Close()
	})

	t.Run("jitter", func(t *testing.T) {
		ln := listen(t, tb, "srv", serverAddr)
		tb.SetLink(t, "dsl", "jitter=5ms")
		time.Sleep(100 * time.Millisecond)
		times := connectTimes(t, tb, ln, 61)
		tb.SetLink(t, "dsl", "jitter=0s")
		// Each direction adds 10 ms ± 5 ms, uniform: the round trip
		// spreads over 10-30 ms, with quartiles 5.9 ms apart. A packet
		// never leaves before the one ahead of it, which lifts the
		// median above 20 ms; by less than half the jitter each way.
		med := ms(times[len(times)/2])
		if med < 18 || med > 27.5 {
			t.Errorf("round-trip time with jitter=5ms: median %.3f ms, want 20-25 ms (± 10 %%)", med)
		}
		iqr := ms(times[len(times)*3/4] - times[len(times)/4])
		t.Logf("round-trip time with jitter=5ms: median %.3f ms, quartiles %.3f ms apart, range %.3f-%.3f ms", med, iqr, ms(times[0]), ms(times[len(times)-1]))
		if iqr < 2.5 {
			t.Errorf("round-trip times with jitter=5ms have quartiles %.3f ms apart, want at least 2.5 ms", iqr)
		}
		if lo, hi := ms(times[0]), ms(times[len(times)-1]); lo < 9 || hi > 33 {
			t.Errorf("round-trip times with jitter=5ms span %.3f-%.3f ms, want within 10-30 ms (± 10 %%)", lo, hi)
		}
	})

	t.Run("loss", func(t *testing.T) {
		const want = 0.10
		tb.SetLink(t, "dsl", "loss=0.1")
		time.Sleep(100 * time.Millisecond)
		got := udpLoss(t, tb, 10000)
		checkWithin(t, "loss of UDP datagrams over DSL", got, want, 0.20)
	})
}

// checkWithin fails t unless got is within frac of want.
func checkWithin(t *testing.T, what string, got, want, frac float64) {
	t.Helper()
	t.Logf("%s: %.3f, setting %.3f", what, got, want)
	if got < want*(1-frac) || got > want*(1+frac) {
		t.Errorf("%s = %.3f, want %.3f ± %.0f %%", what, got, want, frac*100)
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// inNode runs f on an OS thread that is in node's network namespace for
// the call; sockets f makes belong to that namespace.
func inNode[T any](t *testing.T, tb *testbed.Testbed, node string, f func() (T, error)) (T, error) {
	t.Helper()
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		var r result
		defer func() { ch <- r }()
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			r.err = err
			runtime.UnlockOSThread()
			return
		}
		defer orig.Close()
		ns, err := netns.GetFromName(tb.NS(node))
		if err != nil {
			r.err = err
			runtime.UnlockOSThread()
			return
		}
		defer ns.Close()
		if r.err = netns.Set(ns); r.err != nil {
			runtime.UnlockOSThread()
			return
		}
		r.v, r.err = f()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: it ends with this goroutine
			// instead of running others in node's namespace.
			r.err = errors.Join(r.err, err)
			return
		}
		runtime.UnlockOSThread()
	}()
	r := <-ch
	return r.v, r.err
}

// server is a TCP listener on a testbed node that accepts connections
// and, for each, sends zeros until the peer closes.
type server struct {
	ln net.Listener
	tb *testbed.Testbed
}

func listen(t *testing.T, tb *testbed.Testbed, node, addr string) *server {
	t.Helper()
	ln, err := inNode(t, tb, node, func() (net.Listener, error) {
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		return lc.Listen(context.Background(), "tcp", net.JoinHostPort(addr, testPort))
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", node, err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 64<<10)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				for {
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	return &server{ln: ln, tb: tb}
}

// dial connects from the LAN host to s.
func dial(t *testing.T, tb *testbed.Testbed, s *server, timeout time.Duration) (net.Conn, error) {
	t.Helper()
	return inNode(t, tb, "lan", func() (net.Conn, error) {
		return net.DialTimeout("tcp", s.ln.Addr().String(), timeout)
	})
}

// medianConnectTime returns the median of n connect times from the LAN
// host to s: each is one round trip (SYN, SYN-ACK).
func medianConnectTime(t *testing.T, tb *testbed.Testbed, s *server, n int) time.Duration {
	t.Helper()
	times := connectTimes(t, tb, s, n)
	return times[n/2]
}

// connectTimes returns n connect times from the LAN host to s, sorted.
func connectTimes(t *testing.T, tb *testbed.Testbed, s *server, n int) []time.Duration {
	t.Helper()
	var times []time.Duration
	for i := 0; i < n; i++ {
		start := time.Now()
		c, err := dial(t, tb, s, 3*time.Second)
		took := time.Since(start)
		if err != nil {
			t.Fatalf("connect %d: %v", i, err)
		}
		c.Close()
		times = append(times, took)
		time.Sleep(20 * time.Millisecond)
	}
	slices.Sort(times)
	return times
}

// download is one running TCP download from a server to the LAN host.
type download struct {
	t     *testing.T
	c     net.Conn
	bytes atomic.Int64
	done  chan struct{}
}

func startDownload(t *testing.T, tb *testbed.Testbed, s *server) *download {
	t.Helper()
	c, err := dial(t, tb, s, 3*time.Second)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	d := &download{t: t, c: c, done: make(chan struct{})}
	go func() {
		defer close(d.done)
		buf := make([]byte, 256<<10)
		for {
			n, err := c.Read(buf)
			d.bytes.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(d.stop)
	return d
}

// rate waits skip, then returns the goodput in bit/s over the next span.
func (d *download) rate(skip, span time.Duration) float64 {
	time.Sleep(skip)
	b0, t0 := d.bytes.Load(), time.Now()
	time.Sleep(span)
	b1, t1 := d.bytes.Load(), time.Now()
	select {
	case <-d.done:
		d.t.Fatal("the download ended early")
	default:
	}
	return float64(b1-b0) * 8 / t1.Sub(t0).Seconds()
}

func (d *download) stop() {
	d.c.Close()
	<-d.done
}

// udpLoss sends n datagrams from the LAN host to the server over DSL, 5000
// a second (6 Mbit/s on the wire, well below the link's rate), and returns
// the fraction that did not arrive.
func udpLoss(t *testing.T, tb *testbed.Testbed, n int) float64 {
	t.Helper()
	rc, err := inNode(t, tb, "srv", func() (*net.UDPConn, error) {
		return net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(serverAddr), Port: 9001})
	})
	if err != nil {
		t.Fatalf("listen in srv: %v", err)
	}
	defer rc.Close()
	rc.SetReadBuffer(4 << 20)
	sc, err := inNode(t, tb, "lan", func() (*net.UDPConn, error) {
		return net.DialUDP("udp", nil, rc.LocalAddr().(*net.UDPAddr))
	})
	if err != nil {
		t.Fatalf("dial from lan: %v", err)
	}
	defer sc.Close()

	var got atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			if _, err := rc.Read(buf); err != nil {
				return
			}
			got.Add(1)
		}
	}()
	msg := make([]byte, 100)
	start := time.Now()
	const burst = 50 // per 10 ms
	for i := 0; i < n; i++ {
		if i%burst == 0 {
			time.Sleep(time.Until(start.Add(time.Duration(i/burst) * 10 * time.Millisecond)))
		}
		if _, err := sc.Write(msg); err != nil {
			t.Fatalf("send datagram %d: %v", i, err)
		}
	}
	time.Sleep(500 * time.Millisecond) // the last ones are still in the link
	rc.Close()
	<-done
	return 1 - float64(got.Load())/float64(n)
}
