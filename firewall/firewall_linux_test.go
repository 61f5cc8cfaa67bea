package firewall

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mcpagent/mcpagent/internal/netnstest"
)

// cmd runs a program and returns its standard output, failing t on error.
func cmd(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	c := exec.Command(args[0], args[1:]...)
	c.Stdin = strings.NewReader(stdin)
	var stderr strings.Builder
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// save returns iptables-save and ip6tables-save output without comments and
// counters.
func save(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, prog := range []string{"iptables-save", "ip6tables-save"} {
		for _, line := range strings.Split(cmd(t, "", prog), "\n") {
			if line != "" && !strings.HasPrefix(line, "#") {
				b.WriteString(counters.ReplaceAllString(line, "[0:0]") + "\n")
			}
		}
	}
	return b.String()
}

// expectedRules is, written by hand, what the agent's and the foreign test
// rules must look like for testRules, in chains prefixed with X so that
// iptables can normalize them beside the real ones.
const expectedRules = `*mangle
:XPREROUTING - [0:0]
:XMCPAGENT - [0:0]
:XMCPAGENT_DIVERT - [0:0]
:XOUTPUT - [0:0]
:XMCPAGENT_ALIVE - [0:0]
-A XPREROUTING -i br-lan -p tcp -j XMCPAGENT
-A XPREROUTING -i lan1 -p tcp -j XMCPAGENT
-A XPREROUTING -j MARK --set-xmark 0x100/0x3f00
-A XMCPAGENT -m addrtype --dst-type LOCAL -j RETURN
-A XMCPAGENT -p tcp -m socket --transparent -j XMCPAGENT_DIVERT
-A XMCPAGENT -p tcp -m mark --mark 0x01000000/0x0f000000 -j TPROXY --on-ip LOOPBACK --on-port 7070 --tproxy-mark 0x03000000/0x0f000000
-A XMCPAGENT -p tcp --tcp-flags SYN,ACK,FIN,RST SYN -m mark --mark 0/0x0f000000 -m recent --rcheck --seconds 3 --name mcpagent --mask NOADDR --rsource -j NFQUEUE --queue-num 7 --queue-bypass
-A XMCPAGENT_DIVERT -j MARK --set-mark 0x03000000/0x0f000000
-A XMCPAGENT_DIVERT -j ACCEPT
-A XOUTPUT -o lo -p udp --dport 7070 -m mark --mark 0x03000000/0x0f000000 -j XMCPAGENT_ALIVE
-A XMCPAGENT_ALIVE -m recent --set --name mcpagent --mask NOADDR --rsource -j DROP
COMMIT
*filter
:XFORWARD - [0:0]
:XMCPAGENT_REJECT - [0:0]
-A XFORWARD -i br-lan -p tcp -j XMCPAGENT_REJECT
-A XFORWARD -i lan1 -p tcp -j XMCPAGENT_REJECT
-A XFORWARD -j ACCEPT
-A XMCPAGENT_REJECT -p tcp -m mark --mark 0x02000000/0x0f000000 -j REJECT --reject-with tcp-reset
COMMIT
`

// checkInstalled compares, for both families, every rule of the agent's
// chains and of the built-in chains it jumps from with expectedRules, as
// iptables itself normalizes both.
func checkInstalled(t *testing.T) {
	t.Helper()
	chains := map[string][]string{
		"mangle": {"PREROUTING", "MCPAGENT", "MCPAGENT_DIVERT", "OUTPUT", "MCPAGENT_ALIVE"},
		"filter": {"FORWARD", "MCPAGENT_REJECT"},
	}
	for _, v6 := range []bool{false, true} {
		fam := familyOf(v6)
		addrs := map[bool]*strings.Replacer{
			false: strings.NewReplacer("LOOPBACK", "127.0.0.1", "NOADDR", "0.0.0.0"),
			true:  strings.NewReplacer("LOOPBACK", "::1", "NOADDR", "::"),
		}
		cmd(t, addrs[v6].Replace(expectedRules), fam.restore, "-w", "--noflush")
		for table, names := range chains {
			for _, name := range names {
				got := appends(cmd(t, "", fam.iptables, "-w", "-t", table, "-S", name))
				want := appends(cmd(t, "", fam.iptables, "-w", "-t", table, "-S", "X"+name))
				for i, line := range want {
					want[i] = strings.ReplaceAll(line, " XMCPAGENT", " MCPAGENT")
					want[i] = strings.Replace(want[i], " X"+name+" ", " "+name+" ", 1)
				}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("%s %s %s (-want +got):\n%s", fam.name, table, name, diff)
				}
			}
		}
		var cleanup strings.Builder
		for table, names := range chains {
			cleanup.WriteString("*" + table + "\n")
			for _, name := range names {
				cleanup.WriteString("-F X" + name + "\n")
			}
			for _, name := range names {
				cleanup.WriteString("-X X" + name + "\n")
			}
			cleanup.WriteString("COMMIT\n")
		}
		cmd(t, cleanup.String(), fam.restore, "-w", "--noflush")
	}
}

// appends returns the -A lines of iptables -S output.
func appends(listing string) []string {
	var lines []string
	for _, l := range strings.Split(listing, "\n") {
		if strings.HasPrefix(l, "-A ") {
			lines = append(lines, l)
		}
	}
	return lines
}

// programs are the iptables programs the package and its tests run.
var programs = []string{"iptables", "ip6tables", "iptables-restore", "ip6tables-restore", "iptables-save", "ip6tables-save"}

// TestIntegrationInstall installs the rules beside foreign ones, checks
// them rule by rule, installs again as after a crash, and checks that Close
// restores the tables exactly.
func TestIntegrationInstall(t *testing.T) {
	netnstest.RequireIsolatedRoot(t)
	netnstest.RequireTool(t, programs...)
	testInstall(t)
}

// TestIntegrationInstallLegacy is TestIntegrationInstall with the legacy
// (non nf_tables) iptables, which OpenWrt before fw4 and older Debian use.
func TestIntegrationInstallLegacy(t *testing.T) {
	netnstest.RequireIsolatedRoot(t)
	dir := t.TempDir()
	for _, p := range programs {
		netnstest.RequireTool(t, strings.Replace(p, "tables", "tables-legacy", 1))
		legacy, _ := exec.LookPath(strings.Replace(p, "tables", "tables-legacy", 1))
		if err := os.Symlink(legacy, filepath.Join(dir, p)); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir+string(filepath.ListSeparator)+os.Getenv("PATH"))
	if out := cmd(t, "", "iptables", "--version"); !strings.Contains(out, "legacy") {
		t.Fatalf("iptables --version = %q, want the legacy variant", out)
	}
	testInstall(t)
}

func testInstall(t *testing.T) {
	// Rules of someone else, like mwan3's mark and a firewall's accept: the
	// agent's jumps must come before them and leave them alone.
	for _, v6 := range []bool{false, true} {
		fam := familyOf(v6)
		cmd(t, "", fam.iptables, "-w", "-t", "mangle", "-A", "PREROUTING", "-j", "MARK", "--set-xmark", "0x100/0x3f00")
		cmd(t, "", fam.iptables, "-w", "-t", "filter", "-A", "FORWARD", "-j", "ACCEPT")
		t.Cleanup(func() {
			exec.Command(fam.iptables, "-w", "-t", "mangle", "-D", "PREROUTING", "-j", "MARK", "--set-xmark", "0x100/0x3f00").Run()
			exec.Command(fam.iptables, "-w", "-t", "filter", "-D", "FORWARD", "-j", "ACCEPT").Run()
		})
	}
	before := save(t)
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx := context.Background()

	if _, err := Install(ctx, BackendIPTables, testRules(), logger); err != nil {
		t.Fatal(err)
	}
	checkInstalled(t)
	installed := save(t)

	// The agent was killed: a new one installs again without Close.
	fw, err := Install(ctx, BackendIPTables, testRules(), logger)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(installed, save(t)); diff != "" {
		t.Fatalf("second Install changed the tables (-first +second):\n%s", diff)
	}
	checkInstalled(t)

	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, save(t)); diff != "" {
		t.Fatalf("tables after Close differ (-before Install +after Close):\n%s", diff)
	}
	if err := fw.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if diff := cmp.Diff(before, save(t)); diff != "" {
		t.Fatalf("second Close changed the tables:\n%s", diff)
	}
}

// TestIntegrationInstallChangedLAN checks that a run with other LAN
// interfaces replaces the jumps of the previous run instead of adding to
// them.
func TestIntegrationInstallChangedLAN(t *testing.T) {
	netnstest.RequireIsolatedRoot(t)
	netnstest.RequireTool(t, programs...)
	before := save(t)
	old := testRules()
	old.LANInterfaces = []string{"eth7", "eth8", "eth9"}
	if _, err := Install(context.Background(), BackendIPTables, old, nil); err != nil {
		t.Fatal(err)
	}
	fw, err := Install(context.Background(), BackendIPTables, testRules(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fw.Close() })
	for _, v6 := range []bool{false, true} {
		fam := familyOf(v6)
		for table, builtin := range map[string]string{"mangle": "PREROUTING", "filter": "FORWARD"} {
			got := appends(cmd(t, "", fam.iptables, "-w", "-t", table, "-S", builtin))
			if len(got) != 2 || !strings.Contains(got[0], "-i br-lan ") || !strings.Contains(got[1], "-i lan1 ") {
				t.Errorf("%s %s %s = %q, want the two jumps of the second run", fam.name, table, builtin, got)
			}
		}
	}
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, save(t)); diff != "" {
		t.Fatalf("tables after Close differ (-before +after):\n%s", diff)
	}
}
