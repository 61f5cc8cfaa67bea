//go:build !linux

package netnstest

import (
	"errors"
	"syscall"
)

func newNetNSAttr() *syscall.SysProcAttr { return nil }

func loopbackUp() error { return errors.New("network namespaces are not supported on this OS") }
