//go:build profile

package cpuprofile

import (
	"fmt"
	"os"
	"runtime/pprof"
)

// Available reports whether this build can profile: it was built with
// -tags profile.
const Available = true

// Start starts profiling into the file at path (none if path is empty) and
// returns the function that stops and writes it.
func Start(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}
