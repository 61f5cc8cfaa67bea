//go:build !profile

package cpuprofile

import "errors"

// Available reports whether this build can profile: it was built with
// -tags profile.
const Available = false

// Start fails for any path but the empty one: this build has no profiler.
func Start(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	return nil, errors.New("cpu profile: this build cannot profile; build it with -tags profile")
}
