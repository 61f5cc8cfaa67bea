package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"testing"

	"github.com/mcpagent/mcpagent/internal/golden"
)

func TestNFTables(t *testing.T) {
	one := testRules()
	one.LANInterfaces = []string{"br-lan"}
	tests := []struct {
		name string
		r    Rules
	}{
		{"nftables.golden", testRules()},
		{"nftables_one_lan.golden", one},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := NFTables(tt.r)
			if again := NFTables(tt.r); again != got {
				t.Fatal("output differs between two calls")
			}
			golden.Check(t, tt.name, got)
		})
	}
}

// TestInstallBackends checks the commands Install and Close run for each
// backend choice, against transcripts in testdata, which backend they
// report and what the choice logs.
func TestInstallBackends(t *testing.T) {
	notFound := &exec.Error{Name: "nft", Err: exec.ErrNotFound}
	tests := []struct {
		name    string
		backend Backend
		fail    map[string]error
		listing map[string]string // iptables -S output, see fakeRunner
		want    Backend
		log     string // substring of the log
		err     string // substring of Install's error
	}{
		{name: "nftables", backend: BackendNFTables, want: BackendNFTables},
		{
			name: "auto_nftables", backend: BackendAuto, want: BackendNFTables,
			log: `msg="firewall backend chosen" backend=nftables reason="nft accepts the rule set"`,
		},
		{
			name: "auto_zero_value", backend: "", want: BackendNFTables,
			log: `backend=nftables reason="nft accepts the rule set"`,
		},
		{
			name: "auto_kernel_rejects", backend: BackendAuto, want: BackendIPTables,
			fail: map[string]error{"nft --check": errors.New("exit status 1: Error: Could not process rule: No such file or directory")},
			log:  `backend=iptables reason="nft --check rejects the rule set" nft_error="check nftables rules: nft --check -f -: exit status 1: Error: Could not process rule: No such file or directory"`,
		},
		{
			name: "auto_no_nft", backend: BackendAuto, want: BackendIPTables,
			fail: map[string]error{"nft": notFound},
			log:  `backend=iptables reason="no nft program"`,
		},
		{
			name: "auto_neither", backend: BackendAuto,
			fail: map[string]error{"nft": notFound, "iptables-restore": errors.New("exit status 2: no TPROXY")},
			err:  `load IPv4 rules: iptables-restore -w --noflush: exit status 2: no TPROXY (nftables not usable either: check nftables rules: nft --check -f -: exec: "nft": executable file not found in $PATH)`,
		},
		{
			name: "nftables_fails", backend: BackendNFTables,
			fail: map[string]error{"nft -f": errors.New("exit status 1: Error: Could not process rule: No such file or directory")},
			err:  "load nftables rules: nft -f -: exit status 1: Error: Could not process rule",
		},
		{
			// A run killed under iptables left its chains: nftables takes
			// them out before it loads its own table.
			name: "nftables_after_iptables_crash", backend: BackendNFTables, want: BackendNFTables,
			listing: map[string]string{"iptables -t mangle": leftoverMangle, "ip6tables -t filter": installedFilter},
		},
		{name: "unknown", backend: "pf", err: `unknown firewall backend "pf" (want auto, nftables or iptables)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fr := &fakeRunner{fail: tt.fail, listings: tt.listing}
			var log strings.Builder
			logger := slog.New(slog.NewTextHandler(&log, nil))
			fw, err := install(context.Background(), tt.backend, testRules(), logger, fr)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("install() = %v, want error containing %q", err, tt.err)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if got := fw.Backend(); got != tt.want {
					t.Errorf("Backend() = %q, want %q", got, tt.want)
				}
				fmt.Fprintf(&fr.transcript, "# Close\n")
				if err := fw.Close(); err != nil {
					t.Fatal(err)
				}
				fmt.Fprintf(&fr.transcript, "# Close again\n")
				if err := fw.Close(); err != nil {
					t.Fatal(err)
				}
			}
			if !strings.Contains(log.String(), tt.log) {
				t.Errorf("log does not contain %q:\n%s", tt.log, log.String())
			}
			golden.Check(t, "backend_"+tt.name+".golden", fr.transcript.String())
		})
	}
}
