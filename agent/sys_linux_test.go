package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/mcpagent/mcpagent/config"
	"github.com/mcpagent/mcpagent/internal/netnstest"
)

func TestMain(m *testing.M) { netnstest.Main(m) }

// TestIntegrationPreflight checks the one-line refusals: a missing
// interface and Multipath TCP switched off (in the test's own namespace).
func TestIntegrationPreflight(t *testing.T) {
	netnstest.RequireIsolatedRoot(t)
	// Two interfaces of the test's own namespace stand for LAN and WAN.
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "lan0"}, PeerName: "wan0"}); err != nil {
		t.Fatal(err)
	}
	parse := func(lan, wan string) *config.Config {
		c, err := config.Parse([]byte("lan_interfaces: [" + lan + "]\nuplinks: [{name: dsl, interface: " + wan + "}]\nmcp: {servers: [198.51.100.1]}\n"))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if err := preflight(parse("lan0", "wan0")); err != nil {
		t.Errorf("both interfaces present: %v", err)
	}
	if err := preflight(parse("lan0", "wan9")); err == nil || !strings.Contains(err.Error(), `uplink dsl: interface "wan9"`) {
		t.Errorf("missing uplink interface: %v", err)
	}
	if err := preflight(parse("lan9", "wan0")); err == nil || !strings.Contains(err.Error(), `lan interface "lan9"`) {
		t.Errorf("missing LAN interface: %v", err)
	}
	cc := parse("lan0", "wan0")
	cc.CongestionControl = "cubic"
	if err := preflight(cc); err != nil {
		t.Errorf("congestion control cubic: %v", err)
	}
	cc.CongestionControl = "nosuchcc"
	if err := preflight(cc); err == nil || !strings.Contains(err.Error(), `congestion control "nosuchcc" is not available`) {
		t.Errorf("unknown congestion control: %v", err)
	}
	if err := os.WriteFile("/proc/sys/net/mptcp/enabled", []byte("0"), 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.WriteFile("/proc/sys/net/mptcp/enabled", []byte("1"), 0o644)
	if err := preflight(parse("lan0", "wan0")); err == nil || !strings.Contains(err.Error(), "net.mptcp.enabled=1") {
		t.Errorf("MPTCP disabled: %v", err)
	}
}

// TestLockRun: one run at a time; a waiter gets the lock when the holder
// lets go, or gives up.
func TestLockRun(t *testing.T) {
	cfg := &config.Config{ControlSocket: filepath.Join(t.TempDir(), "mcpagent.sock")}
	unlock, err := lockRun(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockRun(cfg, nil); err == nil || !strings.Contains(err.Error(), "another mcpagent is running") {
		t.Fatalf("second lockRun: %v, want another mcpagent is running", err)
	}
	giveUp := make(chan struct{})
	time.AfterFunc(200*time.Millisecond, func() { close(giveUp) })
	if _, err := lockRun(cfg, giveUp); err == nil || !strings.Contains(err.Error(), "still running") {
		t.Fatalf("lockRun that gave up: %v, want still running", err)
	}
	got := make(chan error, 1)
	go func() {
		unlock2, err := lockRun(cfg, make(chan struct{}))
		if err == nil {
			unlock2()
		}
		got <- err
	}()
	time.Sleep(150 * time.Millisecond)
	unlock()
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("waiting lockRun: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiter did not get the lock once it was released")
	}
}
