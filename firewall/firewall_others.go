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

// Heartbeat needs Linux; see the Linux documentation.
type Heartbeat struct{}

// NewHeartbeat fails: it needs Linux.
func NewHeartbeat(r Rules) (*Heartbeat, error) {
	return nil, errors.New("firewall: heartbeats are not supported on this OS")
}

// Beat does nothing.
func (*Heartbeat) Beat() error { return nil }

// Close does nothing.
func (*Heartbeat) Close() error { return nil }
