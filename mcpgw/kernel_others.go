//go:build !linux

package mcpgw

import "errors"

// prepareKernel fails: mcpgw needs Linux's Multipath TCP.
func prepareKernel(uint32) error {
	return errors.New("mcpgw is not supported on this OS: it needs Linux Multipath TCP")
}

// maxConnsForFiles is a bound that never binds: Serve fails here anyway.
func maxConnsForFiles(int) int { return 1 << 29 }
