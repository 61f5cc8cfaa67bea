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
	"syscall"
	"testing"
	"time"

	"github.com/mcpagent/mcpagent/internal/netnstest"
	"github.com/mcpagent/mcpagent/internal/testbed"
)

// The second MCP host's address, added to mcp's eth0 by the DHCP tests
// (198.51.100.0/24 is on core's mcp0), and one where nobody answers.
const (
	mcpAddr2    = "198.51.100.2"
	mcpAddrDead = "198.51.100.3"
)

// TestIntegrationDHCPNetifd learns the MCP the OpenWrt way: the real
// busybox udhcpc, started as netifd starts it, gets a lease from dnsmasq on
// the DSL side and runs a stand-in for netifd's dhcp.script that sources
// the package's hook, which hands the option to the agent.
func TestIntegrationDHCPNetifd(t *testing.T) {
	netnstest.RequireTool(t, "dnsmasq", "udhcpc", "busybox")
	b := newBed(t, 1, 20)
	b.Run(t, "mcp", "ip", "addr", "add", mcpAddr2+"/24", "dev", "eth0")
	b.startGW()
	b.Start(t, "mcp", "mcpgw-2", "listening", b.gwBin, "-listen", mcpAddr2+":"+mcpPort, "-log-level", "debug")
	name := b.fileOfSize(1)

	// The ISP's DHCP server on the DSL link hands out the router's
	// address and the MCP list, read from a file it re-reads on SIGHUP.
	dsl := b.startDNSMasq("core", "dsl0", "10.0.1.0", b.mac("cpe", "wan0"), "10.0.1.2", "224,"+mcpAddr)

	uci := b.writeUCI("netifd")
	// udhcpc binds before the agent runs, as at boot: the hook finds no
	// agent, and the agent takes the saved event when it starts.
	events := filepath.Join(b.dir, "udhcpc.events")
	udhcpc := b.startUDHCPC("wan0", events, uci)
	waitFor(t, func() bool { return strings.Contains(readFile(events), "bound") }, "udhcpc bound")
	b.agent = b.Start(t, "cpe", "mcpagent", "agent running", b.agentBin, "-uci", uci)
	waitLine(t, b.agent, `msg="mcp list from dhcp"`, `uplink=dsl`, `event=bound`, `mcps=[`+mcpAddr+`:5124]`)

	t.Run("converts through the learned mcp", func(t *testing.T) {
		cap := b.Capture(t, "mcp", "eth0", "tcp port "+mcpPort)
		b.fetchOK(t, name)
		if got := legsTo(t, cap.Stop()); got[mcpAddr] == 0 || len(got) != 1 {
			t.Errorf("legs per MCP %v, want all to %s", got, mcpAddr)
		}
	})

	t.Run("a new mcp within one renew; an open connection keeps running", func(t *testing.T) {
		cap := b.Capture(t, "mcp", "eth0", "tcp port "+mcpPort)
		slow := b.startSlowFetch(t, b.fileOfSize(20))
		dsl.setOption(t, "224,"+mcpAddr2)
		udhcpc.Signal(syscall.SIGUSR1) // netifd's renew
		waitLine(t, b.agent, `msg="mcp list from dhcp"`, `event=renew`, `mcps=[`+mcpAddr2+`:5124]`)
		b.fetchOK(t, name)
		if slow.finished() {
			t.Fatal("the long download ended before the new MCP was in use: nothing shown")
		}
		slow.wait(t)
		if got := legsTo(t, cap.Stop()); got[mcpAddr] != 1 || got[mcpAddr2] != 1 {
			t.Errorf("legs per MCP %v, want the open download's to %s and the new one's to %s", got, mcpAddr, mcpAddr2)
		}
	})

	t.Run("first mcp dead: the second without a timeout each time", func(t *testing.T) {
		dsl.setOption(t, "224,"+mcpAddrDead+","+mcpAddr2)
		udhcpc.Signal(syscall.SIGUSR1)
		waitLine(t, b.agent, `msg="mcp list from dhcp"`, `mcps="[`+mcpAddrDead+`:5124 `+mcpAddr2+`:5124]"`)
		cap := b.Capture(t, "mcp", "eth0", "tcp port "+mcpPort)
		var slow int
		for i := 0; i < 4; i++ {
			took := b.fetchOK(t, name)
			if took > time.Second {
				slow++
			}
		}
		// The first connection waits leg_timeout for the dead MCP and
		// falls back; the next ones skip it.
		if slow > 1 {
			t.Errorf("%d of 4 downloads took over a second: the dead MCP was not skipped", slow)
		}
		if got := legsTo(t, cap.Stop()); got[mcpAddr2] < 3 {
			t.Errorf("legs per MCP %v, want at least 3 to %s", got, mcpAddr2)
		}
	})

	t.Run("malformed options are rejected, the list stays", func(t *testing.T) {
		for _, tc := range []struct{ option, reason string }{
			{"224,c6:33:64", "reason=length"},       // 3 octets
			{"224,127.0.0.1", "reason=loopback"},    // loopback
			{"224,c6:33:64:02:c6", "reason=length"}, // 5 octets
		} {
			dsl.setOption(t, tc.option)
			udhcpc.Signal(syscall.SIGUSR1)
			waitLine(t, b.agent, `msg="dhcp mcp option rejected; the previous list stays"`, `uplink=dsl`, tc.reason)
		}
		cap := b.Capture(t, "mcp", "eth0", "tcp port "+mcpPort)
		b.fetchOK(t, name)
		if got := legsTo(t, cap.Stop()); got[mcpAddr2] != 1 {
			t.Errorf("legs per MCP %v, want one to %s, the list in force", got, mcpAddr2)
		}
	})

	t.Run("options from the LAN side are refused", func(t *testing.T) {
		cmd := b.Command(context.Background(), "cpe", "env", "opt224=c6336401",
			b.agentBin, "dhcp-event", "-uci", uci, "-family", "4", "-event", "bound", "-interface", "lan0")
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "lan0 is a LAN interface") {
			t.Errorf("dhcp-event on lan0: %v: %s; want a refusal", err, out)
		}
		waitLine(t, b.agent, `msg="dhcp event refused"`, `interface=lan0`)
		cap := b.Capture(t, "mcp", "eth0", "tcp port "+mcpPort)
		b.fetchOK(t, name)
		if got := legsTo(t, cap.Stop()); got[mcpAddr2] != 1 || got[mcpAddr] != 0 {
			t.Errorf("legs per MCP %v, want one to %s", got, mcpAddr2)
		}
	})

	t.Run("deconfig clears the list", func(t *testing.T) {
		udhcpc.Stop() // -R: releases the lease, then deconfig
		waitLine(t, b.agent, `msg="mcp list from dhcp"`, `event=deconfig`, `mcps=[]`)
		cap := b.Capture(t, "mcp", "eth0", "tcp port "+mcpPort)
		b.fetchOK(t, name)
		if got := legsTo(t, cap.Stop()); len(got) != 0 {
			t.Errorf("legs per MCP %v with no MCP known, want none (direct)", got)
		}
	})
}

// TestIntegrationDHCPInform learns the MCP with the agent's own DHCPINFORM
// on both uplinks, while a DHCP client holds the LTE side's lease.
func TestIntegrationDHCPInform(t *testing.T) {
	netnstest.RequireTool(t, "dnsmasq", "udhcpc", "busybox")
	b := newBed(t, 1)
	b.Run(t, "mcp", "ip", "addr", "add", mcpAddr2+"/24", "dev", "eth0")
	b.startGW("-listen", mcpAddr2+":"+mcpPort)
	name := b.fileOfSize(1)
	b.startDNSMasq("core", "dsl0", "10.0.1.0", "", "", "224,"+mcpAddr)
	lte := b.startDNSMasq("cgn", "lte0", "100.64.0.0", b.mac("cpe", "wan1"), "100.64.0.2", "224,"+mcpAddr2)

	// The system's DHCP client on the LTE side, without hooks.
	events := filepath.Join(b.dir, "udhcpc.events")
	udhcpc := b.startUDHCPC("wan1", events, "")
	waitFor(t, func() bool { return strings.Contains(readFile(events), "bound") }, "udhcpc bound")
	leases := readFile(lte.leases)
	if !strings.Contains(leases, "100.64.0.2") {
		t.Fatalf("dnsmasq's leases %q lack the client's", leases)
	}

	b.agent = b.Start(t, "cpe", "mcpagent", "agent running", b.agentBin, "-uci", b.writeUCI("inform"))
	// Both uplinks' lists, the primary's first.
	waitLine(t, b.agent, `msg="mcp list from dhcp"`, `event=inform`, `mcps="[`+mcpAddr+`:5124 `+mcpAddr2+`:5124]"`)

	cap := b.Capture(t, "mcp", "eth0", "tcp port "+mcpPort)
	b.fetchOK(t, name)
	if got := legsTo(t, cap.Stop()); got[mcpAddr] != 1 || len(got) != 1 {
		t.Errorf("legs per MCP %v, want one to the primary uplink's %s", got, mcpAddr)
	}

	// With the DSL side's MCP refusing legs, the one learned on the LTE
	// side carries the connections.
	b.Run(t, "mcp", "iptables", "-I", "INPUT", "-d", mcpAddr, "-p", "tcp", "--dport", mcpPort, "-j", "REJECT", "--reject-with", "tcp-reset")
	cap = b.Capture(t, "mcp", "eth0", "tcp port "+mcpPort)
	for range 2 {
		b.fetchOK(t, name)
	}
	if got := legsTo(t, cap.Stop()); got[mcpAddr2] == 0 {
		t.Errorf("legs per MCP %v, want the LTE side's %s in use", got, mcpAddr2)
	}

	// The client's lease is untouched: no event since bound, the
	// server's lease unchanged, the client still running.
	if got := strings.Fields(readFile(events)); strings.Join(got, " ") != "deconfig bound" {
		t.Errorf("udhcpc events %v, want only deconfig and bound", got)
	}
	if got := readFile(lte.leases); got != leases {
		t.Errorf("dnsmasq's leases changed:\n%s\nwant:\n%s", got, leases)
	}
	if err := udhcpc.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("udhcpc: %v", err)
	}
}

// dnsmasq is a DHCP server started with startDNSMasq.
type dnsmasq struct {
	p       *testbed.Process
	optFile string
	leases  string
}

// startDNSMasq runs dnsmasq as the DHCP server of subnet NET/24 on dev in
// node: static leases only, the address ip for the client with hardware
// address mac when mac is not empty, and option (dnsmasq's --dhcp-option
// syntax) from a file that setOption rewrites.
func (b *bed) startDNSMasq(node, dev, subnet, mac, ip, option string) *dnsmasq {
	b.t.Helper()
	d := &dnsmasq{optFile: filepath.Join(b.dir, node+".opts"), leases: filepath.Join(b.dir, node+".leases")}
	if err := os.WriteFile(d.optFile, []byte(option+"\n"), 0o644); err != nil {
		b.t.Fatal(err)
	}
	args := []string{"--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--user=root", "--pid-file=",
		"--log-facility=-", "--log-dhcp", "--no-ping", "--dhcp-authoritative", "--interface=" + dev, "--bind-interfaces",
		"--dhcp-range=" + subnet + ",static,255.255.255.0,1h", "--dhcp-optsfile=" + d.optFile, "--dhcp-leasefile=" + d.leases}
	if mac != "" {
		args = append(args, "--dhcp-host="+mac+","+ip)
	}
	d.p = b.Start(b.t, node, "dnsmasq-"+node, "started", "dnsmasq", args...)
	return d
}

// setOption makes the server hand out option from now on.
func (d *dnsmasq) setOption(t *testing.T, option string) {
	t.Helper()
	if err := os.WriteFile(d.optFile, []byte(option+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := strings.Count(d.p.Output(), "read "+d.optFile)
	d.p.Signal(syscall.SIGHUP)
	waitFor(t, func() bool { return strings.Count(d.p.Output(), "read "+d.optFile) > before }, "dnsmasq re-read its options")
}

// startUDHCPC runs busybox udhcpc on dev in cpe exactly as netifd does
// (/lib/netifd/proto/dhcp.sh, with reqopts 224), with a stand-in for
// netifd's dhcp.script: it appends each event to events and, when uci is
// not empty, sources the package's hook as dhcp.script sources
// /etc/udhcpc.user.d/*. It leaves the interface's addresses alone.
func (b *bed) startUDHCPC(dev, events, uci string) *testbed.Process {
	b.t.Helper()
	hooks := filepath.Join(b.dir, "udhcpc.user.d")
	if err := os.MkdirAll(hooks, 0o755); err != nil {
		b.t.Fatal(err)
	}
	if uci != "" {
		hook, err := os.ReadFile("../openwrt/mcpagent/files/mcpagent.udhcpc")
		if err != nil {
			b.t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(hooks, "mcpagent"), hook, 0o644); err != nil {
			b.t.Fatal(err)
		}
	}
	script := filepath.Join(b.dir, "dhcp.script")
	body := fmt.Sprintf(`#!/bin/busybox sh
[ -z "$1" ] && echo "Error: should be run by udhcpc" && exit 1
echo "$1" >>%q
# user rules, as OpenWrt's dhcp.script runs them
for f in %q/*; do
	[ -f "$f" ] && (. "$f" "$@")
done
exit 0
`, events, hooks)
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		b.t.Fatal(err)
	}
	return b.Start(b.t, "cpe", "udhcpc-"+dev, "", "env", "MCPAGENT="+b.agentBin, "MCPAGENT_UCI="+uci,
		"udhcpc", "-p", filepath.Join(b.dir, "udhcpc-"+dev+".pid"), "-s", script, "-f", "-t", "0", "-i", dev,
		"-x", "hostname:cpe", "-C", "-R", "-O", "224")
}

// writeUCI writes the agent's configuration as /etc/config/mcpagent,
// without an MCP: it is learned from source.
func (b *bed) writeUCI(source string) string {
	b.t.Helper()
	path := filepath.Join(b.dir, "mcpagent.uci")
	text := fmt.Sprintf(`config mcpagent 'main'
	list lan_interface 'lan0'
	option mcp_dhcp_source '%s'
	option mcp_dhcp_inform_interval '10s'
	option control_socket '%s'
	option leg_timeout '1.5s'
	option log_level 'debug'

config uplink 'dsl'
	option interface 'wan0'

config uplink 'lte'
	option interface 'wan1'
`, source, filepath.Join(b.dir, "mcpagent.sock"))
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		b.t.Fatal(err)
	}
	return path
}

// mac returns the hardware address of dev in node.
func (b *bed) mac(node, dev string) string {
	b.t.Helper()
	return strings.TrimSpace(b.Run(b.t, node, "cat", "/sys/class/net/"+dev+"/address"))
}

// fetchOK downloads the served file name through the agent, checks its
// sha256 and returns how long it took.
func (b *bed) fetchOK(t *testing.T, name string) time.Duration {
	t.Helper()
	sum, took, err := b.fetch(b.url(false, httpPort, name))
	if err != nil {
		t.Fatal(err)
	}
	if sum != b.files[name] {
		t.Fatalf("sha256 of the download %s, want %s", sum, b.files[name])
	}
	return took
}

// slowFetch is a long download running in the background.
type slowFetch struct {
	cmd  *exec.Cmd
	out  string
	want string
	done chan error
}

// startSlowFetch starts downloading name, a file large enough to take a
// few seconds over the testbed's links, and returns once data arrives.
func (b *bed) startSlowFetch(t *testing.T, name string) *slowFetch {
	t.Helper()
	s := &slowFetch{out: filepath.Join(b.dir, "slow-download"), want: b.files[name], done: make(chan error, 1)}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	s.cmd = b.Command(ctx, "lan", "curl", "-sS", "--fail", "-o", s.out, b.url(false, httpPort, name))
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.done <- s.cmd.Wait() }()
	waitFor(t, func() bool { fi, err := os.Stat(s.out); return err == nil && fi.Size() > 0 }, "the slow download started")
	return s
}

// finished reports whether the download has ended.
func (s *slowFetch) finished() bool {
	select {
	case err := <-s.done:
		s.done <- err
		return true
	default:
		return false
	}
}

// wait waits for the download and checks what arrived.
func (s *slowFetch) wait(t *testing.T) {
	t.Helper()
	if err := <-s.done; err != nil {
		t.Fatalf("slow download: %v", err)
	}
	data, err := os.ReadFile(s.out)
	if err != nil {
		t.Fatal(err)
	}
	if h := sha256.Sum256(data); hex.EncodeToString(h[:]) != s.want {
		t.Fatalf("slow download: sha256 %x, want %s", h, s.want)
	}
}

// legsTo counts the legs in a capture per MCP address: SYNs with
// MP_CAPABLE (a leg's further subflows carry MP_JOIN).
func legsTo(t *testing.T, pcap string) map[string]int {
	t.Helper()
	n := map[string]int{}
	for _, r := range tsharkFields(t, pcap, "tcp.flags.syn == 1 && tcp.flags.ack == 0 && tcp.options.mptcp.subtype == 0", "ip.dst") {
		n[r[0]]++
	}
	return n
}

// waitLine waits up to ten seconds for a line of p's output that holds
// every part.
func waitLine(t *testing.T, p *testbed.Process, parts ...string) {
	t.Helper()
	has := func() bool {
	lines:
		for _, line := range strings.Split(p.Output(), "\n") {
			for _, part := range parts {
				if !strings.Contains(line, part) {
					continue lines
				}
			}
			return true
		}
		return false
	}
	if !waitUntil(has) {
		t.Fatalf("no line with %q within 10s; output:\n%s", parts, p.Output())
	}
}

// waitFor waits up to ten seconds for cond, failing t with what.
func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	if !waitUntil(cond) {
		t.Fatalf("timed out waiting: %s", what)
	}
}

func waitUntil(cond func() bool) bool {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}
