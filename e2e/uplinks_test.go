package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mcpagent/mcpagent/internal/testbed"
)

// uplinkConfig is the agent's configuration with the two uplinks given
// extra per-uplink keys (YAML flow-map entries, "" for none), and probes
// fast enough for a test to see an uplink fail within a second.
func uplinkConfig(dsl, lte string) string {
	if dsl != "" {
		dsl = ", " + dsl
	}
	if lte != "" {
		lte = ", " + lte
	}
	return fmt.Sprintf(`lan_interfaces: [lan0]
uplinks:
  - {name: dsl, interface: wan0%s}
  - {name: lte, interface: wan1%s}
mcp:
  servers: ["%s:%s"]
probe: {interval: 300ms, timeout: 300ms, failures: 2}
log_level: debug
`, dsl, lte, mcpAddr, mcpPort)
}

// TestIntegrationUplinks runs the uplink policy on the testbed with two
// equal links (20 Mbit/s each) behind the link emulator, so that an uplink
// can fail silently while a download runs.
func TestIntegrationUplinks(t *testing.T) {
	b := newBedWith(t, testbed.Options{Emulate: true, DSLRate: "20mbit", LTERate: "20mbit"}, 50, 20, 1)
	b.startGW()
	big, mid, small := b.fileOfSize(50), b.fileOfSize(20), b.fileOfSize(1)

	t.Run("aggregate: each active uplink carries a quarter or more", func(t *testing.T) {
		b.restartAgent(uplinkConfig("", ""))
		dsl, lte := b.rxDuring(t, func() { b.mustFetch(t, big) })
		if total := float64(dsl + lte); float64(dsl) < 0.25*total || float64(lte) < 0.25*total {
			t.Errorf("each uplink must carry at least 25%%: dsl %d, lte %d bytes", dsl, lte)
		}
	})

	t.Run("community: one subflow between two uplinks of one community", func(t *testing.T) {
		b.restartAgent(uplinkConfig("community: copper", "community: copper"))
		wan0, wan1 := b.legCapture(t, "wan0"), b.legCapture(t, "wan1")
		b.mustFetch(t, small)
		dslSYNs, lteSYNs := mptcpSYNs(t, wan0.Stop()), mptcpSYNs(t, wan1.Stop())
		if dslSYNs.capable == 0 || dslSYNs.join+lteSYNs.capable+lteSYNs.join != 0 {
			t.Errorf("want MP_CAPABLE SYNs on dsl only and no MP_JOIN anywhere; dsl %+v, lte %+v", dslSYNs, lteSYNs)
		}
	})

	t.Run("probe fails: no initial subflow over the blackholed uplink", func(t *testing.T) {
		b.restartAgent(uplinkConfig("", ""))
		// The network drops whatever the DSL line sends toward the MCP.
		rule := []string{"FORWARD", "-s", "10.0.1.2", "-d", mcpAddr, "-j", "DROP"}
		b.Run(t, "core", "iptables", append([]string{"-I"}, rule...)...)
		b.waitLog(t, "uplink unhealthy", "uplink=dsl")
		wan0, wan1 := b.legCapture(t, "wan0"), b.legCapture(t, "wan1")
		b.mustFetch(t, small)
		dslSYNs, lteSYNs := mptcpSYNs(t, wan0.Stop()), mptcpSYNs(t, wan1.Stop())
		if lteSYNs.capable == 0 || dslSYNs.capable+dslSYNs.join != 0 {
			t.Errorf("want the leg's MP_CAPABLE SYN on lte and no MPTCP SYN on dsl; dsl %+v, lte %+v", dslSYNs, lteSYNs)
		}
		b.Run(t, "core", "iptables", append([]string{"-D"}, rule...)...)
		b.waitLog(t, "uplink healthy again", "uplink=dsl")
	})

	t.Run("backup: idle while the primary works, carries the transfer when it fails", func(t *testing.T) {
		b.restartAgent(uplinkConfig("", "role: backup"))
		dsl, lte := b.rxDuring(t, func() { b.mustFetch(t, mid) })
		if total := float64(dsl + lte); float64(lte) >= 0.02*total {
			t.Errorf("the backup uplink carried %d of %d bytes, want under 2%%", lte, dsl+lte)
		}
		_, lte = b.rxDuring(t, func() { b.fetchWhileFailing(t, mid, "dsl") })
		if lte < 5<<20 {
			t.Errorf("after the primary failed the backup uplink carried %d bytes, want the rest of the transfer", lte)
		}
	})

	t.Run("on-demand: silent while the primary works, takes over when it fails", func(t *testing.T) {
		b.restartAgent(uplinkConfig("", "role: on-demand"))
		quiet := b.Capture(t, "cpe", "wan1", "ip")
		b.mustFetch(t, small)
		if n := len(tsharkFields(t, quiet.Stop(), "ip", "frame.number")); n != 0 {
			t.Errorf("the on-demand uplink sent or received %d IPv4 packets while the primary worked", n)
		}
		wan1 := b.legCapture(t, "wan1")
		_, lte := b.rxDuring(t, func() { b.fetchWhileFailing(t, mid, "dsl") })
		if syns := mptcpSYNs(t, wan1.Stop()); syns.join == 0 {
			t.Errorf("no MP_JOIN on the on-demand uplink after the primary failed: %+v", syns)
		}
		if lte < 5<<20 {
			t.Errorf("the on-demand uplink carried %d bytes, want the rest of the transfer", lte)
		}
	})
}

// restartAgent stops the running agent, if any, and starts one with yaml.
func (b *bed) restartAgent(yaml string) {
	b.t.Helper()
	if b.agent != nil {
		b.agent.Stop()
	}
	b.startAgentYAML(yaml)
}

// mustFetch downloads the served file name over IPv4 and fails the test
// unless it arrives intact.
func (b *bed) mustFetch(t *testing.T, name string) {
	t.Helper()
	sum, took, err := b.fetch(b.url(false, httpPort, name), "--max-time", "60")
	if err != nil {
		t.Fatal(err)
	}
	if sum != b.files[name] {
		t.Fatalf("sha256 of %s is %s, want %s", name, sum, b.files[name])
	}
	t.Logf("%s arrived intact in %v", name, took)
}

// rxDuring returns the bytes the CPE received on each uplink while f ran.
func (b *bed) rxDuring(t *testing.T, f func()) (dsl, lte uint64) {
	t.Helper()
	dsl0, _ := b.Counters(t, "cpe", "wan0")
	lte0, _ := b.Counters(t, "cpe", "wan1")
	f()
	dsl1, _ := b.Counters(t, "cpe", "wan0")
	lte1, _ := b.Counters(t, "cpe", "wan1")
	dsl, lte = dsl1-dsl0, lte1-lte0
	t.Logf("received: dsl %d bytes, lte %d bytes", dsl, lte)
	return dsl, lte
}

// fetchWhileFailing downloads name and, 2 s into it, makes link drop every
// packet silently; the link is restored, and its uplink healthy again,
// before it returns.
func (b *bed) fetchWhileFailing(t *testing.T, name, link string) {
	t.Helper()
	failed := make(chan struct{})
	fail := time.AfterFunc(2*time.Second, func() {
		defer close(failed)
		b.SetLink(t, link, "down")
	})
	b.mustFetch(t, name)
	if fail.Stop() {
		t.Fatalf("%s arrived before %s failed", name, link)
	}
	<-failed
	b.SetLink(t, link, "up")
	b.waitLog(t, "uplink healthy again", "uplink="+link)
}

// legCapture captures the CPE's traffic with the MCP on uplink interface
// ifname.
func (b *bed) legCapture(t *testing.T, ifname string) *testbed.Capture {
	return b.Capture(t, "cpe", ifname, "tcp port "+mcpPort)
}

// synCounts counts the SYNs (without ACK) of a capture by MPTCP option.
type synCounts struct{ capable, join, plain int }

func mptcpSYNs(t *testing.T, pcap string) synCounts {
	t.Helper()
	var c synCounts
	for _, r := range tsharkFields(t, pcap, "tcp.flags.syn == 1 && tcp.flags.ack == 0", "tcp.options.mptcp.subtype") {
		switch r[0] {
		case "0":
			c.capable++
		case "1":
			c.join++
		default:
			c.plain++
		}
	}
	return c
}

// waitLog waits until the running agent has logged a line holding every
// one of words. It only synchronizes the test with the agent; what the test
// asserts is read from the wire.
func (b *bed) waitLog(t *testing.T, words ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !logged(b.agent.Output(), words) {
		if time.Now().After(deadline) {
			t.Fatalf("the agent did not log a line with %q within 10 s; its log:\n%s", words, b.agent.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func logged(out string, words []string) bool {
next:
	for _, line := range strings.Split(out, "\n") {
		for _, w := range words {
			if !strings.Contains(line, w) {
				continue next
			}
		}
		return true
	}
	return false
}
