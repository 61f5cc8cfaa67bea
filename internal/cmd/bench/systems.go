package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mcpagent/mcpagent/internal/testbed"
)

// system is one of the compared systems.
type system struct {
	id, name string
	// start starts the system on tb, stopped by sr's cleanups, and
	// returns its process on the router, or nil for none.
	start func(sr *runner, tb *testbed.Testbed, b *bench) *proc
	// commands describes start for the report.
	commands func(b *bench) []string
}

const (
	ssPort      = "8388"
	ssRedirPort = "1081"
	socksPort   = "1080"
	redsPort    = "12345"
	ssKey       = "bench"
	ssCipher    = "chacha20-ietf-poly1305"
	mcpgwPort   = "5124"
)

var (
	ssServerArgs = []string{"run", "ss-server", "-s", mcpAddr, "-p", ssPort, "-k", ssKey, "-m", ssCipher}
	ssRedirArgs  = []string{"run", "ss-redir", "-s", mcpAddr, "-p", ssPort, "-b", "0.0.0.0", "-l", ssRedirPort, "-k", ssKey, "-m", ssCipher}
	socksArgs    = []string{"run", "microsocks", "-i", mcpAddr, "-p", socksPort}
	gwArgs       = []string{"-listen", mcpAddr + ":" + mcpgwPort, "-max-conns-per-client", "100000"}
)

// agentConfig is mcpagent's configuration on the router: the testbed's
// uplinks and MCP, and a control socket of the run's own (the default path
// is shared by every namespace); everything else the defaults.
const agentConfig = `lan_interfaces: [lan0]
uplinks:
  - name: dsl
    interface: wan0
  - name: lte
    interface: wan1
mcp:
  servers: ["` + mcpAddr + ":" + mcpgwPort + `"]
`

// redsocksConfig is redsocks' configuration on the router.
const redsocksConfig = `base {
	log_debug = off;
	log_info = off;
	log = stderr;
	daemon = off;
	redsocks_conn_max = 20000;
	redirector = iptables;
}
redsocks {
	local_ip = 0.0.0.0;
	local_port = ` + redsPort + `;
	ip = ` + mcpAddr + `;
	port = ` + socksPort + `;
	type = socks5;
}
`

// mptcpEndpoints gives (c) and (d) what mcpagent sets up for its legs:
// one subflow endpoint per uplink address, with a routing table per
// uplink for it, and room for the subflows at both ends. It starts by
// removing endpoints an agent stopped with SIGKILL may have left.
var mptcpEndpoints = [][]string{
	{"cpe", "ip", "mptcp", "endpoint", "flush"},
	{"cpe", "ip", "mptcp", "limits", "set", "subflows", "2", "add_addr_accepted", "2"},
	{"cpe", "ip", "mptcp", "endpoint", "add", cpeDSLAddr, "dev", "wan0", "subflow"},
	{"cpe", "ip", "mptcp", "endpoint", "add", cpeLTEAddr, "dev", "wan1", "subflow"},
	{"cpe", "ip", "route", "add", "default", "via", "10.0.1.1", "dev", "wan0", "table", "251"},
	{"cpe", "ip", "rule", "add", "from", cpeDSLAddr, "table", "251", "pref", "950"},
	{"cpe", "ip", "route", "add", "default", "via", "100.64.0.1", "dev", "wan1", "table", "252"},
	{"cpe", "ip", "rule", "add", "from", cpeLTEAddr, "table", "252", "pref", "951"},
	{"mcp", "ip", "mptcp", "limits", "set", "subflows", "2", "add_addr_accepted", "2"},
}

// mptcpEndpointsUndo removes what mptcpEndpoints added.
var mptcpEndpointsUndo = [][]string{
	{"cpe", "ip", "mptcp", "endpoint", "flush"},
	{"cpe", "ip", "rule", "del", "pref", "950"},
	{"cpe", "ip", "rule", "del", "pref", "951"},
	{"cpe", "ip", "route", "flush", "table", "251"},
	{"cpe", "ip", "route", "flush", "table", "252"},
}

// redirect sends the LAN's TCP to port on the router.
func redirect(op, port string) []string {
	return []string{"cpe", "iptables", "-t", "nat", op, "PREROUTING", "-i", "lan0", "-p", "tcp", "-j", "REDIRECT", "--to-ports", port}
}

func systemByID(id string) *system {
	for _, s := range allSystems {
		if s.id == id {
			return s
		}
	}
	return nil
}

var allSystems = []*system{
	{
		id:       "a",
		name:     "direct TCP over the DSL link alone, no agent",
		start:    func(*runner, *testbed.Testbed, *bench) *proc { return nil },
		commands: func(*bench) []string { return nil },
	},
	{
		id:   "b",
		name: "mcpagent on the router + mcpgw on the MCP host",
		start: func(sr *runner, tb *testbed.Testbed, b *bench) *proc {
			tb.Start(sr, "mcp", "mcpgw.log", "listening", b.gwBin, gwArgs...)
			dir := sr.TempDir()
			cfg := filepath.Join(dir, "mcpagent.yaml")
			conf := agentConfig + "control_socket: " + filepath.Join(dir, "mcpagent.sock") + "\n"
			if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
				sr.Fatal(err)
			}
			p := tb.Start(sr, "cpe", "mcpagent.log", "agent running", b.agentBin, "-config", cfg)
			return newProc(sr, p.PID(), "mcpagent")
		},
		commands: func(b *bench) []string {
			return []string{
				"mcp: mcpgw " + strings.Join(gwArgs, " "),
				"cpe: mcpagent -config mcpagent.yaml, with: " + strings.ReplaceAll(strings.TrimSpace(agentConfig), "\n", " ⏎ ") + " ⏎ control_socket: (a path of the run's own)",
			}
		},
	},
	{
		id:   "c",
		name: "shadowsocks-libev: ss-redir on the router, ss-server on the MCP host, both under mptcpize, " + ssCipher,
		start: func(sr *runner, tb *testbed.Testbed, b *bench) *proc {
			runAll(sr, tb, mptcpEndpoints, mptcpEndpointsUndo)
			tb.Start(sr, "mcp", "ss-server.log", "listening at", "mptcpize", ssServerArgs...)
			p := tb.Start(sr, "cpe", "ss-redir.log", "listening at", "mptcpize", ssRedirArgs...)
			runAll(sr, tb, [][]string{redirect("-A", ssRedirPort)}, [][]string{redirect("-D", ssRedirPort)})
			return newProc(sr, p.PID(), "ss-redir")
		},
		commands: func(*bench) []string {
			return append(cmdLines(mptcpEndpoints),
				"mcp: mptcpize "+strings.Join(ssServerArgs, " "),
				"cpe: mptcpize "+strings.Join(ssRedirArgs, " "),
				cmdLine(redirect("-A", ssRedirPort)))
		},
	},
	{
		id:   "d",
		name: "redsocks on the router to the SOCKS5 server microsocks on the MCP host, both under mptcpize",
		start: func(sr *runner, tb *testbed.Testbed, b *bench) *proc {
			runAll(sr, tb, mptcpEndpoints, mptcpEndpointsUndo)
			tb.Start(sr, "mcp", "microsocks.log", "", "mptcpize", socksArgs...)
			waitListening(sr, tb, "mcp", socksPort)
			cfg := filepath.Join(sr.TempDir(), "redsocks.conf")
			if err := os.WriteFile(cfg, []byte(redsocksConfig), 0o644); err != nil {
				sr.Fatal(err)
			}
			p := tb.Start(sr, "cpe", "redsocks.log", "", "mptcpize", "run", "redsocks", "-c", cfg)
			waitListening(sr, tb, "cpe", redsPort)
			runAll(sr, tb, [][]string{redirect("-A", redsPort)}, [][]string{redirect("-D", redsPort)})
			return newProc(sr, p.PID(), "redsocks")
		},
		commands: func(*bench) []string {
			return append(cmdLines(mptcpEndpoints),
				"mcp: mptcpize "+strings.Join(socksArgs, " "),
				"cpe: mptcpize run redsocks -c redsocks.conf, with: "+strings.Join(strings.Fields(redsocksConfig), " "),
				cmdLine(redirect("-A", redsPort)))
		},
	},
}

// runAll runs each command (node first) and registers undo for sr's end.
func runAll(sr *runner, tb *testbed.Testbed, do, undo [][]string) {
	sr.Cleanup(func() {
		for _, c := range undo {
			// Best effort: what failed to be added is not there.
			tb.Command(context.Background(), c[0], c[1], c[2:]...).Run()
		}
	})
	for _, c := range do {
		tb.Run(sr, c[0], c[1], c[2:]...)
	}
}

func cmdLine(c []string) string { return c[0] + ": " + strings.Join(c[1:], " ") }

func cmdLines(cs [][]string) []string {
	var out []string
	for _, c := range cs {
		out = append(out, cmdLine(c))
	}
	return out
}

// waitListening waits up to 5 s until a TCP socket listens on port in
// node.
func waitListening(sr *runner, tb *testbed.Testbed, node, port string) {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		out, err := tb.Command(context.Background(), node, "ss", "-Hltn", "sport = :"+port).Output()
		if err == nil && strings.TrimSpace(string(out)) != "" {
			return
		}
	}
	sr.Fatalf("%s: nothing listens on port %s after 5 s", node, port)
}

// proc is a system's process on the router.
type proc struct{ pid int }

// newProc checks that pid runs comm (mptcpize execs the program) and
// returns it.
func newProc(sr *runner, pid int, comm string) *proc {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	// The kernel cuts comm to 15 bytes; test binaries carry a prefix.
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(b)), comm) {
		sr.Fatalf("process %d is %q, want %s: %v", pid, strings.TrimSpace(string(b)), comm, err)
	}
	return &proc{pid: pid}
}

// clockTick is USER_HZ, the unit of /proc/PID/stat's times on Linux.
const clockTick = 100

// cpu returns the CPU time (user + system) the process has used, in
// seconds.
func (p *proc) cpu() (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may contain spaces.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", p.pid)
	}
	utime, err1 := strconv.ParseFloat(f[11], 64) // field 14
	stime, err2 := strconv.ParseFloat(f[12], 64) // field 15
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", p.pid)
	}
	return (utime + stime) / clockTick, nil
}

// rss returns the process's resident set in MB (MiB).
func (p *proc) rss() (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			f := strings.Fields(v)
			kb, err := strconv.ParseFloat(f[0], 64)
			if err != nil {
				break
			}
			return kb / 1024, nil
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", p.pid)
}
