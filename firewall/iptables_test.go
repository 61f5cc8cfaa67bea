package firewall

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/mcpagent/mcpagent/internal/golden"
)

func TestIPTablesRestore(t *testing.T) {
	one := testRules()
	one.LANInterfaces = []string{"br-lan"}
	tests := []struct {
		name string
		r    Rules
		v6   bool
	}{
		{"ipv4.golden", testRules(), false},
		{"ipv6.golden", testRules(), true},
		{"ipv4_one_lan.golden", one, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := IPTablesRestore(tt.r, tt.v6)
			if again := IPTablesRestore(tt.r, tt.v6); again != got {
				t.Fatal("output differs between two calls")
			}
			golden.Check(t, tt.name, got)
		})
	}
}

// fakeRunner records commands as a shell-like transcript and answers
// "iptables -S" from listings.
type fakeRunner struct {
	// listings maps "iptables -t mangle" (program and table) to what -S
	// prints; absent means an empty table.
	listings map[string]string
	// fail makes the command whose line starts with a key fail.
	fail       map[string]error
	transcript strings.Builder
}

func (f *fakeRunner) run(_ context.Context, stdin string, args ...string) (string, error) {
	line := strings.Join(args, " ")
	if stdin != "" {
		fmt.Fprintf(&f.transcript, "$ %s <<EOF\n%sEOF\n", line, stdin)
	} else {
		fmt.Fprintf(&f.transcript, "$ %s\n", line)
	}
	for prefix, err := range f.fail {
		if strings.HasPrefix(line, prefix) {
			return "", fmt.Errorf("%s: %w", line, err)
		}
	}
	if len(args) == 5 && args[4] == "-S" {
		return f.listings[args[0]+" -t "+args[3]], nil
	}
	return "", nil
}

// installedMangle is iptables -S of a mangle table holding the agent's rules
// for testRules (as iptables normalizes them) and a foreign rule.
const installedMangle = `-P PREROUTING ACCEPT
-P INPUT ACCEPT
-P FORWARD ACCEPT
-P OUTPUT ACCEPT
-P POSTROUTING ACCEPT
-N MCPAGENT
-N MCPAGENT_DIVERT
-A PREROUTING -i br-lan -p tcp -j MCPAGENT
-A PREROUTING -i lan1 -p tcp -j MCPAGENT
-A PREROUTING -m comment --comment "mwan3 \"hook\" -j MCPAGENT" -j MARK --set-xmark 0x100/0x3f00
-A MCPAGENT -m addrtype --dst-type LOCAL -j RETURN
-A MCPAGENT -p tcp -m socket --transparent -j MCPAGENT_DIVERT
-A MCPAGENT -p tcp -m mark --mark 0x1000000/0xf000000 -j TPROXY --on-port 7070 --on-ip 127.0.0.1 --tproxy-mark 0x3000000/0xf000000
-A MCPAGENT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m mark --mark 0x0/0xf000000 -j NFQUEUE --queue-num 7 --queue-bypass
-A MCPAGENT_DIVERT -j MARK --set-xmark 0x3000000/0xf000000
-A MCPAGENT_DIVERT -j ACCEPT
`

const installedFilter = `-P INPUT ACCEPT
-P FORWARD ACCEPT
-P OUTPUT ACCEPT
-N MCPAGENT_REJECT
-A FORWARD -i br-lan -p tcp -j MCPAGENT_REJECT
-A FORWARD -i lan1 -p tcp -j MCPAGENT_REJECT
-A FORWARD -j ACCEPT
-A MCPAGENT_REJECT -p tcp -m mark --mark 0x2000000/0xf000000 -j REJECT --reject-with tcp-reset
`

// leftoverMangle is what a killed run with another LAN interface, started
// twice, may leave: duplicate jumps and a jump from a chain of someone else.
const leftoverMangle = `-P PREROUTING ACCEPT
-N MCPAGENT
-N MCPAGENT_DIVERT
-N other
-A PREROUTING -i eth9 -p tcp -j MCPAGENT
-A PREROUTING -i eth9 -p tcp -j MCPAGENT
-A other -g MCPAGENT
-A MCPAGENT -j MCPAGENT_DIVERT
`

// TestInstallSequence checks the commands Install and Close run, against
// transcripts in testdata.
func TestInstallSequence(t *testing.T) {
	tests := []struct {
		name     string
		listings map[string]string
		fail     map[string]error
		close    bool   // also call Close (twice)
		err      string // substring of Install's error
	}{
		{name: "fresh"},
		{
			name:     "leftovers",
			listings: map[string]string{"iptables -t mangle": leftoverMangle, "ip6tables -t filter": installedFilter},
		},
		{
			name: "close",
			listings: map[string]string{
				"iptables -t mangle": installedMangle, "iptables -t filter": installedFilter,
				"ip6tables -t mangle": installedMangle,
			},
			close: true,
		},
		{
			name:     "ipv6_fails",
			listings: map[string]string{"iptables -t mangle": installedMangle, "iptables -t filter": installedFilter},
			fail:     map[string]error{"ip6tables-restore": errors.New("exit status 2: line 5 failed")},
			err:      "load IPv6 rules: ip6tables-restore -w --noflush: exit status 2: line 5 failed",
		},
		{
			name: "list_fails",
			fail: map[string]error{"iptables -w -t filter": errors.New("exit status 3: permission denied")},
			err:  "list IPv4 filter table: iptables -w -t filter -S: exit status 3: permission denied",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fr := &fakeRunner{listings: tt.listings, fail: tt.fail}
			fw, err := install(context.Background(), BackendIPTables, testRules(), nil, fr)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("install() = %v, want error containing %q", err, tt.err)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if tt.close {
				fmt.Fprintf(&fr.transcript, "# Close\n")
				if err := fw.Close(); err != nil {
					t.Fatal(err)
				}
				fmt.Fprintf(&fr.transcript, "# Close again\n")
				if err := fw.Close(); err != nil {
					t.Fatal(err)
				}
			}
			golden.Check(t, "install_"+tt.name+".golden", fr.transcript.String())
		})
	}
}

func TestInstallRejectsInvalidRules(t *testing.T) {
	fr := &fakeRunner{}
	r := testRules()
	r.MarkMask = 0
	if _, err := install(context.Background(), BackendIPTables, r, nil, fr); err == nil {
		t.Fatal("install() with mark mask 0 succeeded")
	}
	if got := fr.transcript.String(); got != "" {
		t.Fatalf("install() ran commands for invalid rules:\n%s", got)
	}
}

func TestFindOurs(t *testing.T) {
	ours := map[string]bool{"MCPAGENT": true, "MCPAGENT_DIVERT": true}
	tests := []struct {
		name           string
		listing        string
		wantDeletions  []string
		wantChains     []string
		wantErrMessage string
	}{
		{
			name:          "installed",
			listing:       installedMangle,
			wantDeletions: []string{"-D PREROUTING -i br-lan -p tcp -j MCPAGENT", "-D PREROUTING -i lan1 -p tcp -j MCPAGENT"},
			wantChains:    []string{"MCPAGENT", "MCPAGENT_DIVERT"},
		},
		{
			name:          "leftovers",
			listing:       leftoverMangle,
			wantDeletions: []string{"-D PREROUTING -i eth9 -p tcp -j MCPAGENT", "-D PREROUTING -i eth9 -p tcp -j MCPAGENT", "-D other -g MCPAGENT"},
			wantChains:    []string{"MCPAGENT", "MCPAGENT_DIVERT"},
		},
		{
			name:          "quoted rule keeps its quoting",
			listing:       "-A FORWARD -m comment --comment \"a \\\"b\\\"\" -j MCPAGENT\r\n",
			wantDeletions: []string{"-D FORWARD -m comment --comment \"a \\\"b\\\"\" -j MCPAGENT"},
		},
		{name: "empty", listing: ""},
		{name: "prefix of our name is not ours", listing: "-N MCPAGENT_X\n-A INPUT -j MCPAGENT_X\n"},
		{name: "unterminated quote", listing: "-A INPUT -m comment --comment \"x -j MCPAGENT\n", wantErrMessage: "line 1: unterminated quote"},
		{name: "quoted -A", listing: "-A INPUT -j ACCEPT\n\"\"-A X -j MCPAGENT\n", wantErrMessage: `line 2: a rule that does not start with "-A ": "\"\"-A X -j MCPAGENT"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			deletions, chains, err := findOurs(tt.listing, ours)
			if tt.wantErrMessage != "" {
				if err == nil || err.Error() != tt.wantErrMessage {
					t.Fatalf("findOurs() error = %v, want %q", err, tt.wantErrMessage)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.wantDeletions, deletions); diff != "" {
				t.Errorf("deletions (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantChains, chains); diff != "" {
				t.Errorf("chains (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSplitArgs(t *testing.T) {
	tests := []struct {
		line string
		want []string
	}{
		{"", nil},
		{"  -A  X\t-j Y ", []string{"-A", "X", "-j", "Y"}},
		{`--comment "a b" x`, []string{"--comment", "a b", "x"}},
		{`--comment "say \"hi\" \\ \n"`, []string{"--comment", `say "hi" \ \n`}},
		{`--comment ""`, []string{"--comment", ""}},
		{`a"b c"d`, []string{"ab cd"}},
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			got, err := splitArgs(tt.line)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("splitArgs(%q) (-want +got):\n%s", tt.line, diff)
			}
		})
	}
}

// FuzzFindOurs checks that whatever iptables -S prints, findOurs only asks
// to delete rules of other chains that jump to ours, each one exactly as
// listed, and reports only our chains.
func FuzzFindOurs(f *testing.F) {
	f.Add(installedMangle)                                           // a table with the agent's rules
	f.Add(leftoverMangle)                                            // duplicate jumps and a goto
	f.Add("-A X -m comment --comment \"\\\"-j MCPAGENT\" -j ACCEPT") // quotes and escapes
	f.Add("-A MCPAGENT -j MCPAGENT")                                 // a chain of ours jumping to itself
	f.Add("-N\n-A\n-A X -j\n")                                       // truncated commands
	ours := map[string]bool{"MCPAGENT": true}
	f.Fuzz(func(t *testing.T, listing string) {
		deletions, chains, err := findOurs(listing, ours)
		if err != nil {
			return
		}
		for _, c := range chains {
			if !ours[c] {
				t.Fatalf("reported chain %q is not ours", c)
			}
		}
		for _, d := range deletions {
			args, err := splitArgs(d)
			if err != nil {
				t.Fatalf("deletion %q does not parse: %v", d, err)
			}
			if len(args) < 2 || args[0] != "-D" || ours[args[1]] || !ours[target(args)] {
				t.Fatalf("deletion %q is not a jump from another chain to ours", d)
			}
			if !strings.Contains(listing, "-A"+d[len("-D"):]) {
				t.Fatalf("deletion %q does not delete a listed rule", d)
			}
		}
	})
}
