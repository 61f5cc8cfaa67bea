//go:build !linux

package testbed

import (
	"os/exec"
	"testing"
)

// Counters is not supported on this OS: it fails t.
func (tb *Testbed) Counters(t testing.TB, node, ifname string) (rxBytes, txBytes uint64) {
	t.Helper()
	t.Fatal("testbed: interface counters are not supported on this OS")
	return 0, 0
}

// setPdeathsig does nothing on this OS.
func setPdeathsig(*exec.Cmd) {}
