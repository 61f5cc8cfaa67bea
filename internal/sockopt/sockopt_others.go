//go:build !linux

package sockopt

import "syscall"

// BindAddressNoPort does nothing off Linux.
func BindAddressNoPort(string, string, syscall.RawConn) error { return nil }
