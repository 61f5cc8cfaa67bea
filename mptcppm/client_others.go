//go:build !linux

package mptcppm

import (
	"fmt"
	"runtime"

	"github.com/mdlayher/genetlink"
)

// dial fails: the MPTCP path manager is a Linux interface.
func dial() (*genetlink.Conn, error) {
	return nil, fmt.Errorf("mptcp_pm generic netlink on %s: %w", runtime.GOOS, ErrNotSupported)
}
