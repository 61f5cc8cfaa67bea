// Package e2e holds the end-to-end tests: the real mcpagent and mcpgw
// binaries run in the network-namespace testbed (scripts/testbed.sh)
// between a LAN host, two rate-limited uplinks and a server, and the tests
// assert on what crossed the wire (packet captures, interface counters) and
// on the hashes of the files that arrived.
//
// The tests need root, iproute2, iptables, tcpdump, tshark, curl and
// mptcpize (scripts/setup.sh installs them). Without them they skip with a
// message locally and fail in CI.
package e2e
