package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// The machine counts as quiet when it is busy less than quietBusy of its
// CPU time over quietWindow.
const (
	quietWindow  = 500 * time.Millisecond
	quietBusy    = 0.10
	quietTimeout = 30 * time.Second
)

// waitQuiet waits, at most quietTimeout, until the machine is quiet. After
// a system with thousands of connections stops, the kernel goes on closing
// them in its workers for seconds (both cores half busy for 6 s after
// redsocks and microsocks), and the next system would pay for it.
func waitQuiet() error {
	prev, err := readCPUTimes()
	if err != nil {
		return err
	}
	for end := time.Now().Add(quietTimeout); ; {
		time.Sleep(quietWindow)
		cur, err := readCPUTimes()
		if err != nil {
			return err
		}
		busy := cur.busyShare(prev)
		if busy < quietBusy {
			return nil
		}
		if time.Now().After(end) {
			return fmt.Errorf("the machine is still %.0f%% busy after %v", 100*busy, quietTimeout)
		}
		prev = cur
	}
}

// cpuTimes are the machine's CPU times, in clock ticks, from /proc/stat.
type cpuTimes struct{ busy, total uint64 }

// busyShare returns the share of the time since prev that was busy.
func (c cpuTimes) busyShare(prev cpuTimes) float64 {
	if c.total <= prev.total {
		return 0
	}
	return float64(c.busy-prev.busy) / float64(c.total-prev.total)
}

func readCPUTimes() (cpuTimes, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return parseCPULine(line)
}

// parseCPULine reads the first line of /proc/stat, "cpu" and then user,
// nice, system, idle, iowait, irq, softirq, steal, ...: idle and iowait
// are not busy.
func parseCPULine(line string) (cpuTimes, error) {
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return cpuTimes{}, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var c cpuTimes
	for i, s := range f[1:] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return cpuTimes{}, fmt.Errorf("/proc/stat: %q: %w", line, err)
		}
		c.total += v
		if i != 3 && i != 4 { // idle, iowait
			c.busy += v
		}
	}
	return c, nil
}
