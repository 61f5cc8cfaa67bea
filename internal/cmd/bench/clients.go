package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
)

// hold opens n connections to the echo server at addr, 200 at a time,
// checks that each echoes a byte, prints "held N" and keeps them open until
// stdin closes.
func hold(args []string, stdin io.Reader, out io.Writer) error {
	if len(args) != 2 {
		return errors.New("usage: bench hold ADDR N")
	}
	addr := args[0]
	n, err := strconv.Atoi(args[1])
	if err != nil || n < 1 {
		return fmt.Errorf("bad connection count %q", args[1])
	}
	conns := make([]net.Conn, n)
	errs := make(chan error, n)
	sem := make(chan struct{}, 200)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				errs <- err
				return
			}
			conns[i] = c
			c.SetDeadline(time.Now().Add(10 * time.Second))
			b := []byte{'x'}
			if _, err := c.Write(b); err != nil {
				errs <- err
				return
			}
			if _, err := io.ReadFull(c, b); err != nil {
				errs <- fmt.Errorf("echo: %w", err)
				return
			}
			c.SetDeadline(time.Time{})
		}(i)
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return fmt.Errorf("open %d connections to %s: %d failed, first: %w", n, addr, len(errs)+1, err)
	}
	fmt.Fprintf(out, "held %d\n", n)
	io.Copy(io.Discard, stdin)
	for _, c := range conns {
		c.Close()
	}
	return nil
}

// connRateResult is what connrate reports.
type connRateResult struct {
	Offered   int       `json:"offered"`   // connections attempted
	Succeeded int       `json:"succeeded"` // set up within the timeout
	Seconds   float64   `json:"seconds"`   // from the first attempt to the last completion
	P50       float64   `json:"p50_ms"`
	P99       float64   `json:"p99_ms"`
	FirstErr  string    `json:"first_error,omitempty"`
	latencies []float64 // ms
}

// connRate opens rate connections a second to the echo server at addr for
// the duration, each in its own goroutine (an open loop: a slow system does
// not slow the offered load), measures each one's setup (connect, then one
// byte echoed: a proxy on the router accepts at once, so connect alone
// would not show its own connection onward), closes it with a reset, and
// prints a connRateResult as JSON.
func connRate(args []string, out io.Writer) error {
	if len(args) != 3 {
		return errors.New("usage: bench connrate ADDR RATE DURATION")
	}
	addr := args[0]
	rate, err := strconv.Atoi(args[1])
	if err != nil || rate < 1 {
		return fmt.Errorf("bad rate %q", args[1])
	}
	dur, err := time.ParseDuration(args[2])
	if err != nil || dur <= 0 {
		return fmt.Errorf("bad duration %q", args[2])
	}
	var (
		mu  sync.Mutex
		res connRateResult
		wg  sync.WaitGroup
	)
	res.Offered = int(float64(rate) * dur.Seconds())
	const tick = time.Millisecond
	start := time.Now()
	var last time.Time
	for i := 0; i < res.Offered; i++ {
		// Attempt i is due at start + i/rate.
		if d := time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))); d > tick {
			time.Sleep(d)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			c, err := setUp(addr)
			t1 := time.Now()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if res.FirstErr == "" {
					res.FirstErr = err.Error()
				}
				return
			}
			res.Succeeded++
			res.latencies = append(res.latencies, float64(t1.Sub(t0))/float64(time.Millisecond))
			if t1.After(last) {
				last = t1
			}
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}()
	}
	wg.Wait()
	res.Seconds = last.Sub(start).Seconds()
	slices.Sort(res.latencies)
	res.P50, res.P99 = percentile(res.latencies, 0.50), percentile(res.latencies, 0.99)
	return json.NewEncoder(out).Encode(res)
}

// setUp connects to the echo server at addr and has it echo one byte,
// within 3 s.
func setUp(addr string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(3 * time.Second))
	b := []byte{'x'}
	if _, err := c.Write(b); err == nil {
		_, err = io.ReadFull(c, b)
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("echo: %w", err)
	}
	return c, nil
}

// echo serves addr: it echoes what each connection sends. It uses one
// descriptor per connection (io.Copy between sockets would splice through
// a pipe of two more), so that the idle-connection figures measure the
// systems, not the server. It prints "listening ADDR" once it accepts and
// runs until killed.
func echo(args []string, out io.Writer) error {
	if len(args) != 1 {
		return errors.New("usage: bench echo ADDR")
	}
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp", args[0])
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "listening %s\n", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			fmt.Fprintln(os.Stderr, "bench echo: accept:", err)
			time.Sleep(10 * time.Millisecond) // out of descriptors: wait for closes
			continue
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 512)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}

// percentile returns the p-quantile of sorted (nearest rank), or NaN.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return nan()
	}
	i := int(p*float64(len(sorted))+0.999999) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

func nan() float64 { return math.NaN() }

func subcommand(name string, args []string) {
	var err error
	switch name {
	case "hold":
		err = hold(args, os.Stdin, os.Stdout)
	case "connrate":
		err = connRate(args, os.Stdout)
	case "echo":
		err = echo(args, os.Stdout)
	case "ctflush":
		err = flushConntrack()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench "+name+":", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// flushConntrack empties the IPv4 connection-tracking table of the network
// namespace it runs in: entries a system's NAT or redirect rules left for
// a 4-tuple would otherwise steer the next system's connection with the
// same tuple.
func flushConntrack() error {
	if err := netlink.ConntrackTableFlush(netlink.ConntrackTable); err != nil {
		return fmt.Errorf("flush conntrack: %w", err)
	}
	return nil
}
