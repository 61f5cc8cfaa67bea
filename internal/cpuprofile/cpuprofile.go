// Package cpuprofile writes a CPU profile of the running command for `go
// tool pprof`: the debug switch -cpuprofile of mcpagent and mcpgw, used to
// find where the time goes before optimising. It must not be on in
// production: profiling costs a few percent of CPU, and the profiler and
// its gzip writer about 200 KB of the binary, which a router's flash has
// no room for. So only builds with -tags profile can profile; other
// builds refuse the switch.
package cpuprofile
