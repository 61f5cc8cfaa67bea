package testbed

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mcpagent/mcpagent/internal/netnstest"
)

// The server's addresses in the testbed.
const (
	srvURL4 = "http://203.0.113.10:8080/"
	srvURL6 = "http://[2001:db8:5::10]:8080/"
)

// TestIntegrationTestbed builds a shaped testbed and checks what the
// kernel does with traffic through it: downloads from the LAN cross the
// DSL link only, over IPv4 and IPv6 (both NATed at the cpe); the LTE path
// through the carrier NAT works when the cpe picks it by source address;
// each access link delivers its configured rate in both directions; mcp reaches srv; and
// nothing of the testbed is left after teardown.
func TestIntegrationTestbed(t *testing.T) {
	netnstest.Require(t, os.Geteuid() == 0, "root (the testbed makes network namespaces)")
	netnstest.RequireTool(t, "curl", "iperf3", "mptcpize")
	const (
		dslRate  = 20e6
		lteRate  = 40e6
		fileSize = 5 << 20
		noise    = 64 << 10 // bytes an idle link may carry (neighbour discovery, MLD)
	)
	tb := Up(t, Options{DSLRate: "20mbit", LTERate: "40mbit"})
	server := BuildBinary(t, "./internal/cmd/testserver")
	dir := t.TempDir()
	file, sum := MakeFile(t, dir, fileSize)
	name := filepath.Base(file)
	tb.Start(t, "srv", "testserver.log", "listening [2001:db8:5::10]:8080", server,
		"-http", "203.0.113.10:8080", "-http", "[2001:db8:5::10]:8080", "-dir", dir, "-mptcp", "-report-mptcp")
	tb.Start(t, "srv", "iperf3.log", "Server listening", "iperf3", "-s", "--forceflush")

	// fetch downloads the file from node with curl and checks its hash.
	fetch := func(t *testing.T, node, url string, curlArgs ...string) {
		t.Helper()
		got := filepath.Join(t.TempDir(), "got")
		args := append([]string{"-sS", "--fail", "--max-time", "20", "-o", got}, curlArgs...)
		tb.Run(t, node, "curl", append(args, url)...)
		if s := fileSHA256(t, got); s != sum {
			t.Errorf("%s: GET %s: sha256 %s, want %s", node, url, s, sum)
		}
	}
	// rate runs 3 s iperf3 tests from node and checks that the receiver
	// sees 85-105 % of want (bit/s). The machine is shared, so a run
	// starved of CPU can fall short of a link's rate, never exceed it: a
	// low result is retried up to twice, a high one fails at once.
	rate := func(t *testing.T, node string, want float64, iperfArgs ...string) {
		t.Helper()
		what := "iperf3 " + strings.Join(iperfArgs, " ")
		for try := 1; ; try++ {
			out := tb.Run(t, node, "iperf3", append([]string{"-J", "-t", "3", "-c", "203.0.113.10"}, iperfArgs...)...)
			var r struct {
				End struct {
					SumReceived struct {
						BitsPerSecond float64 `json:"bits_per_second"`
					} `json:"sum_received"`
				} `json:"end"`
			}
			if err := json.Unmarshal([]byte(out), &r); err != nil {
				t.Fatalf("parse iperf3 output: %v\n%s", err, out)
			}
			got := r.End.SumReceived.BitsPerSecond
			ratio := got / want
			t.Logf("%s: %.2f Mbit/s, %.1f%% of %.0f Mbit/s", what, got/1e6, 100*ratio, want/1e6)
			switch {
			case ratio > 1.05:
				t.Fatalf("%s: %.2f Mbit/s, more than 105%% of %.0f Mbit/s", what, got/1e6, want/1e6)
			case ratio >= 0.85:
				return
			case try == 3:
				t.Fatalf("%s: %.2f Mbit/s, less than 85%% of %.0f Mbit/s in %d tries", what, got/1e6, want/1e6, try)
			}
		}
	}

	t.Run("lan downloads use dsl", func(t *testing.T) {
		dslRx0, _ := tb.Counters(t, "cpe", "wan0")
		lteRx0, lteTx0 := tb.Counters(t, "cpe", "wan1")
		fetch(t, "lan", srvURL4+name)
		fetch(t, "lan", srvURL6+name)
		dslRx1, _ := tb.Counters(t, "cpe", "wan0")
		lteRx1, lteTx1 := tb.Counters(t, "cpe", "wan1")
		if got := dslRx1 - dslRx0; got < 2*fileSize {
			t.Errorf("cpe wan0 received %d bytes during two downloads of %d bytes", got, fileSize)
		}
		if got := lteRx1 - lteRx0 + lteTx1 - lteTx0; got > noise {
			t.Errorf("cpe wan1 carried %d bytes during downloads over DSL, want at most %d", got, noise)
		}
	})

	t.Run("cpe uses lte through cgn by source address", func(t *testing.T) {
		// The main table's default route is the DSL one (metric 10), so
		// traffic from the LTE address needs a table of its own.
		tb.Run(t, "cpe", "ip", "route", "add", "default", "via", "100.64.0.1", "dev", "wan1", "table", "200")
		tb.Run(t, "cpe", "ip", "rule", "add", "from", "100.64.0.2", "lookup", "200")
		t.Cleanup(func() {
			tb.Run(t, "cpe", "ip", "rule", "del", "from", "100.64.0.2", "lookup", "200")
			tb.Run(t, "cpe", "ip", "route", "flush", "table", "200")
		})
		dslRx0, _ := tb.Counters(t, "cpe", "wan0")
		lteRx0, _ := tb.Counters(t, "cpe", "wan1")
		cgnRx0, _ := tb.Counters(t, "cgn", "up0")
		fetch(t, "cpe", srvURL4+name, "--interface", "100.64.0.2")
		dslRx1, _ := tb.Counters(t, "cpe", "wan0")
		lteRx1, _ := tb.Counters(t, "cpe", "wan1")
		cgnRx1, _ := tb.Counters(t, "cgn", "up0")
		if got := lteRx1 - lteRx0; got < fileSize {
			t.Errorf("cpe wan1 received %d bytes during a download of %d bytes", got, fileSize)
		}
		if got := cgnRx1 - cgnRx0; got < fileSize {
			t.Errorf("cgn up0 received %d bytes during a download of %d bytes", got, fileSize)
		}
		if got := dslRx1 - dslRx0; got > noise {
			t.Errorf("cpe wan0 received %d bytes during a download over LTE, want at most %d", got, noise)
		}
		rate(t, "cpe", lteRate, "-B", "100.64.0.2")       // upload: cpe wan1 shaping
		rate(t, "cpe", lteRate, "-B", "100.64.0.2", "-R") // download: cgn lte0 shaping
	})

	t.Run("dsl rate", func(t *testing.T) {
		rate(t, "lan", dslRate)       // upload: cpe wan0 shaping
		rate(t, "lan", dslRate, "-R") // download: core dsl0 shaping
	})

	t.Run("mcp reaches srv", func(t *testing.T) {
		for _, base := range []string{srvURL4, srvURL6} {
			if got := tb.Run(t, "mcp", "curl", "-sS", "--fail", "--max-time", "10", base+"mptcp"); got != "tcp" {
				t.Errorf("mcp: curl %smptcp = %q, want %q", base, got, "tcp")
			}
			if got := tb.Run(t, "mcp", "mptcpize", "run", "curl", "-sS", "--fail", "--max-time", "10", base+"mptcp"); got != "mptcp" {
				t.Errorf("mcp: mptcpize run curl %smptcp = %q, want %q", base, got, "mptcp")
			}
		}
	})

	if diff := cmp.Diff(allNodes(tb.ID), namespacesOf(t, tb.ID)); diff != "" {
		t.Errorf("namespaces before teardown (-want +got):\n%s", diff)
	}
	tb.down(t)
	if got := namespacesOf(t, tb.ID); len(got) != 0 {
		t.Errorf("namespaces left after teardown: %q", got)
	}
}

// TestIntegrationTwoTestbeds checks that testbeds with different IDs exist
// side by side and that tearing one down leaves the other alone. It also
// checks that rate "0" leaves the links unshaped.
func TestIntegrationTwoTestbeds(t *testing.T) {
	netnstest.Require(t, os.Geteuid() == 0, "root (the testbed makes network namespaces)")
	a := Up(t, Options{DSLRate: "0", LTERate: "0"})
	b := Up(t, Options{DSLRate: "0", LTERate: "0"})
	for _, tb := range []*Testbed{a, b} {
		if diff := cmp.Diff(allNodes(tb.ID), namespacesOf(t, tb.ID)); diff != "" {
			t.Errorf("namespaces of testbed %s (-want +got):\n%s", tb.ID, diff)
		}
		if out := tb.Run(t, "cpe", "ip", "-br", "addr", "show", "dev", "wan0"); !strings.Contains(out, "10.0.1.2/24") {
			t.Errorf("testbed %s: cpe wan0: %s, want 10.0.1.2/24", tb.ID, out)
		}
		if out := tb.Run(t, "core", "tc", "qdisc", "show", "dev", "dsl0"); strings.Contains(out, "tbf") {
			t.Errorf("testbed %s: unshaped core dsl0 has qdisc %s", tb.ID, out)
		}
	}
	a.down(t)
	if got := namespacesOf(t, a.ID); len(got) != 0 {
		t.Errorf("namespaces of %s left after teardown: %q", a.ID, got)
	}
	if diff := cmp.Diff(allNodes(b.ID), namespacesOf(t, b.ID)); diff != "" {
		t.Errorf("namespaces of %s after tearing down %s (-want +got):\n%s", b.ID, a.ID, diff)
	}
	b.down(t)
	if got := namespacesOf(t, b.ID); len(got) != 0 {
		t.Errorf("namespaces of %s left after teardown: %q", b.ID, got)
	}
}

// allNodes returns the sorted namespace names of testbed id.
func allNodes(id string) []string {
	var ns []string
	for _, n := range []string{"cgn", "core", "cpe", "lan", "mcp", "srv"} {
		ns = append(ns, "mcpt-"+id+"-"+n)
	}
	return ns
}

// namespacesOf returns the sorted names of the existing namespaces of
// testbed id.
func namespacesOf(t *testing.T, id string) []string {
	t.Helper()
	entries, err := os.ReadDir("/run/netns")
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var ns []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "mcpt-"+id+"-") {
			ns = append(ns, e.Name())
		}
	}
	sort.Strings(ns)
	return ns
}

// fileSHA256 returns the hex SHA-256 of the file at path.
func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}
