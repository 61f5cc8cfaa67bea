package mptcppm

import (
	"fmt"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
)

// dial opens a generic netlink socket with extended acknowledgements, so
// kernel errors carry the kernel's message ("limit greater than maximum").
func dial() (*genetlink.Conn, error) {
	c, err := genetlink.Dial(&netlink.Config{Strict: true})
	if err != nil {
		return nil, fmt.Errorf("open generic netlink socket: %w", err)
	}
	return c, nil
}
