package agent

import (
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/mcpagent/mcpagent/firewall"
)

// wedgedAfter is how long the agent's periodic sweep may go without
// finishing a round before the watchdog takes the agent for wedged. The
// sweep takes the locks that every SYN takes, so a deadlock on one of them
// stops it; a busy router delays it by seconds at most.
const wedgedAfter = 30 * time.Second

// heldSYNGrace is how long past the leg timeout a SYN may stay held before
// the sweep accepts it unconverted: the converter always releases a SYN
// within the leg timeout, so one held longer shows a fault.
const heldSYNGrace = 5 * time.Second

// watch calls wedged once, and returns, at the first tick at which the last
// beat is more than limit old; it returns when stop closes. beat holds the
// time of the last beat as a time.Duration since start: with start and the
// ticks from time.Now, the monotonic clock measures, so that a router
// setting its clock at boot does not look wedged. Ticks come every period;
// a tick much later than the one before shows that the whole process did
// not run (a paused virtual machine, SIGSTOP, a starved CPU), and the
// stall is counted afresh from it, so that the sweep gets its turn first.
func watch(ticks <-chan time.Time, stop <-chan struct{}, start time.Time, beat *atomic.Int64, period, limit time.Duration, wedged func(stalled time.Duration)) {
	var prev time.Time
	var resumed time.Duration // since start: the stall counts from the later of it and the last beat
	for {
		select {
		case <-stop:
			return
		case now := <-ticks:
			at := now.Sub(start)
			if !prev.IsZero() && now.Sub(prev) > 2*period {
				resumed = at
			}
			prev = now
			if stalled := at - max(time.Duration(beat.Load()), resumed); stalled > limit {
				wedged(stalled)
				return
			}
		}
	}
}

// crash ends a wedged agent. A process that holds the queue but no longer
// answers it holds up every new connection of the LAN; once it has exited,
// the kernel lets SYNs bypass the queue and the service manager restarts
// it. The undo steps of Run do not run: they would wait on the same locks.
// The stacks of all goroutines go to standard error, to show the deadlock.
func crash(log *slog.Logger, stalled time.Duration) {
	log.Error("agent wedged: its sweep has stopped; exiting so that SYNs bypass the queue", "stalled", stalled.Round(time.Millisecond).String())
	debug.SetTraceback("all")
	panic(fmt.Sprintf("agent wedged: no sweep for %s", stalled.Round(time.Millisecond)))
}

// heartbeat returns a function that sends one round of the firewall's
// heartbeats, which keep SYNs coming to the queue, and logs when they start
// failing (the rules were removed behind the agent's back, say) and when
// they work again, not every failure.
func heartbeat(hb *firewall.Heartbeat, log *slog.Logger) func() {
	var failing string
	return func() {
		err := hb.Beat()
		switch {
		case err != nil && err.Error() != failing:
			failing = err.Error()
			log.Error("heartbeat failed: SYNs of its address family bypass the agent until one succeeds", "err", err)
		case err == nil && failing != "":
			failing = ""
			log.Info("heartbeats reach the firewall rules again")
		}
	}
}
