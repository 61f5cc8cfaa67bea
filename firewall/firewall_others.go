//go:build !linux

package firewall

import (
	"context"
	"errors"
	"log/slog"
)

// Install installs r with backend b. It needs Linux netfilter; elsewhere it
// fails.
func Install(ctx context.Context, b Backend, r Rules, logger *slog.Logger) (*Firewall, error) {
	return nil, errors.New("firewall: netfilter rules are not supported on this OS")
}
