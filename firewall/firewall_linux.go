package firewall

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
)

// Install removes whatever a previous run of the agent left (a killed agent
// leaves its rules, and traffic still flows thanks to queue-bypass) and
// installs r with backend b. A nil logger discards logs.
//
// BackendNFTables replaces the agent's table in one nft transaction.
// BackendIPTables loads the rules atomically per address family, IPv4
// first; if IPv6 fails, the IPv4 rules are removed again. BackendAuto
// first runs nft --check on the nftables rule set and logs which backend
// it chose and why.
//
// There is no netlink API for xtables rules, and nftables rules are kept as
// text (see the package documentation), so Install runs the nft or iptables
// programs.
func Install(ctx context.Context, b Backend, r Rules, logger *slog.Logger) (*Firewall, error) {
	return install(ctx, b, r, logger, execRunner{})
}

// execRunner runs the real programs.
type execRunner struct{}

func (execRunner) run(ctx context.Context, stdin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	// Its messages end up in errors: keep them in one language.
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.String(), nil
}
