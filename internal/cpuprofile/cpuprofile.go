// Package cpuprofile writes a CPU profile of the running command for `go
// tool pprof`: the debug switch -cpuprofile of mcpagent and mcpgw, used to
// find where the time goes before optimising. It must not be on in
// production: profiling costs a few percent of CPU.
package cpuprofile

import (
	"fmt"
	"os"
	"runtime/pprof"
)

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
