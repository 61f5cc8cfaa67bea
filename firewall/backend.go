package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"sync"
	"time"
)

// Backend names the netfilter front end that loads the rules.
type Backend string

const (
	// BackendAuto uses nftables when the nft program exists and the kernel
	// accepts the agent's nftables rule set (nft --check), and iptables
	// otherwise. The zero Backend means BackendAuto.
	BackendAuto Backend = "auto"
	// BackendNFTables loads the rules into a table of the agent's own with
	// nft, as OpenWrt 22.03 and later (fw4) expect.
	BackendNFTables Backend = "nftables"
	// BackendIPTables loads the rules into chains of the agent's own with
	// iptables-restore and ip6tables-restore (legacy or nf_tables based).
	BackendIPTables Backend = "iptables"
)

// Validate reports whether b names a backend.
func (b Backend) Validate() error {
	switch b {
	case "", BackendAuto, BackendNFTables, BackendIPTables:
		return nil
	}
	return fmt.Errorf("unknown firewall backend %q (want %s, %s or %s)", b, BackendAuto, BackendNFTables, BackendIPTables)
}

// closeTimeout bounds how long Close waits for the programs it runs, which
// may wait for the xtables lock held by another program.
const closeTimeout = 30 * time.Second

// runner runs a program, args[0], with stdin as its standard input (none if
// empty), and returns its standard output. Errors name the command and carry
// its standard error; a missing program gives an error that wraps
// exec.ErrNotFound. It exists so tests can record commands instead of
// running them.
type runner interface {
	run(ctx context.Context, stdin string, args ...string) (string, error)
}

// loader is one backend's way of putting the rules in place and taking
// them out again. Both replace whatever a previous run left.
type loader interface {
	load(ctx context.Context) error
	unload(ctx context.Context) error
}

// Firewall is the rule set Install installed. Its methods are safe for
// concurrent use.
type Firewall struct {
	backend Backend
	rules   loader
	log     *slog.Logger

	mu     sync.Mutex
	closed bool
}

// Backend returns the backend that installed the rules: BackendNFTables or
// BackendIPTables, never BackendAuto.
func (f *Firewall) Backend() Backend { return f.backend }

// install is Install with the command runner as a parameter.
func install(ctx context.Context, b Backend, r Rules, logger *slog.Logger, run runner) (*Firewall, error) {
	if err := b.Validate(); err != nil {
		return nil, err
	}
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("invalid rules: %w", err)
	}
	if logger == nil {
		logger = slog.New(discardHandler{})
	}
	chains := ruleset(r)
	nft := &nftLoader{run: run, script: renderNFT(chains)}
	ipt := &iptablesLoader{run: run, log: logger, chains: chains}
	f := &Firewall{backend: b, log: logger}
	var nftErr error // why auto did not pick nftables
	switch b {
	case BackendNFTables:
		f.rules = nft
	case BackendIPTables:
		f.rules = ipt
	default:
		f.backend, f.rules = BackendNFTables, nft
		if nftErr = nft.check(ctx); nftErr != nil {
			f.backend, f.rules = BackendIPTables, ipt
			reason := "nft --check rejects the rule set"
			if errors.Is(nftErr, exec.ErrNotFound) {
				reason = "no nft program"
			}
			logger.Info("firewall backend chosen", "backend", f.backend, "reason", reason, "nft_error", nftErr)
		} else {
			logger.Info("firewall backend chosen", "backend", f.backend, "reason", "nft accepts the rule set")
		}
	}
	// A run killed under the other backend left its rules behind, and two
	// queue rules would hold each SYN twice: take them out first.
	other := loader(ipt)
	if f.rules == ipt {
		other = nft
	}
	if err := other.unload(ctx); err != nil && !errors.Is(err, exec.ErrNotFound) {
		logger.Warn("could not remove the other backend's leftovers", "err", err)
	}
	if err := f.rules.load(ctx); err != nil {
		if nftErr != nil {
			return nil, fmt.Errorf("%w (nftables not usable either: %v)", err, nftErr)
		}
		return nil, err
	}
	f.log.Info("netfilter rules installed", "backend", f.backend, "lan", r.LANInterfaces, "queue", r.Queue, "tproxy_port", r.TProxyPort)
	return f, nil
}

// Close removes the agent's rules. Only the first call does anything;
// later calls return nil.
func (f *Firewall) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	if err := f.rules.unload(ctx); err != nil {
		return err
	}
	f.log.Info("netfilter rules removed", "backend", f.backend)
	return nil
}

// discardHandler is a slog.Handler that drops everything (slog.DiscardHandler
// needs Go 1.24).
type discardHandler struct{}

func (discardHandler) Enabled(context.Context, slog.Level) bool  { return false }
func (discardHandler) Handle(context.Context, slog.Record) error { return nil }
func (d discardHandler) WithAttrs([]slog.Attr) slog.Handler      { return d }
func (d discardHandler) WithGroup(string) slog.Handler           { return d }
