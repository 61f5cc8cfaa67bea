package testbed

import (
	"os/exec"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Counters returns the received and transmitted byte counters of
// interface ifname in node, read over netlink in node's namespace.
func (tb *Testbed) Counters(t testing.TB, node, ifname string) (rxBytes, txBytes uint64) {
	t.Helper()
	ns, err := netns.GetFromName(tb.NS(node))
	if err != nil {
		t.Fatalf("open namespace of %s: %v", node, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink in %s: %v", node, err)
	}
	defer h.Close()
	l, err := h.LinkByName(ifname)
	if err != nil {
		t.Fatalf("%s: link %s: %v", node, ifname, err)
	}
	s := l.Attrs().Statistics
	if s == nil {
		t.Fatalf("%s: link %s has no statistics", node, ifname)
	}
	return s.RxBytes, s.TxBytes
}

// setPdeathsig makes the kernel kill the command's process if the test
// binary dies without cleaning up.
func setPdeathsig(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
