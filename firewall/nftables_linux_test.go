package firewall

import (
	"context"
	"log/slog"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mcpagent/mcpagent/internal/netnstest"
)

// nftCheck runs nft --check on script and returns its standard error, or ""
// if nft accepts it.
func nftCheck(t *testing.T, script string) string {
	t.Helper()
	c := exec.Command("nft", "--check", "-f", "-")
	c.Stdin = strings.NewReader(script)
	out, err := c.CombinedOutput()
	if err == nil {
		return ""
	}
	if len(out) == 0 {
		t.Fatalf("nft --check: %v", err)
	}
	return string(out)
}

// queueStatement is the statement NFTables renders for testRules' queue.
const queueStatement = "queue num 7 bypass"

// withoutQueue replaces the queue statement in an nftables script with
// accept, which is what the queue statement does with bypass while nobody
// reads the queue.
func withoutQueue(t *testing.T, script string) string {
	t.Helper()
	if strings.Count(script, queueStatement) != 1 {
		t.Fatalf("script does not hold %q exactly once:\n%s", queueStatement, script)
	}
	return strings.Replace(script, queueStatement, "accept", 1)
}

// kernelHasNFTQueue reports whether the kernel accepts the full rule set,
// queue statement included. Kernels built without CONFIG_NFT_QUEUE (this
// project's test machines) do not.
func kernelHasNFTQueue(t *testing.T) bool {
	t.Helper()
	return nftCheck(t, NFTables(testRules())) == ""
}

// nftRunner runs the real programs. On a kernel without the nftables queue
// statement it loads nftables scripts with that statement replaced (see
// withoutQueue), so that everything else can be tested there.
type nftRunner struct {
	t       *testing.T
	noQueue bool
}

func newNFTRunner(t *testing.T) nftRunner {
	return nftRunner{t: t, noQueue: !kernelHasNFTQueue(t)}
}

func (n nftRunner) run(ctx context.Context, stdin string, args ...string) (string, error) {
	if n.noQueue && args[0] == "nft" && strings.Contains(stdin, "table inet mcpagent {") {
		stdin = withoutQueue(n.t, stdin)
	}
	return execRunner{}.run(ctx, stdin, args...)
}

// TestIntegrationNFTablesCheck proves that the kernel accepts every
// statement of the nftables rule set: the whole of it where the kernel has
// the queue statement; elsewhere, the rule set with only the queue
// statement swapped, while the full rule set is rejected exactly at that
// statement.
func TestIntegrationNFTablesCheck(t *testing.T) {
	netnstest.RequireIsolatedRoot(t)
	netnstest.RequireTool(t, "nft")
	script := NFTables(testRules())
	msg := nftCheck(t, script)
	if msg == "" {
		t.Log("the kernel accepts the full rule set, queue statement included")
		return
	}
	// nft points at the statement the kernel refused: line and columns,
	// the rule, and carets under the statement.
	m := regexp.MustCompile(`(?m)^[^:]*:(\d+):(\d+)-(\d+): Error: Could not process rule: No such file or directory\n(.*)\n`).FindStringSubmatch(msg)
	if m == nil {
		t.Fatalf("nft --check rejects the rule set, not with a missing kernel feature:\n%s", msg)
	}
	lines := strings.Split(script, "\n")
	line, _ := strconv.Atoi(m[1])
	from, _ := strconv.Atoi(m[2])
	to, _ := strconv.Atoi(m[3])
	if line < 1 || line > len(lines) || m[4] != lines[line-1] || from < 1 || from > to || to > len(m[4]) {
		t.Fatalf("nft names line %d, columns %d-%d (%q), which is not a part of the script:\n%s", line, from, to, m[4], msg)
	}
	// The columns cover the queue keyword, at the start of the statement
	// that ends the rule.
	if got := m[4][from-1 : to]; got != "queue" || !strings.HasSuffix(m[4][from-1:], queueStatement) {
		t.Fatalf("the kernel rejects %q in %q, want only the queue statement rejected:\n%s", got, m[4], msg)
	}
	if msg := nftCheck(t, withoutQueue(t, script)); msg != "" {
		t.Fatalf("nft --check rejects the rule set without its queue statement:\n%s", msg)
	}
	t.Log("the kernel lacks the nftables queue statement (CONFIG_NFT_QUEUE) and accepts every other statement")
}

// TestIntegrationAutoChoice checks that BackendAuto picks nftables exactly
// when the kernel accepts the full nftables rule set: iptables on a kernel
// without the queue statement.
func TestIntegrationAutoChoice(t *testing.T) {
	netnstest.RequireIsolatedRoot(t)
	netnstest.RequireTool(t, append([]string{"nft"}, programs...)...)
	var log strings.Builder
	fw, err := Install(context.Background(), BackendAuto, testRules(), slog.New(slog.NewTextHandler(&log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fw.Close() })
	want, why := BackendIPTables, `reason="nft --check rejects the rule set"`
	if kernelHasNFTQueue(t) {
		want, why = BackendNFTables, `reason="nft accepts the rule set"`
	}
	if got := fw.Backend(); got != want {
		t.Errorf("Backend() = %q, want %q", got, want)
	}
	if chosen := "backend=" + string(want) + " " + why; !strings.Contains(log.String(), chosen) {
		t.Errorf("log does not say %q:\n%s", chosen, log.String())
	}
	if want == BackendIPTables {
		if got := cmd(t, "", "iptables", "-w", "-t", "mangle", "-S", "MCPAGENT"); !strings.Contains(got, "NFQUEUE") {
			t.Errorf("iptables -t mangle -S MCPAGENT has no NFQUEUE rule:\n%s", got)
		}
	}
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	if got := save(t) + nftList(t, "ruleset"); strings.Contains(strings.ToLower(got), "mcpagent") {
		t.Errorf("rules of the agent are left after Close:\n%s", got)
	}
}

// nftList returns nft's listing of what (ruleset, tables, or table NAME).
func nftList(t *testing.T, what ...string) string {
	t.Helper()
	return cmd(t, "", append([]string{"nft", "list"}, what...)...)
}

// expectedNFT is, written by hand and with other but equivalent spellings,
// what the agent's table must hold for testRules; the queue statement is
// written as withoutQueue replaces it. Loaded as table inet xmcpagent, nft
// normalizes it beside the real one.
const expectedNFT = `table inet xmcpagent {
	set alive {
		type nf_proto
		timeout 3000ms
		flags timeout,dynamic
	}
	chain prerouting {
		type filter hook prerouting priority -150
		policy accept
		iifname br-lan meta l4proto tcp jump MCPAGENT
		iifname lan1 meta l4proto tcp jump MCPAGENT
	}
	chain forward {
		type filter hook forward priority 0
		iifname br-lan meta l4proto 6 jump MCPAGENT_REJECT
		iifname lan1 meta l4proto 6 jump MCPAGENT_REJECT
	}
	chain output {
		type filter hook output priority -150
		oifname lo meta l4proto udp udp dport 7070 meta mark & 0xf000000 == 0x3000000 jump MCPAGENT_ALIVE
	}
	chain MCPAGENT {
		fib daddr type local return
		meta l4proto tcp socket transparent 1 jump MCPAGENT_DIVERT
		meta l4proto tcp meta mark and 0xf000000 == 0x1000000 meta nfproto ipv4 tproxy ip to 127.0.0.1:7070 meta mark set meta mark and 0xf0ffffff or 0x3000000 accept
		meta l4proto tcp meta mark and 0xf000000 == 0x1000000 meta nfproto ipv6 tproxy ip6 to [::1]:7070 meta mark set meta mark and 0xf0ffffff or 0x3000000 accept
		meta l4proto tcp meta mark and 0xf000000 == 0x1000000 drop
		tcp flags & (syn|ack|fin|rst) == syn meta mark and 0xf000000 == 0 meta nfproto @alive counter QUEUE
	}
	chain MCPAGENT_DIVERT {
		meta mark set meta mark and 0xf0ffffff or 0x3000000
		accept
	}
	chain MCPAGENT_REJECT {
		meta l4proto tcp meta mark and 0xf000000 == 0x2000000 reject with tcp reset
	}
	chain MCPAGENT_ALIVE {
		update @alive { meta nfproto } drop
	}
}
`

// checkNFTInstalled compares the agent's table with expectedNFT, as nft
// lists both.
func checkNFTInstalled(t *testing.T, hasQueue bool) {
	t.Helper()
	want := strings.Replace(expectedNFT, "QUEUE", "accept", 1)
	if hasQueue {
		want = strings.Replace(expectedNFT, "QUEUE", "queue num 7 bypass", 1)
	}
	cmd(t, want, "nft", "-f", "-")
	defer cmd(t, "", "nft", "delete", "table", "inet", "xmcpagent")
	wantList := strings.Replace(nftList(t, "table", "inet", "xmcpagent"), "table inet xmcpagent", "table inet mcpagent", 1)
	if diff := cmp.Diff(wantList, nftList(t, "table", "inet", "mcpagent")); diff != "" {
		t.Errorf("table inet mcpagent (-want +got):\n%s", diff)
	}
}

// fw4Ruleset is a small stand-in for OpenWrt's fw4 rule set, which fw4
// loads with nft -f on every reload, flushing its own table first.
const fw4Ruleset = `table inet fw4
flush table inet fw4
table inet fw4 {
	chain mangle_prerouting {
		type filter hook prerouting priority mangle; policy accept;
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		ct state established,related accept
		iifname "br-lan" accept
	}
}
`

// TestIntegrationNFTablesInstall installs the nftables rules beside a
// fw4-like table, checks them rule by rule, installs again as after a
// crash, reloads and restarts fw4 meanwhile, and checks that Close restores
// the rule set exactly.
func TestIntegrationNFTablesInstall(t *testing.T) {
	netnstest.RequireIsolatedRoot(t)
	netnstest.RequireTool(t, "nft")
	cmd(t, fw4Ruleset, "nft", "-f", "-")
	t.Cleanup(func() { exec.Command("nft", "delete", "table", "inet", "fw4").Run() })
	before := nftList(t, "ruleset")
	run := newNFTRunner(t)
	ctx := context.Background()

	if _, err := install(ctx, BackendNFTables, testRules(), nil, run); err != nil {
		t.Fatal(err)
	}
	checkNFTInstalled(t, !run.noQueue)
	installed := nftList(t, "ruleset")

	// The agent was killed: a new one installs again without Close.
	fw, err := install(ctx, BackendNFTables, testRules(), nil, run)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(installed, nftList(t, "ruleset")); diff != "" {
		t.Fatalf("second install changed the rule set (-first +second):\n%s", diff)
	}
	if got := nftList(t, "tables"); strings.Count(got, "mcpagent") != 1 || !strings.Contains(got, "table inet mcpagent\n") {
		t.Errorf("nft list tables = %q, want table inet mcpagent once", got)
	}

	// fw4 reloads (flush and refill its table) and restarts (delete and
	// add it): the agent's table stays as it is.
	ours := nftList(t, "table", "inet", "mcpagent")
	cmd(t, fw4Ruleset, "nft", "-f", "-")
	cmd(t, "", "nft", "delete", "table", "inet", "fw4")
	cmd(t, fw4Ruleset, "nft", "-f", "-")
	if diff := cmp.Diff(ours, nftList(t, "table", "inet", "mcpagent")); diff != "" {
		t.Fatalf("fw4 reload changed the agent's table (-before +after):\n%s", diff)
	}

	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, nftList(t, "ruleset")); diff != "" {
		t.Fatalf("rule set after Close differs (-before install +after Close):\n%s", diff)
	}
	if err := fw.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	// Someone deleted the table already: Close still succeeds.
	fw, err = install(ctx, BackendNFTables, testRules(), nil, run)
	if err != nil {
		t.Fatal(err)
	}
	cmd(t, "", "nft", "delete", "table", "inet", "mcpagent")
	if err := fw.Close(); err != nil {
		t.Fatalf("Close after the table was deleted: %v", err)
	}
	if diff := cmp.Diff(before, nftList(t, "ruleset")); diff != "" {
		t.Fatalf("rule set at the end differs (-before +after):\n%s", diff)
	}
}

// TestIntegrationNFTablesDataPath is TestIntegrationDataPath with the
// nftables rules; see testDataPath. The stand-in verdicts live in a table
// of the test's own whose chain runs just before the agent's.
func TestIntegrationNFTablesDataPath(t *testing.T) {
	netnstest.RequireIsolatedRoot(t)
	netnstest.RequireTool(t, "nft")
	cmd(t, "table inet verdicts {\n\tchain prerouting {\n\t\ttype filter hook prerouting priority mangle - 1;\n\t}\n}\n", "nft", "-f", "-")
	t.Cleanup(func() { exec.Command("nft", "delete", "table", "inet", "verdicts").Run() })
	testDataPath(t, dataPathBackend{
		install: func(t *testing.T, r Rules) *Firewall {
			fw, err := install(context.Background(), BackendNFTables, r, nil, newNFTRunner(t))
			if err != nil {
				t.Fatal(err)
			}
			return fw
		},
		markSYN: func(t *testing.T, r Rules, _ bool, port string, mark uint32) {
			// One rule serves both families.
			t.Cleanup(func() { cmd(t, "", "nft", "flush", "chain", "inet", "verdicts", "prerouting") })
			cmd(t, "", "nft", "add", "rule", "inet", "verdicts", "prerouting",
				"iifname", "lan0", "tcp", "flags", "&", "(fin|syn|rst|ack)", "==", "syn", "tcp", "dport", port,
				"meta", "mark", "set", "meta", "mark", "&", nftHex(^r.MarkMask), "|", nftHex(mark))
		},
		queued: func(t *testing.T, _ bool) uint64 {
			// The only counter of the agent's chain is the queue rule's.
			return counted(t, cmd(t, "", "nft", "list", "chain", "inet", "mcpagent", chainIntercept), `counter packets (\d+) `)
		},
	})
}

// counted returns the number that the one match of re (with one group) in
// listing shows.
func counted(t *testing.T, listing, re string) uint64 {
	t.Helper()
	m := regexp.MustCompile(re).FindAllStringSubmatch(listing, -1)
	if len(m) != 1 {
		t.Fatalf("%d matches of %q, want 1, in:\n%s", len(m), re, listing)
	}
	n, err := strconv.ParseUint(m[0][1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
