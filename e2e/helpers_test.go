package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mcpagent/mcpagent/internal/testbed"
)

// Addresses of the testbed (scripts/testbed.sh).
const (
	serverV4  = "203.0.113.10"
	serverV6  = "2001:db8:5::10"
	mcpAddr   = "198.51.100.1"
	mcpPort   = "5124"
	cpeLAN    = "192.168.1.1"
	httpPort  = "8080"
	mptcpPort = "8081"
)

// bed is a running testbed with the servers, mcpgw and the agent.
type bed struct {
	*testbed.Testbed
	t               *testing.T
	dir             string
	files           map[string]string // name → sha256 of the served file
	gw              *testbed.Process
	agent           *testbed.Process
	agentBin, gwBin string
}

// agentConfig is the agent's configuration in the testbed; fallback is
// "direct" or "reject"; fastOpen puts MP_CONVERT in the leg's SYN.
func agentConfig(fallback string, fastOpen bool) string {
	return fmt.Sprintf(`lan_interfaces: [lan0]
uplinks:
  - name: dsl
    interface: wan0
  - name: lte
    interface: wan1
mcp:
  servers: ["%s:%s"]
leg_timeout: 1.5s
leg_fast_open: %t
fallback: %s
log_level: debug
`, mcpAddr, mcpPort, fastOpen, fallback)
}

// newBed brings the testbed up and starts the servers (HTTP over TCP, and
// over MPTCP on mptcpPort) with files of the given sizes in MB.
func newBed(t *testing.T, sizesMB ...int) *bed {
	t.Helper()
	return newBedWith(t, testbed.Options{}, sizesMB...)
}

// newBedWith is newBed with testbed options.
func newBedWith(t *testing.T, o testbed.Options, sizesMB ...int) *bed {
	t.Helper()
	netnsRequire(t)
	b := &bed{t: t, dir: t.TempDir(), files: map[string]string{}}
	b.agentBin = testbed.BuildBinary(t, "./cmd/mcpagent")
	b.gwBin = testbed.BuildBinary(t, "./cmd/mcpgw")
	srv := testbed.BuildBinary(t, "./internal/cmd/testserver")
	www := filepath.Join(b.dir, "www")
	if err := os.Mkdir(www, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, mb := range sizesMB {
		path, sum := testbed.MakeFile(t, www, mb<<20)
		b.files[filepath.Base(path)] = sum
	}
	b.Testbed = testbed.Up(t, o)
	b.Start(t, "srv", "testserver", "listening",
		srv, "-dir", www, "-http", serverV4+":"+httpPort, "-http", "["+serverV6+"]:"+httpPort)
	b.Start(t, "srv", "testserver-mptcp", "listening",
		srv, "-mptcp", "-report-mptcp", "-dir", www, "-http", serverV4+":"+mptcpPort)
	return b
}

func netnsRequire(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("missing prerequisite: root")
		}
		t.Skip("missing prerequisite: root")
	}
}

func (b *bed) startGW(args ...string) {
	b.t.Helper()
	args = append([]string{"-listen", mcpAddr + ":" + mcpPort, "-log-level", "debug"}, args...)
	b.gw = b.Start(b.t, "mcp", "mcpgw", "listening", b.gwBin, args...)
}

func (b *bed) startAgent(fallback string) { b.startAgentWith(fallback, false) }

func (b *bed) startAgentWith(fallback string, fastOpen bool) {
	b.t.Helper()
	b.startAgentYAML(agentConfig(fallback, fastOpen))
}

// startAgentYAML starts the agent with the configuration yaml, and a
// control socket of the test's own (agents of other tests may run).
func (b *bed) startAgentYAML(yaml string) {
	b.t.Helper()
	cfg := filepath.Join(b.dir, "mcpagent.yaml")
	yaml += "control_socket: " + filepath.Join(b.dir, "mcpagent.sock") + "\n"
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.agent = b.Start(b.t, "cpe", "mcpagent", "agent running", b.agentBin, "-config", cfg)
}

// fetch downloads url from the LAN host with curl and returns the sha256
// of what arrived, the time it took and curl's error.
func (b *bed) fetch(url string, extra ...string) (sum string, took time.Duration, err error) {
	b.t.Helper()
	out := filepath.Join(b.dir, "download")
	os.Remove(out)
	args := append([]string{"-sS", "--fail", "-o", out, "--max-time", "30"}, extra...)
	args = append(args, url)
	start := time.Now()
	cmdOut, err := b.Command(context.Background(), "lan", "curl", args...).CombinedOutput()
	took = time.Since(start)
	if err != nil {
		return "", took, fmt.Errorf("curl %s: %v: %s", url, err, strings.TrimSpace(string(cmdOut)))
	}
	data, err := os.ReadFile(out)
	if err != nil {
		return "", took, err
	}
	h := sha256.Sum256(data)
	return hex.EncodeToString(h[:]), took, nil
}

// url names a served file on the server over IPv4 or IPv6.
func (b *bed) url(v6 bool, port, name string) string {
	host := serverV4
	if v6 {
		host = "[" + serverV6 + "]"
	}
	return "http://" + host + ":" + port + "/" + name
}

// fileOfSize names the served file of mb megabytes.
func (b *bed) fileOfSize(mb int) string {
	for n := range b.files {
		if fi, err := os.Stat(filepath.Join(b.dir, "www", n)); err == nil && fi.Size() == int64(mb)<<20 {
			return n
		}
	}
	b.t.Fatalf("no served file of %d MB", mb)
	return ""
}

// tsharkFields reads a capture with tshark and returns one []string of the
// requested fields per packet matching filter.
func tsharkFields(t *testing.T, pcap, filter string, fields ...string) [][]string {
	t.Helper()
	args := []string{"-r", pcap, "-Y", filter, "-T", "fields", "-E", "separator=|"}
	for _, f := range fields {
		args = append(args, "-e", f)
	}
	var stderr strings.Builder
	cmd := exec.Command("tshark", args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tshark %v: %v\n%s", args, err, stderr.String())
	}
	var rows [][]string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line != "" {
			rows = append(rows, strings.Split(line, "|"))
		}
	}
	return rows
}
