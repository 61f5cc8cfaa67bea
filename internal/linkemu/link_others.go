//go:build !linux

package linkemu

import "errors"

// Open returns an error: NFQUEUE exists only on Linux.
func Open(cfg Config) (*Link, error) {
	return nil, errors.New("link emulation needs Linux (NFQUEUE)")
}

// Close does nothing.
func (l *Link) Close() error { return nil }

// nfLink is the OS side of a Link: there is none here.
type nfLink struct{}
