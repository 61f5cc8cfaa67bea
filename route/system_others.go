//go:build !linux

package route

import "errors"

// Start installs policy routing. It needs Linux; elsewhere it fails.
func Start(cfg Config) (*Router, error) {
	return nil, errors.New("route: policy routing is not supported on this OS")
}
