package e2e

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mcpagent/mcpagent/internal/testbed"
	"github.com/mcpagent/mcpagent/mptcpleg"
)

// Addresses of the on-path testbed (scripts/testbed.sh with ONPATH=1).
const (
	mcprDown = "203.0.113.1" // mcpr's address toward srv
	cpeDSL   = "10.0.1.2"    // the CPE's public DSL address
)

// agentConfigOnPath is the agent's configuration for an on-path MCP; a
// non-empty source goes in mcp.source_address.
func agentConfigOnPath(source string) string {
	cfg := `lan_interfaces: [lan0]
uplinks:
  - name: dsl
    interface: wan0
  - name: lte
    interface: wan1
mcp:
  mode: on-path
`
	if source != "" {
		cfg += "  source_address: " + source + "\n"
	}
	return cfg + "leg_timeout: 1.5s\nfallback: direct\nlog_level: debug\n"
}

// TestIntegrationOnPath runs mcpgw as an on-path MCP on the router between
// the ISP core and the server (draft-boucadair-mptcp-plain-mode sections
// 6.2.1 and 7): the agent's legs go to the server's own address with an
// empty MP_CONVERT in the SYN, mcpgw takes them over and converts them,
// and native MPTCP passes both MCPs untouched.
func TestIntegrationOnPath(t *testing.T) {
	b := newBedWith(t, testbed.Options{OnPath: true}, 4, 1)
	name, small := b.fileOfSize(4), b.fileOfSize(1)
	want := b.files[name]
	startGW := func(args ...string) *testbed.Process {
		args = append([]string{"-mode", "on-path", "-log-level", "debug"}, args...)
		return b.Start(t, "mcpr", "mcpgw", "on-path MCP running", b.gwBin, args...)
	}
	// up0 faces the ISP core and its customers; down0 the server.
	gw := startGW("-in", "up0", "-preserve-source", "10.0.1.0/24")
	b.startAgentYAML(agentConfigOnPath(""))

	t.Run("download converted on the path", func(t *testing.T) {
		up := b.Capture(t, "mcpr", "up0", "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn")
		srv := b.Capture(t, "srv", "eth0", "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn")
		dslRx0, _ := b.Counters(t, "cpe", "wan0")
		lteRx0, _ := b.Counters(t, "cpe", "wan1")
		// The kernel stall with SYN data (see README) can hold a
		// download for tens of seconds: allow for it rather than flake.
		sum, took, err := b.fetch(b.url(false, httpPort, name), "--max-time", "170")
		if err != nil {
			t.Fatal(err)
		}
		if sum != want {
			t.Fatalf("sha256 of the download %s, want %s", sum, want)
		}
		dslRx, _ := b.Counters(t, "cpe", "wan0")
		lteRx, _ := b.Counters(t, "cpe", "wan1")
		dsl, lte := dslRx-dslRx0, lteRx-lteRx0
		total := float64(dsl + lte)
		// Logged, not asserted: the same kernel stall can leave one
		// subflow idle for most of a short transfer.
		t.Logf("4 MB in %v: dsl carried %d bytes (%.0f%%), lte %d bytes (%.0f%%)", took, dsl, 100*float64(dsl)/total, lte, 100*float64(lte)/total)
		checkOnPathSYN(t, up.Stop(), nil)
		checkServerSYN(t, srv.Stop(), mcprDown, false)
	})

	t.Run("ipv6 destination", func(t *testing.T) {
		srv := b.Capture(t, "srv", "eth0", "ip6 and tcp port "+httpPort)
		sum, _, err := b.fetch(b.url(true, httpPort, small), "--max-time", "120")
		if err != nil || sum != b.files[small] {
			t.Fatalf("download: sum %s err %v", sum, err)
		}
		rows := tsharkFields(t, srv.Stop(), "ipv6.dst == "+serverV6+" && tcp.flags.syn == 1 && tcp.flags.ack == 0", "ipv6.src", "tcp.options.mptcp.subtype")
		if len(rows) == 0 {
			t.Fatal("no SYN reached the server")
		}
		for _, r := range rows {
			if r[0] != "2001:db8:5::1" || r[1] != "" {
				t.Errorf("the server got SYN %v; want plain TCP from mcpr (2001:db8:5::1)", r)
			}
		}
	})

	t.Run("native mptcp passes both MCPs", func(t *testing.T) {
		srv := b.Capture(t, "srv", "eth0", "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn")
		out := b.Run(t, "lan", "mptcpize", "run", "curl", "-sS", "--fail", "--max-time", "10", b.url(false, mptcpPort, "mptcp"))
		if strings.TrimSpace(out) != "mptcp" {
			t.Fatalf("the server saw %q, want an MPTCP connection", out)
		}
		// The server got the client's own MP_CAPABLE SYN, from the CPE's
		// NAT address: neither MCP terminated it.
		checkServerSYN(t, srv.Stop(), cpeDSL, true)
	})

	t.Run("source address preserved", func(t *testing.T) {
		b.agent.Stop()
		b.startAgentYAML(agentConfigOnPath(cpeDSL))
		up := b.Capture(t, "mcpr", "up0", "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn")
		srv := b.Capture(t, "srv", "eth0", "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn")
		sum, _, err := b.fetch(b.url(false, httpPort, small), "--max-time", "120")
		if err != nil || sum != b.files[small] {
			t.Fatalf("download: sum %s err %v", sum, err)
		}
		checkOnPathSYN(t, up.Stop(), []byte{30, 8, 0xe8, 6, 10, 0, 1, 2})
		checkServerSYN(t, srv.Stop(), cpeDSL, false)
		// A leg that failed would go direct, from the same NAT address:
		// only the counters tell the preserved source from a fallback.
		if c := b.status(t).Counters; c["converted"] == 0 || c["fallback"] != 0 {
			t.Errorf("counters %v: want the download converted, no fallback", c)
		}
	})

	t.Run("source option ignored without -preserve-source", func(t *testing.T) {
		gw.Stop()
		gw = startGW("-in", "up0")
		srv := b.Capture(t, "srv", "eth0", "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn")
		sum, _, err := b.fetch(b.url(false, httpPort, small), "--max-time", "120")
		if err != nil || sum != b.files[small] {
			t.Fatalf("download: sum %s err %v", sum, err)
		}
		checkServerSYN(t, srv.Stop(), mcprDown, false)
	})

	// One listener per destination port, at most -max-ports of them: a
	// port beyond is reset (the agent falls back to the direct path) until
	// a listener has seen no SYN for -port-idle and goes to the new port.
	t.Run("listeners bounded per port", func(t *testing.T) {
		gw.Stop()
		gw = startGW("-in", "up0", "-max-ports", "1", "-port-idle", "8s")
		// get makes a small request to port, so that the time between
		// the SYNs stays short; the server must see its SYN from wantSrc.
		get := func(port, path, want, wantSrc string) {
			t.Helper()
			srv := b.Capture(t, "srv", "eth0", "tcp dst port "+port+" and tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn")
			out := b.Run(t, "lan", "curl", "-sS", "--max-time", "10", "-w", "%{http_code}", "-o", "/dev/null", b.url(false, port, path))
			if strings.TrimSpace(out) != want {
				t.Fatalf("GET %s on port %s: %q, want %q", path, port, out, want)
			}
			checkServerSYN(t, srv.Stop(), wantSrc, false)
		}
		start := time.Now()
		get(mptcpPort, "mptcp", "200", mcprDown) // takes the only listener
		taken := time.Now()                      // after that listener's last SYN
		fallback := b.status(t).Counters["fallback"]
		get(httpPort, "missing", "404", cpeDSL) // reset by mcpr: direct, from the CPE's NAT address
		if c := b.status(t).Counters; c["fallback"] != fallback+1 {
			t.Errorf("counters %v: want one more fallback than %d", c, fallback)
		}
		if time.Since(start) > 6*time.Second {
			t.Fatalf("the two requests took %v: too close to -port-idle for the reset to be the limit's", time.Since(start))
		}
		time.Sleep(time.Until(taken.Add(8500 * time.Millisecond)))
		get(httpPort, "missing", "404", mcprDown) // the idle listener went to this port
	})

	t.Run("SYNs from other interfaces pass", func(t *testing.T) {
		gw.Stop()
		gw = startGW("-in", "down0")
		srv := b.Capture(t, "srv", "eth0", "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn")
		if sum, _, err := b.fetch(b.url(false, httpPort, small), "--max-time", "60"); err != nil || sum != b.files[small] {
			t.Fatalf("download: sum %s err %v", sum, err)
		}
		// The leg's own SYN reaches the server untouched; the server does
		// not speak MPTCP, the agent falls back, and nothing comes from
		// mcpr.
		rows := tsharkFields(t, srv.Stop(), fmt.Sprintf("ip.dst == %s && tcp.dstport == %s", serverV4, httpPort), "ip.src", "tcp.options.mptcp.subtype")
		leg := false
		for _, r := range rows {
			if r[0] != cpeDSL {
				t.Errorf("the server got SYN %v; want every SYN from the CPE (%s)", r, cpeDSL)
			}
			leg = leg || r[1] == "0"
		}
		if !leg {
			t.Errorf("no MP_CAPABLE SYN reached the server untouched: %v", rows)
		}
	})
}

// checkOnPathSYN asserts that the capture holds an MPTCP SYN to the server
// whose payload is the empty MP_CONVERT (the bytes of the draft's layout,
// written out), then the source option src if not nil, then EOL.
func checkOnPathSYN(t *testing.T, pcap string, src []byte) {
	t.Helper()
	rows := tsharkFields(t, pcap, fmt.Sprintf("ip.dst == %s && tcp.dstport == %s", serverV4, httpPort),
		"tcp.options.mptcp.subtype", "tcp.payload")
	want := append(append([]byte{30, 4, 0xe0, 6}, src...), 0)
	for _, r := range rows {
		payload, err := hex.DecodeString(strings.ReplaceAll(r[1], ":", ""))
		if err != nil {
			t.Fatalf("payload %q: %v", r[1], err)
		}
		if r[0] != "0" || !bytes.Equal(payload, want) {
			continue
		}
		opts, n, err := mptcpleg.ParseHeader(payload)
		if err != nil || n != len(want) || opts[0].Addr.IsValid() {
			t.Errorf("MP_CONVERT %x decodes to %+v, %d, %v", payload, opts, n, err)
		}
		return
	}
	t.Fatalf("no SYN to the server with MP_CAPABLE and payload %x; SYNs: %v", want, rows)
}

// checkServerSYN asserts that every SYN the server received for the HTTP
// ports came from src, with MP_CAPABLE if mptcp, else without any MPTCP
// option.
func checkServerSYN(t *testing.T, pcap, src string, mptcp bool) {
	t.Helper()
	rows := tsharkFields(t, pcap, fmt.Sprintf("ip.dst == %s && (tcp.dstport == %s || tcp.dstport == %s)", serverV4, httpPort, mptcpPort),
		"ip.src", "tcp.options.mptcp.subtype", "tcp.len")
	if len(rows) == 0 {
		t.Fatal("no SYN reached the server")
	}
	for _, r := range rows {
		if r[0] != src || (r[1] == "0") != mptcp || !mptcp && r[1] != "" || r[2] != "0" {
			t.Errorf("the server got SYN %v; want one from %s, MPTCP %v, no data", r, src, mptcp)
		}
	}
}
