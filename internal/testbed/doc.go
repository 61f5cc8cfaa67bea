// Package testbed builds the network-namespace testbed of the end-to-end
// tests and benchmarks (scripts/testbed.sh) and runs processes in it: a LAN
// host, the home router "cpe" with a DSL and an LTE uplink, the LTE
// carrier's NAT "cgn", the ISP "core", the downstream MCP host "mcp" and
// the server host "srv". The addresses are fixed; scripts/testbed.sh lists
// them.
//
// Each Testbed gets a fresh random ID, so its namespaces (mcpt-ID-NODE)
// never collide with another test's, and it is torn down in t.Cleanup even
// when the test fails. Package testbed is for tests only: it must not be
// imported by the product, and it never touches the host's own network
// beyond creating and deleting its namespaces.
//
// It needs root and the programs ip, tc, iptables and ip6tables (installed
// by scripts/setup.sh), and go to build binaries; without them Up skips the
// test, or fails it when CI=true (see package netnstest). The testbed makes
// its own namespaces, so tests that use it need not run under
// netnstest.Main.
package testbed
