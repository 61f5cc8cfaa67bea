package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mcpagent/mcpagent/control"
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
		defer b.holdConnection(t, big)()
		b.waitStatus(t, all(uplinkIs("dsl", "up", true, "active"), uplinkIs("lte", "up", true, "active"), heldSubflows("dsl", "lte")))
	})

	t.Run("community: one subflow between two uplinks of one community", func(t *testing.T) {
		b.restartAgent(uplinkConfig("community: copper", "community: copper"))
		wan0, wan1 := b.legCapture(t, "wan0"), b.legCapture(t, "wan1")
		b.mustFetch(t, small)
		dslSYNs, lteSYNs := mptcpSYNs(t, wan0.Stop()), mptcpSYNs(t, wan1.Stop())
		if dslSYNs.capable == 0 || dslSYNs.join+lteSYNs.capable+lteSYNs.join != 0 {
			t.Errorf("want MP_CAPABLE SYNs on dsl only and no MP_JOIN anywhere; dsl %+v, lte %+v", dslSYNs, lteSYNs)
		}
		defer b.holdConnection(t, big)()
		b.waitStatus(t, all(uplinkIs("dsl", "up", true, "active"), uplinkIs("lte", "up", true, "none"), heldSubflows("dsl")))
	})

	t.Run("probe fails: no initial subflow over the blackholed uplink", func(t *testing.T) {
		b.restartAgent(uplinkConfig("", ""))
		// The network drops whatever the DSL line sends toward the MCP.
		rule := []string{"FORWARD", "-s", "10.0.1.2", "-d", mcpAddr, "-j", "DROP"}
		b.Run(t, "core", "iptables", append([]string{"-I"}, rule...)...)
		waitLine(t, b.agent, "uplink unhealthy", "uplink=dsl")
		// The path manager follows the plan on a goroutine of its own.
		waitLine(t, b.agent, "MPTCP endpoint removed", "addr=10.0.1.2")
		wan0, wan1 := b.legCapture(t, "wan0"), b.legCapture(t, "wan1")
		b.mustFetch(t, small)
		dslSYNs, lteSYNs := mptcpSYNs(t, wan0.Stop()), mptcpSYNs(t, wan1.Stop())
		if lteSYNs.capable == 0 || dslSYNs.capable+dslSYNs.join != 0 {
			t.Errorf("want the leg's MP_CAPABLE SYN on lte and no MPTCP SYN on dsl; dsl %+v, lte %+v", dslSYNs, lteSYNs)
		}
		stop := b.holdConnection(t, big)
		b.waitStatus(t, all(uplinkIs("dsl", "up", false, "none"), uplinkIs("lte", "up", true, "active"), heldSubflows("lte")))
		stop()
		b.Run(t, "core", "iptables", append([]string{"-D"}, rule...)...)
		waitLine(t, b.agent, "uplink healthy again", "uplink=dsl")
	})

	t.Run("backup: idle while the primary works, carries the transfer when it fails", func(t *testing.T) {
		b.restartAgent(uplinkConfig("", "role: backup"))
		dsl, lte := b.rxDuring(t, func() { b.mustFetch(t, mid) })
		if total := float64(dsl + lte); float64(lte) >= 0.02*total {
			t.Errorf("the backup uplink carried %d of %d bytes, want under 2%%", lte, dsl+lte)
		}
		stop := b.holdConnection(t, big)
		b.waitStatus(t, all(uplinkIs("dsl", "up", true, "active"), uplinkIs("lte", "up", true, "backup"), heldSubflows("dsl", "lte+backup")))
		stop()
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
		stop := b.holdConnection(t, big)
		b.waitStatus(t, all(uplinkIs("lte", "up", true, "none"), heldSubflows("dsl")))
		b.SetLink(t, "dsl", "down")
		b.waitStatus(t, all(uplinkIs("dsl", "up", false, "none"), uplinkIs("lte", "up", true, "active"), heldSubflows("lte")))
		stop()
		b.SetLink(t, "dsl", "up")
		b.waitStatus(t, all(uplinkIs("dsl", "up", true, "active"), uplinkIs("lte", "up", true, "none")))
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

// maxStall is the longest time a download may go without a byte while the
// primary uplink fails under it.
const maxStall = 1500 * time.Millisecond

// TestIntegrationFailover fails the primary uplink under a running
// download, brings it back, and renumbers it, on a testbed with two equal
// links (20 Mbit/s each).
func TestIntegrationFailover(t *testing.T) {
	b := newBedWith(t, testbed.Options{Emulate: true, DSLRate: "20mbit", LTERate: "20mbit"}, 50, 20)
	b.startGW()
	b.startAgentYAML(uplinkConfig("priority: 100", "priority: 50"))
	big, mid := b.fileOfSize(50), b.fileOfSize(20)

	t.Run("primary link set down mid-transfer", func(t *testing.T) {
		b.stallDuring(t, mid, maxStall, func() { b.Run(t, "cpe", "ip", "link", "set", "wan0", "down") })
		b.waitStatus(t, all(uplinkIs("dsl", "down", true, "none"), uplinkIs("lte", "up", true, "active")))
		b.restoreDSL(t)
		b.waitStatus(t, uplinkIs("dsl", "up", true, "active"))
	})

	t.Run("primary silently drops everything mid-transfer", func(t *testing.T) {
		b.stallDuring(t, mid, maxStall, func() { b.SetLink(t, "dsl", "down") })
		b.SetLink(t, "dsl", "up")
		waitLine(t, b.agent, "uplink healthy again", "uplink=dsl")
	})

	t.Run("primary back: its subflow returns on the running connection", func(t *testing.T) {
		wan0 := b.legCapture(t, "wan0")
		var restored time.Time
		var dslAfter uint64
		b.stallDuring(t, big, maxStall, func() {
			b.SetLink(t, "dsl", "down")
			waitLine(t, b.agent, "uplink unhealthy", "uplink=dsl")
			time.Sleep(time.Second)
			dslAfter, _ = b.Counters(t, "cpe", "wan0")
			restored = time.Now()
			b.SetLink(t, "dsl", "up")
		})
		dslEnd, _ := b.Counters(t, "cpe", "wan0")
		joins := tsharkFields(t, wan0.Stop(), "tcp.flags.syn == 1 && tcp.flags.ack == 1 && tcp.options.mptcp.subtype == 1", "frame.time_epoch")
		var back time.Duration = -1
		for _, r := range joins {
			sec, err := strconv.ParseFloat(r[0], 64)
			if err != nil {
				t.Fatal(err)
			}
			if at := time.Unix(0, int64(sec*1e9)); at.After(restored) {
				back = at.Sub(restored)
				break
			}
		}
		t.Logf("dsl subflow back %v after the link was; dsl then carried %d bytes", back, dslEnd-dslAfter)
		if back < 0 || back > 2*time.Second {
			t.Errorf("no MP_JOIN SYN-ACK on dsl within 2 s of its return (%d in the capture)", len(joins))
		}
		if dslEnd-dslAfter < 1<<20 {
			t.Errorf("dsl carried %d bytes after its return, want it to carry data again", dslEnd-dslAfter)
		}
	})

	t.Run("address change: the running connection continues, new subflows use the new address", func(t *testing.T) {
		const oldAddr, newAddr = "10.0.1.2", "10.0.1.3"
		renumber := func(from, to string) {
			// What a PPPoE reconnect or a new DHCP lease does.
			b.Run(t, "cpe", "ip", "addr", "del", from+"/24", "dev", "wan0")
			b.Run(t, "cpe", "ip", "addr", "add", to+"/24", "dev", "wan0")
			b.Run(t, "cpe", "ip", "route", "replace", "default", "via", "10.0.1.1", "dev", "wan0", "metric", "10")
		}
		running := b.legCapture(t, "wan0")
		b.stallDuring(t, mid, 0, func() { renumber(oldAddr, newAddr) })
		defer renumber(newAddr, oldAddr)
		if joins := tsharkFields(t, running.Stop(), "tcp.flags.syn == 1 && tcp.flags.ack == 1 && tcp.options.mptcp.subtype == 1 && ip.dst == "+newAddr, "frame.number"); len(joins) == 0 {
			t.Error("the running connection got no subflow from the new address (no MP_JOIN SYN-ACK to it)")
		}
		next := b.legCapture(t, "wan0")
		b.mustFetch(t, mid)
		pcap := next.Stop()
		fromNew := mptcpSYNs(t, pcap, "ip.src == "+newAddr)
		fromOld := mptcpSYNs(t, pcap, "ip.src == "+oldAddr)
		if fromNew.capable == 0 || fromOld.capable+fromOld.join != 0 {
			t.Errorf("the next connection's MPTCP SYNs: from the new address %+v, from the old one %+v; want MP_CAPABLE from the new one only", fromNew, fromOld)
		}
	})
}

// stallDuring downloads name with the stall-measuring client from the LAN
// host and runs fail 2 s into it; the download must arrive intact, without
// a gap longer than limit (0: any).
func (b *bed) stallDuring(t *testing.T, name string, limit time.Duration, fail func()) {
	t.Helper()
	bin := testbed.BuildBinary(t, "./internal/cmd/stallclient")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := b.Command(ctx, "lan", bin, "-timeout", "90s", b.url(false, httpPort, name))
	out := make(chan []byte, 1)
	errc := make(chan error, 1)
	go func() {
		o, err := cmd.Output()
		out <- o
		errc <- err
	}()
	time.Sleep(2 * time.Second)
	fail()
	o, err := <-out, <-errc
	if err != nil {
		t.Fatalf("stallclient: %v: %s", err, o)
	}
	var r struct {
		Bytes        int64         `json:"bytes"`
		SHA256       string        `json:"sha256"`
		LongestStall time.Duration `json:"longest_stall_ns"`
		StallAt      time.Duration `json:"stall_at_ns"`
		Took         time.Duration `json:"took_ns"`
	}
	if err := json.Unmarshal(o, &r); err != nil {
		t.Fatalf("stallclient printed %q: %v", o, err)
	}
	t.Logf("%s: %d bytes in %v; longest stall %v, %v after the first byte", name, r.Bytes, r.Took, r.LongestStall, r.StallAt)
	if r.SHA256 != b.files[name] {
		t.Fatalf("sha256 %s, want %s", r.SHA256, b.files[name])
	}
	if limit > 0 && r.LongestStall > limit {
		t.Errorf("the download stalled for %v, want at most %v", r.LongestStall, limit)
	}
}

// restoreDSL brings the CPE's DSL interface back as netifd would after a
// carrier loss: link up, its IPv6 address (Linux drops those on link down)
// and default routes; then waits until the agent uses it again.
func (b *bed) restoreDSL(t *testing.T) {
	t.Helper()
	b.Run(t, "cpe", "ip", "link", "set", "wan0", "up")
	b.Run(t, "cpe", "ip", "-6", "addr", "replace", "2001:db8:1::2/64", "dev", "wan0", "nodad")
	b.Run(t, "cpe", "ip", "route", "replace", "default", "via", "10.0.1.1", "dev", "wan0", "metric", "10")
	b.Run(t, "cpe", "ip", "-6", "route", "replace", "default", "via", "2001:db8:1::1", "dev", "wan0")
	waitLine(t, b.agent, "MPTCP endpoint added", "addr=10.0.1.2")
}

// status returns what `mcpagent status -json` prints in the CPE.
func (b *bed) status(t *testing.T) control.Status {
	t.Helper()
	out := b.Run(t, "cpe", b.agentBin, "status", "-json", "-config", filepath.Join(b.dir, "mcpagent.yaml"))
	var st control.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("mcpagent status -json printed %q: %v", out, err)
	}
	return st
}

// waitStatus waits up to 5 s until the agent's status satisfies ok, and
// fails t with the last status and ok's complaint if it never does. ok
// returns "" when satisfied, else what is wrong.
func (b *bed) waitStatus(t *testing.T, ok func(control.Status) string) control.Status {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := b.status(t)
		wrong := ok(st)
		if wrong == "" {
			return st
		}
		if time.Now().After(deadline) {
			j, _ := json.MarshalIndent(st, "", "  ")
			t.Fatalf("mcpagent status: %s\n%s", wrong, j)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// uplinkIs returns a waitStatus check that the named uplink is in state,
// healthy or not, and used as use.
func uplinkIs(name, state string, healthy bool, use string) func(control.Status) string {
	return func(st control.Status) string {
		for _, u := range st.Uplinks {
			if u.Name == name {
				if u.State != state || u.Healthy != healthy || u.Use != use {
					return fmt.Sprintf("uplink %s is %s, healthy %v, used %s; want %s, %v, %s", name, u.State, u.Healthy, u.Use, state, healthy, use)
				}
				return ""
			}
		}
		return "no uplink " + name
	}
}

// heldSubflows returns a waitStatus check that the one held connection
// (to the server over MPTCP) has exactly the established subflows named,
// uplink name with "+backup" for a backup subflow, in any order.
func heldSubflows(want ...string) func(control.Status) string {
	return func(st control.Status) string {
		var held []control.ConnStatus
		for _, c := range st.Connections {
			if strings.HasPrefix(c.Destination, serverV4+":") {
				held = append(held, c)
			}
		}
		if len(held) != 1 || !held[0].MPTCP {
			return fmt.Sprintf("want one MPTCP connection to the server, got %+v", held)
		}
		var got []string
		for _, s := range held[0].Subflows {
			if s.State != "established" {
				continue
			}
			name := s.Uplink
			if s.Backup {
				name += "+backup"
			}
			got = append(got, name)
		}
		slices.Sort(got)
		want := slices.Sorted(slices.Values(want))
		if !slices.Equal(got, want) {
			return fmt.Sprintf("the held connection's subflows are %v, want %v", got, want)
		}
		return ""
	}
}

// all combines waitStatus checks.
func all(checks ...func(control.Status) string) func(control.Status) string {
	return func(st control.Status) string {
		for _, c := range checks {
			if wrong := c(st); wrong != "" {
				return wrong
			}
		}
		return ""
	}
}

// holdConnection starts a slow download from the LAN host (100 kB/s) that
// stays open until the returned function stops it.
func (b *bed) holdConnection(t *testing.T, name string) (stop func()) {
	t.Helper()
	p := b.Start(t, "lan", "held-curl", "", "curl", "-sS", "-o", "/dev/null", "--limit-rate", "100k", b.url(false, httpPort, name))
	return p.Stop
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
	waitLine(t, b.agent, "uplink healthy again", "uplink="+link)
}

// legCapture captures the CPE's traffic with the MCP on uplink interface
// ifname.
func (b *bed) legCapture(t *testing.T, ifname string) *testbed.Capture {
	return b.Capture(t, "cpe", ifname, "tcp port "+mcpPort)
}

// synCounts counts the SYNs (without ACK) of a capture by MPTCP option;
// mptcpSYNs counts those that also match every display filter in and.
type synCounts struct{ capable, join, plain int }

func mptcpSYNs(t *testing.T, pcap string, and ...string) synCounts {
	t.Helper()
	filter := strings.Join(append([]string{"tcp.flags.syn == 1 && tcp.flags.ack == 0"}, and...), " && ")
	var c synCounts
	for _, r := range tsharkFields(t, pcap, filter, "tcp.options.mptcp.subtype") {
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
