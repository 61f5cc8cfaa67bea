package e2e

import (
	"bytes"
	"encoding/hex"
	"net/netip"
	"strings"
	"testing"

	"github.com/mcpagent/mcpagent/internal/testbed"
	"github.com/mcpagent/mcpagent/mptcpleg"
)

// TestIntegrationConversion is the product's spine: a LAN download goes
// through the agent, an MPTCP leg over both uplinks and mcpgw, and arrives
// intact; the wire shows MP_CONVERT in the SYN payload.
func TestIntegrationConversion(t *testing.T) {
	b := newBed(t, 20, 1)
	b.startGW()
	b.startAgent("direct")
	name, small := b.fileOfSize(20), b.fileOfSize(1)
	want := b.files[name]

	t.Run("download over both uplinks", func(t *testing.T) {
		capture := b.Capture(t, "cpe", "wan0", "tcp dst port "+mcpPort)
		dslRx0, _ := b.Counters(t, "cpe", "wan0")
		lteRx0, _ := b.Counters(t, "cpe", "wan1")
		sum, took, err := b.fetch(b.url(false, httpPort, name))
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
		t.Logf("20 MB in %v: dsl carried %d bytes (%.0f%%), lte %d bytes (%.0f%%)", took, dsl, 100*float64(dsl)/total, lte, 100*float64(lte)/total)
		if float64(dsl) < 0.1*total || float64(lte) < 0.1*total {
			t.Errorf("each uplink must carry at least 10%% of the bytes: dsl %d, lte %d", dsl, lte)
		}
		checkConvert(t, capture.Stop(), false, netip.MustParseAddrPort(serverV4+":"+httpPort))
	})

	t.Run("ipv6 destination over the ipv4 leg", func(t *testing.T) {
		capture := b.Capture(t, "cpe", "wan0", "tcp dst port "+mcpPort)
		sum, _, err := b.fetch(b.url(true, httpPort, name))
		if err != nil {
			t.Fatal(err)
		}
		if sum != want {
			t.Fatalf("sha256 %s, want %s", sum, want)
		}
		checkConvert(t, capture.Stop(), false, netip.MustParseAddrPort("["+serverV6+"]:"+httpPort))
	})

	// With leg_fast_open the plain-mode draft's wire format: MP_CONVERT is
	// the payload of the leg's SYN (TCP Fast Open), no round trip added.
	t.Run("MP_CONVERT in the SYN payload", func(t *testing.T) {
		b.agent.Stop()
		b.startAgentWith("direct", true)
		for _, v6 := range []bool{false, true} {
			capture := b.Capture(t, "cpe", "wan0", "tcp dst port "+mcpPort)
			sum, _, err := b.fetch(b.url(v6, httpPort, small), "--max-time", "60")
			if err != nil || sum != b.files[small] {
				t.Fatalf("download (ipv6 %v): sum %s err %v", v6, sum, err)
			}
			dst := netip.MustParseAddrPort(serverV4 + ":" + httpPort)
			if v6 {
				dst = netip.MustParseAddrPort("[" + serverV6 + "]:" + httpPort)
			}
			checkConvert(t, capture.Stop(), true, dst)
		}
		b.agent.Stop()
		b.startAgent("direct")
	})

	t.Run("native mptcp client passes untouched", func(t *testing.T) {
		wan := b.Capture(t, "cpe", "wan0", "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn")
		gw := b.Capture(t, "mcp", "eth0", "tcp port "+mcpPort)
		out := b.Run(t, "lan", "mptcpize", "run", "curl", "-sS", "--fail", "--max-time", "10", b.url(false, mptcpPort, "mptcp"))
		if strings.TrimSpace(out) != "mptcp" {
			t.Fatalf("the server saw %q, want an MPTCP connection", out)
		}
		rows := tsharkFields(t, wan.Stop(), "tcp.flags.syn == 1 && tcp.flags.ack == 0", "ip.dst", "tcp.dstport", "tcp.options.mptcp.subtype")
		if len(rows) == 0 {
			t.Fatal("no SYN left the router")
		}
		for _, r := range rows {
			if r[0] != serverV4 || r[1] != mptcpPort || r[2] != "0" {
				t.Errorf("SYN on the uplink %v, want it to the server with MP_CAPABLE (subtype 0)", r)
			}
		}
		if got := tsharkFields(t, gw.Stop(), legPackets, "frame.number"); len(got) != 0 {
			t.Errorf("mcpgw's link carried %d packets of the native connection", len(got))
		}
	})

	t.Run("connection to the router itself is not intercepted", func(t *testing.T) {
		b.Start(t, "cpe", "router-service", "listening", testbed.BuildBinary(t, "./internal/cmd/testserver"), "-dir", b.dir+"/www", "-http", cpeLAN+":"+httpPort)
		wan := b.Capture(t, "cpe", "wan0", "tcp port "+mcpPort)
		sum, _, err := b.fetch("http://" + cpeLAN + ":" + httpPort + "/" + name)
		if err != nil || sum != want {
			t.Fatalf("router service: sum %s err %v", sum, err)
		}
		// The agent's uplink probes are bare TCP handshakes to the same
		// port (see legPackets).
		if got := tsharkFields(t, wan.Stop(), legPackets, "frame.number"); len(got) != 0 {
			t.Errorf("a leg to the MCP was opened for a connection to the router: %d leg packets", len(got))
		}
	})
}

// legPackets matches the packets of a leg on the MCP's port: MPTCP, or
// data (a leg that fell back to TCP carries the MP_CONVERT header). The
// agent's uplink probes, bare TCP handshakes, match neither.
const legPackets = "tcp.options.mptcp.subtype || tcp.len > 0"

// checkConvert asserts that the capture holds a leg to the MCP, and that
// every leg in it has a SYN that carries MP_CAPABLE and first bytes that
// are exactly one MP_CONVERT naming dst followed by EOL: the SYN's payload
// when inSYN, else the first data segment after the handshake. The agent's
// uplink probes (bare TCP handshakes) are no legs.
func checkConvert(t *testing.T, pcap string, inSYN bool, dst netip.AddrPort) {
	t.Helper()
	toMCP := "ip.dst == " + mcpAddr + " && tcp.dstport == " + mcpPort
	syns := tsharkFields(t, pcap, toMCP+" && tcp.flags.syn == 1 && tcp.flags.ack == 0", "tcp.stream", "tcp.options.mptcp.subtype", "tcp.payload")
	if len(syns) == 0 {
		t.Fatal("no SYN to the MCP in the capture")
	}
	// The bytes as the layout in the plain-mode draft gives them, written
	// out here rather than produced by the encoder.
	want := []byte{30, 10, 0xe0, 6}
	if dst.Addr().Is6() {
		want[1] = 22
	}
	want = append(want, dst.Addr().AsSlice()...)
	want = append(want, byte(dst.Port()>>8), byte(dst.Port()), 0)

	firstData := map[string]string{} // tcp.stream → payload of its first data segment
	if !inSYN {
		for _, r := range tsharkFields(t, pcap, toMCP+" && tcp.len > 0", "tcp.stream", "tcp.payload") {
			if _, ok := firstData[r[0]]; !ok {
				firstData[r[0]] = r[1]
			}
		}
	}
	var hits int
	for _, r := range syns {
		stream, subtype, payloadHex := r[0], r[1], r[2]
		if subtype == "" && payloadHex == "" {
			continue // the agent's uplink probe: a bare TCP handshake
		}
		if subtype != "0" {
			t.Errorf("SYN to the MCP without MP_CAPABLE: subtype %q", subtype)
			continue
		}
		if !inSYN {
			if payloadHex != "" {
				t.Errorf("SYN to the MCP carries data %s; want MP_CONVERT after the handshake", payloadHex)
			}
			payloadHex = firstData[stream]
		}
		payload, err := hex.DecodeString(strings.ReplaceAll(payloadHex, ":", ""))
		if err != nil {
			t.Fatalf("payload %q: %v", payloadHex, err)
		}
		if len(payload) < len(want) || !bytes.Equal(payload[:len(want)], want) {
			t.Errorf("leg %s to the MCP starts with %x, want MP_CONVERT %x", stream, payload, want)
			continue
		}
		opts, n, err := mptcpleg.ParseHeader(payload)
		if err != nil || n != len(want) || len(opts) != 1 || netip.AddrPortFrom(opts[0].Addr, opts[0].Port) != dst {
			t.Errorf("MP_CONVERT %x decodes to %+v, %d, %v", payload, opts, n, err)
		}
		hits++
	}
	if hits == 0 {
		t.Fatalf("no leg to the MCP started with MP_CONVERT for %v (in SYN: %v); SYNs: %v; first data: %v", dst, inSYN, syns, firstData)
	}
}
