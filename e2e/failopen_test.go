package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestIntegrationFailOpen: whatever happens to mcpgw or the agent, the
// household's connections keep working (fallback direct) or are refused at
// once (fallback reject).
func TestIntegrationFailOpen(t *testing.T) {
	b := newBed(t, 1)
	name := b.fileOfSize(1)
	want := b.files[name]
	b.startGW()
	pristine := b.osState(t)
	b.startAgent("direct")
	url := b.url(false, httpPort, name)
	if sum, _, err := b.fetch(url); err != nil || sum != want {
		t.Fatalf("converted download: %v", err)
	}

	t.Run("mcp blackholed: direct within leg_timeout", func(t *testing.T) {
		b.Run(t, "mcp", "iptables", "-I", "INPUT", "-p", "tcp", "--dport", mcpPort, "-j", "DROP")
		defer b.Run(t, "mcp", "iptables", "-D", "INPUT", "-p", "tcp", "--dport", mcpPort, "-j", "DROP")
		sum, took, err := b.fetch(url)
		if err != nil || sum != want {
			t.Fatalf("download with the MCP unreachable: %v", err)
		}
		if took < 1400*time.Millisecond || took > 3*time.Second {
			t.Errorf("first connection took %v; want the 1.5 s leg_timeout then direct", took)
		}
		// The MCP is now known down: no more waiting.
		sum, took, err = b.fetch(url)
		if err != nil || sum != want {
			t.Fatalf("second download: %v", err)
		}
		if took > time.Second {
			t.Errorf("with the MCP known down a connection took %v; want no leg_timeout wait", took)
		}
	})

	t.Run("mcpgw stopped: direct", func(t *testing.T) {
		// The agent re-probes the MCP the last subtest blackholed: wait
		// until connections are converted again, or this would test the
		// known-down path a second time.
		b.waitConverted(t, url)
		before := b.status(t).Counters
		b.gw.Stop()
		sum, took, err := b.fetch(url)
		if err != nil || sum != want {
			t.Fatalf("download with mcpgw stopped: %v", err)
		}
		if took > 1500*time.Millisecond {
			t.Errorf("took %v, want at most leg_timeout", took)
		}
		if after := b.status(t).Counters; after["fallback"] != before["fallback"]+1 || after["converted"] != before["converted"] {
			t.Errorf("counters went from %v to %v; want one more fallback and no conversion", before, after)
		}
	})

	t.Run("agent stopped: direct once its heartbeats lapse", func(t *testing.T) {
		b.startGW()
		defer b.gw.Stop()
		b.waitConverted(t, url)
		syns := b.Capture(t, "srv", "eth0", "tcp dst port "+httpPort+" and tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn")
		b.agent.Signal(syscall.SIGSTOP)
		stopped := true
		defer func() {
			if stopped {
				b.agent.Signal(syscall.SIGCONT)
			}
		}()
		// A connection opened as the agent stops: its first SYN waits in
		// the queue, a retransmission after the heartbeats lapsed (3 s)
		// goes direct.
		sum, took, err := b.fetch(url)
		if err != nil || sum != want {
			t.Fatalf("download as the agent stopped: %v", err)
		}
		if took > 8*time.Second {
			t.Errorf("took %v; want the SYN retransmission after the 3 s alive timeout to go direct", took)
		}
		// Later connections do not wait at all.
		time.Sleep(3500 * time.Millisecond)
		sum, took, err = b.fetch(url)
		if err != nil || sum != want {
			t.Fatalf("download with the agent stopped: %v", err)
		}
		if took > time.Second {
			t.Errorf("took %v with the agent stopped; SYNs must bypass the queue", took)
		}
		// Both connections reached the server directly from the router,
		// none through the MCP.
		conns := map[string]bool{}
		for _, row := range tsharkFields(t, syns.Stop(), "tcp", "ip.src", "tcp.srcport") {
			if row[0] == mcpAddr {
				t.Errorf("a connection reached the server through the MCP while the agent was stopped: %v", row)
			}
			conns[row[1]] = true
		}
		if len(conns) != 2 {
			t.Errorf("SYNs of %d connections reached the server while the agent was stopped, want 2", len(conns))
		}
		// Resumed, the agent converts again: its first heartbeat reopens
		// the queue. (It takes the first connection's SYN from the queue
		// too; the kernel drops that stale copy when it finds the
		// connection established.)
		b.agent.Signal(syscall.SIGCONT)
		stopped = false
		waitLine(t, b.agent, "did not run for a while", "gap=")
		b.waitConverted(t, url)
	})

	t.Run("agent killed: direct", func(t *testing.T) {
		b.agent.Signal(syscall.SIGKILL)
		b.agent.Wait()
		sum, took, err := b.fetch(url)
		if err != nil || sum != want {
			t.Fatalf("download with the agent killed: %v", err)
		}
		if took > time.Second {
			t.Errorf("took %v with the agent dead; the queue must be bypassed", took)
		}
	})

	t.Run("cleanup after a kill restores the router", func(t *testing.T) {
		if leftover := b.osState(t); leftover == pristine {
			t.Fatal("the killed agent left nothing to clean up; the test would show nothing")
		}
		b.Run(t, "cpe", b.agentBin, "cleanup", "-config", filepath.Join(b.dir, "mcpagent.yaml"))
		if diff := cmp.Diff(strings.Split(pristine, "\n"), strings.Split(b.osState(t), "\n")); diff != "" {
			t.Errorf("after cleanup, the router's state differs from before the agent first started (-before +after):\n%s", diff)
		}
		// Once more: nothing left, nothing done.
		out, err := b.Command(context.Background(), "cpe", b.agentBin, "cleanup", "-config", filepath.Join(b.dir, "mcpagent.yaml")).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "nothing to clean up") {
			t.Errorf("a second cleanup: %v, %q; want nothing to clean up", err, out)
		}
	})

	t.Run("agent restarted after a kill converts again and cleans up on stop", func(t *testing.T) {
		b.startGW()
		b.startAgent("direct")
		legs := b.Capture(t, "mcp", "eth0", "tcp dst port "+mcpPort+" and tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn")
		if sum, _, err := b.fetch(url); err != nil || sum != want {
			t.Fatalf("download after restart: %v", err)
		}
		if got := tsharkFields(t, legs.Stop(), "tcp.options.mptcp.subtype == 0", "frame.number"); len(got) == 0 {
			t.Error("no MPTCP leg reached mcpgw after the agent restarted")
		}
		b.agent.Stop()
		// The killed run's leftovers were replaced, and the clean stop
		// removed everything: the router is as it was before the first run.
		if diff := cmp.Diff(strings.Split(pristine, "\n"), strings.Split(b.osState(t), "\n")); diff != "" {
			t.Errorf("after the agent stopped, the router's state differs from before it first started (-before +after):\n%s", diff)
		}
	})
}

// TestIntegrationFallbackReject: with fallback reject and the MCP down, a
// LAN connection is refused with a reset at once.
func TestIntegrationFallbackReject(t *testing.T) {
	b := newBed(t, 1)
	name := b.fileOfSize(1)
	b.startAgent("reject") // no mcpgw: the MCP host answers the leg with a reset
	resets := b.Capture(t, "lan", "eth0", "tcp[tcpflags] & tcp-rst != 0")
	for i := 0; i < 2; i++ {
		_, took, err := b.fetch(b.url(false, httpPort, name))
		if err == nil {
			t.Fatal("the connection succeeded; want it refused")
		}
		if !strings.Contains(err.Error(), "exit status 7") {
			t.Errorf("curl: %v; want exit status 7 (connection refused)", err)
		}
		if took > 500*time.Millisecond {
			t.Errorf("refusal took %v; want at once", took)
		}
	}
	// The reset comes in the server's name: the LAN host cannot tell it
	// from the server's own.
	rows := tsharkFields(t, resets.Stop(), "tcp.flags.reset == 1", "ip.src", "tcp.srcport", "ip.dst")
	if len(rows) != 2 {
		t.Fatalf("%d resets reached the LAN host, want 2: %v", len(rows), rows)
	}
	for _, r := range rows {
		if r[0] != serverV4 || r[1] != httpPort || r[2] != "192.168.1.2" {
			t.Errorf("reset %v, want one from %s:%s to the LAN host", r, serverV4, httpPort)
		}
	}
}

// waitConverted fetches url until a download is converted (the agent's
// "converted" counter moves), for at most 15 s.
func (b *bed) waitConverted(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		before := b.status(t).Counters["converted"]
		if _, _, err := b.fetch(url); err != nil {
			t.Fatal(err)
		}
		if b.status(t).Counters["converted"] > before {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no connection was converted within 15 s")
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// osState renders what the agent may change on the router: netfilter
// rules, policy routing and MPTCP endpoints and limits.
func (b *bed) osState(t *testing.T) string {
	t.Helper()
	var s strings.Builder
	for _, c := range [][]string{
		{"iptables-save"}, {"ip6tables-save"},
		{"ip", "rule"}, {"ip", "-6", "rule"},
		{"ip", "route", "show", "table", "all"}, {"ip", "-6", "route", "show", "table", "all"},
		{"ip", "mptcp", "endpoint"}, {"ip", "mptcp", "limits"},
	} {
		out := b.Run(t, "cpe", c[0], c[1:]...)
		var keep, table []string
		for _, line := range strings.Split(out, "\n") {
			switch {
			case strings.HasPrefix(line, "#"): // iptables-save's timestamps
				continue
			case strings.HasPrefix(line, "*"):
				table = []string{line}
				continue
			case strings.HasPrefix(line, ":"):
				// A chain and its policy, without the packet counters.
				if i := strings.Index(line, " ["); i > 0 {
					line = line[:i]
				}
			case line == "COMMIT":
				// A table holding nothing but empty built-in chains is
				// the same as no table (iptables-nft keeps it once used).
				if !emptyTable(table) {
					keep = append(keep, table...)
					keep = append(keep, line)
				}
				table = nil
				continue
			}
			if table != nil {
				table = append(table, line)
			} else {
				keep = append(keep, line)
			}
		}
		s.WriteString(strings.Join(c, " ") + "\n" + strings.Join(keep, "\n") + "\n")
	}
	return s.String()
}

// emptyTable reports whether an iptables-save table has no rules and only
// built-in chains with the ACCEPT policy.
func emptyTable(lines []string) bool {
	for _, l := range lines[1:] {
		if !strings.HasPrefix(l, ":") || !strings.HasSuffix(l, " ACCEPT") {
			return false
		}
	}
	return true
}
