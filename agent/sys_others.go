//go:build !linux

package agent

import (
	"errors"
	"net"
	"net/netip"

	"github.com/mcpagent/mcpagent/config"
)

var errNotLinux = errors.New("the agent needs Linux (NFQUEUE, TPROXY, Multipath TCP)")

func preflight(*config.Config) error { return errNotLinux }

func listenTransparent(netip.AddrPort) (*net.TCPListener, error) { return nil, errNotLinux }

func linkCounters(string) (rx, tx uint64) { return 0, 0 }

func lockRun(*config.Config, <-chan struct{}) (func(), error) { return nil, errNotLinux }
