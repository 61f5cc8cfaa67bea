//go:build !linux

package intercept

import (
	"errors"
	"fmt"
)

// Open fails: netfilter queues exist only on Linux.
func Open(cfg Config) (*Interceptor, error) {
	return nil, fmt.Errorf("bind netfilter queue %d: %w (netfilter queues need Linux)", cfg.Queue, errors.ErrUnsupported)
}
