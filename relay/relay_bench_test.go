//go:build linux

package relay

import (
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// A starter relays f and returns a function that waits until the pair
// has ended.
type starter func(tb testing.TB, f *fixture) (wait func())

func relayStarter(r *Relay) starter {
	return func(tb testing.TB, f *fixture) func() {
		e := add(tb, r, f)
		return func() { e.wait(tb) }
	}
}

// ioCopyStarter is the baseline relay: two goroutines, each an io.Copy
// (which splices between TCP sockets) followed by a half-close.
func ioCopyStarter(_ testing.TB, f *fixture) func() {
	var wg sync.WaitGroup
	wg.Add(2)
	go ioCopyHalf(f.b, f.a, &wg)
	go ioCopyHalf(f.a, f.b, &wg)
	return func() {
		wg.Wait()
		f.a.Close()
		f.b.Close()
	}
}

func ioCopyHalf(dst, src *net.TCPConn, wg *sync.WaitGroup) {
	defer wg.Done()
	io.Copy(dst, src)
	dst.CloseWrite()
}

// relayImpls are the relays the benchmarks compare.
var relayImpls = []struct {
	name  string
	start func(tb testing.TB) starter
}{
	{"epoll", func(tb testing.TB) starter { return relayStarter(newRelay(tb, Config{})) }},
	{"iocopy", func(testing.TB) starter { return ioCopyStarter }},
}

// BenchmarkRelayThroughput moves bytes one way through one pair over
// loopback.
func BenchmarkRelayThroughput(b *testing.B) {
	for _, impl := range relayImpls {
		for _, mptcp := range []bool{false, true} {
			name := impl.name + "/tcp"
			if mptcp {
				name = impl.name + "/mptcp"
			}
			b.Run(name, func(b *testing.B) { benchThroughput(b, impl.start(b), mptcp) })
		}
	}
}

func benchThroughput(b *testing.B, start starter, mptcpB bool) {
	const chunk = 1 << 20
	f := newFixture(b, newListener(b, false), newListener(b, mptcpB))
	defer f.closePeers()
	wait := start(b, f)
	src, dst := make([]byte, chunk), make([]byte, 256<<10)
	b.SetBytes(chunk)
	b.ResetTimer()
	writeErr := make(chan error, 1)
	go func() {
		for i := 0; i < b.N; i++ {
			if _, err := f.peerA.Write(src); err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- f.peerA.CloseWrite()
	}()
	var got int64
	for {
		n, err := f.peerB.Read(dst)
		got += int64(n)
		if err == io.EOF {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if err := <-writeErr; err != nil {
		b.Fatal(err)
	}
	if want := int64(b.N) * chunk; got != want {
		b.Fatalf("received %d bytes, want %d", got, want)
	}
	f.peerB.CloseWrite()
	wait()
}

// BenchmarkIdlePairMemory measures what 1,000 idle relayed pairs cost
// beyond their sockets: resident memory, Go heap and stacks, goroutines and
// descriptors per pair.
func BenchmarkIdlePairMemory(b *testing.B) {
	for _, impl := range relayImpls {
		b.Run(impl.name, func(b *testing.B) {
			start := impl.start(b)
			var m idleMemory
			for i := 0; i < b.N; i++ {
				m = measureIdlePairs(b, 1000, start)
			}
			b.ReportMetric(float64(m.RSS), "rss-B/pair")
			b.ReportMetric(float64(m.Heap), "heap+stack-B/pair")
			b.ReportMetric(m.Goroutines, "goroutines/pair")
			b.ReportMetric(m.FDs, "fds/pair")
		})
	}
}

// idleMemory is the cost of one idle relayed pair.
type idleMemory struct {
	RSS, Heap       int64 // bytes
	Goroutines, FDs float64
}

func (m idleMemory) String() string {
	return fmt.Sprintf("%d B resident, %d B Go heap and stacks, %.2f goroutines, %.2f descriptors",
		m.RSS, m.Heap, m.Goroutines, m.FDs)
}

// measureIdlePairs opens n pairs, measures, relays them, passes one byte
// each way so every relay is in its steady idle state, measures again and
// tears the pairs down.
func measureIdlePairs(tb testing.TB, n int, start starter) idleMemory {
	tb.Helper()
	la, lb := newListener(tb, false), newListener(tb, true)
	fs := make([]*fixture, n)
	for i := range fs {
		fs[i] = newFixture(tb, la, lb)
	}
	before := takeSample(tb)
	waits := make([]func(), n)
	for i, f := range fs {
		waits[i] = start(tb, f)
	}
	buf := make([]byte, 1)
	for _, f := range fs {
		for _, hop := range [][2]*net.TCPConn{{f.peerA, f.peerB}, {f.peerB, f.peerA}} {
			if _, err := hop[0].Write(buf); err != nil {
				tb.Fatal(err)
			}
			if _, err := io.ReadFull(hop[1], buf); err != nil {
				tb.Fatal(err)
			}
		}
	}
	after := takeSample(tb)
	for _, f := range fs {
		f.closePeers()
	}
	for _, wait := range waits {
		wait()
	}
	return idleMemory{
		RSS:        (after.rss - before.rss) / int64(n),
		Heap:       (after.heap - before.heap) / int64(n),
		Goroutines: float64(after.goroutines-before.goroutines) / float64(n),
		FDs:        float64(after.fds-before.fds) / float64(n),
	}
}

type sample struct {
	rss, heap       int64
	goroutines, fds int
}

func takeSample(tb testing.TB) sample {
	tb.Helper()
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	statm, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		tb.Fatal(err)
	}
	fields := strings.Fields(string(statm))
	if len(fields) < 2 {
		tb.Fatalf("/proc/self/statm: %q", statm)
	}
	pages, err := strconv.ParseInt(fields[1], 10, 64)
	if err != nil {
		tb.Fatal(err)
	}
	return sample{
		rss:        pages * int64(os.Getpagesize()),
		heap:       int64(ms.HeapInuse + ms.StackInuse),
		goroutines: runtime.NumGoroutine(),
		fds:        openFDs(tb),
	}
}
