package e2e

import (
	"github.com/google/go-cmp/cmp"

	"strings"
	"syscall"
	"testing"
	"time"
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
		b.gw.Stop()
		sum, took, err := b.fetch(url)
		if err != nil || sum != want {
			t.Fatalf("download with mcpgw stopped: %v", err)
		}
		if took > 2*time.Second {
			t.Errorf("took %v, want at most leg_timeout", took)
		}
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
