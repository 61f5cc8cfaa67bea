package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/mcpagent/mcpagent/config"
	"github.com/mcpagent/mcpagent/firewall"
	"github.com/mcpagent/mcpagent/route"
)

// cleanupWait bounds how long Cleanup waits for a running agent to exit:
// procd allows a stopping agent 15 s before it kills it.
const cleanupWait = 30 * time.Second

// Cleanup removes what a run of the agent that did not stop cleanly left
// (killed, or crashed and no longer respawned): its netfilter rules, policy
// routing, MPTCP endpoints and limits, and control socket. It first waits,
// at most cleanupWait, for a running agent to exit. Each step starts a
// component as Run does, which replaces what the last run left, and closes
// it, which removes everything; after a clean stop there is nothing to do.
// The DHCP state beside the control socket stays: the next run replays it.
func Cleanup(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	wait, cancel := context.WithTimeout(ctx, cleanupWait)
	defer cancel()
	unlock, err := lockRun(cfg, wait.Done())
	if err != nil {
		return err
	}
	defer unlock()
	left := false
	for _, f := range []string{limitsFile(cfg), oursFile(cfg)} {
		if _, err := os.Stat(f); err == nil {
			left = true
		}
	}
	if !left {
		log.Info("nothing to clean up: the last run stopped cleanly")
		return nil
	}
	var errs []error
	if fw, err := firewall.Install(ctx, firewall.Backend(cfg.Firewall), firewallRules(cfg), log.With("component", "firewall")); err != nil {
		errs = append(errs, fmt.Errorf("firewall rules: %w", err))
	} else if err := fw.Close(); err != nil {
		errs = append(errs, fmt.Errorf("firewall rules: %w", err))
	}
	rc := routeConfig(cfg)
	rc.Logger = log.With("component", "route")
	if rt, err := route.Start(rc); err != nil {
		errs = append(errs, fmt.Errorf("policy routing: %w", err))
	} else if err := rt.Close(); err != nil {
		errs = append(errs, fmt.Errorf("policy routing: %w", err))
	}
	if eps, err := newEndpointSync(cfg.MaxSubflows, limitsFile(cfg), oursFile(cfg), log.With("component", "endpoints")); err != nil {
		errs = append(errs, err)
	} else {
		eps.close()
	}
	if err := os.Remove(cfg.ControlSocket); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	log.Info("cleaned up what the last run left")
	return nil
}
