//go:build !linux

package dhcpopt

import (
	"context"
	"errors"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv6"
)

var errNotSupported = errors.New("dhcp inform is not supported on this OS (it needs Linux packet sockets)")

func informV4(context.Context, InformConfig, func(*dhcpv4.DHCPv4) bool) error {
	return errNotSupported
}

func informV6(context.Context, InformConfig, func(*dhcpv6.Message) bool) error {
	return errNotSupported
}
