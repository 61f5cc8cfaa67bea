//go:build !linux

package mptcpleg

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"
)

// errNotSupported is the error of the socket functions outside Linux.
var errNotSupported = errors.New("multipath TCP legs are not supported on this OS")

// Dial is supported only on Linux.
func Dial(ctx context.Context, cfg DialConfig) (*Leg, error) { return nil, errNotSupported }

// Listen is supported only on Linux.
func Listen(addr netip.AddrPort, qlen int) (*net.TCPListener, error) { return nil, errNotSupported }

// CheckFastOpenServer is supported only on Linux.
func CheckFastOpenServer() error { return errNotSupported }

// IsMPTCP is supported only on Linux.
func IsMPTCP(c *net.TCPConn) (bool, error) { return false, errNotSupported }

// Subflows is not supported on this OS.
func Subflows(c *net.TCPConn) ([]Subflow, error) { return nil, errNotSupported }

// WaitEstablished is supported only on Linux.
func WaitEstablished(ctx context.Context, c *net.TCPConn, deadline time.Time) error {
	return errNotSupported
}
