//go:build !linux

package mcpgw

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
)

// onPathRuntime is never running on this OS.
type onPathRuntime struct{}

func startOnPath(OnPath, *slog.Logger, func(*net.TCPListener)) (*onPathRuntime, error) {
	return nil, errOnPathUnsupported
}

func (*onPathRuntime) close() {}

func dialTransparent(context.Context, netip.Addr, netip.AddrPort) (net.Conn, error) {
	return nil, errOnPathUnsupported
}
