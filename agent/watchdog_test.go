package agent

import (
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestWatch feeds the watchdog beats and ticks at chosen times: it must
// stay quiet while beats come, fire once when they stop for longer than
// the limit, and return without firing when stopped.
func TestWatch(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	type step struct {
		tick bool    // a tick, else a beat
		at   float64 // seconds after t0
	}
	beat := func(s float64) step { return step{false, s} }
	// ticks returns a tick each second from a to b.
	ticks := func(a, b int) []step {
		var st []step
		for s := a; s <= b; s++ {
			st = append(st, step{true, float64(s)})
		}
		return st
	}
	seq := func(parts ...[]step) []step { return slices.Concat(parts...) }
	tests := []struct {
		name  string
		steps []step // after a beat at t0, with the watchdog ticking each second
		want  []time.Duration
	}{
		{"beating", seq(ticks(1, 1), []step{beat(1)}, ticks(2, 2), []step{beat(2)}, ticks(3, 31), []step{beat(31)}, ticks(32, 61)), nil},
		{"exactly at the limit", ticks(1, 30), nil},
		{"stopped", seq(ticks(1, 1), []step{beat(1)}, ticks(2, 33)), []time.Duration{31 * time.Second}},
		{"fires once", ticks(1, 33), []time.Duration{31 * time.Second}},
		{"process paused", seq(ticks(1, 1), []step{beat(1)}, ticks(2, 2), ticks(40, 40), []step{beat(40.5)}, ticks(41, 45)), nil},
		{"wedged across a pause", seq(ticks(1, 1), []step{beat(1)}, ticks(2, 2), ticks(40, 72)), []time.Duration{31 * time.Second}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var last atomic.Int64 // since t0
			tickc, stop, done := make(chan time.Time), make(chan struct{}), make(chan struct{})
			var got []time.Duration
			go func() {
				defer close(done)
				watch(tickc, stop, t0, &last, time.Second, wedgedAfter, func(d time.Duration) { got = append(got, d) })
			}()
			for _, s := range tc.steps {
				d := time.Duration(s.at * float64(time.Second))
				if !s.tick {
					last.Store(int64(d))
					continue
				}
				at := t0.Add(d)
				select {
				case tickc <- at:
				case <-done: // fired and returned: later ticks go nowhere
				}
			}
			close(stop)
			<-done
			if len(got) != len(tc.want) || (len(got) == 1 && got[0] != tc.want[0]) {
				t.Errorf("wedged called with %v, want %v", got, tc.want)
			}
		})
	}
}

// TestCrashInChild runs crash in a child process: it must exit with an
// error status, say why, and print the stacks of all goroutines, the one
// parked on a lock included.
func TestCrashInChild(t *testing.T) {
	if os.Getenv("MCPAGENT_TEST_CRASH") == "1" {
		var mu sync.Mutex
		mu.Lock()
		go func() { mu.Lock() }() // a goroutine parked on a lock, as in a deadlock
		time.Sleep(10 * time.Millisecond)
		crash(slog.New(slog.NewTextHandler(os.Stderr, nil)), 31*time.Second)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashInChild$")
	cmd.Env = append(os.Environ(), "MCPAGENT_TEST_CRASH=1")
	out, err := cmd.CombinedOutput()
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() == 0 {
		t.Fatalf("child ended with %v, want a non-zero exit status\n%s", err, out)
	}
	for _, want := range []string{
		`msg="agent wedged: its sweep has stopped; exiting so that SYNs bypass the queue" stalled=31s`,
		"panic: agent wedged: no sweep for 31s",
		"[sync.Mutex.Lock]", // the parked goroutine's stack
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("child's output lacks %q:\n%s", want, out)
		}
	}
}
