// Command bench measures mcpagent against direct TCP and two proxies that
// CPE aggregators use today, side by side on the testbed (package
// testbed, scripts/testbed.sh) with emulated access links, and writes the
// figures with their medians and spreads over repeated runs to
// results.json and results.md. `make bench` runs it (scripts/bench.sh).
//
// It is a test tool: it must not be imported by the product nor grow
// features of it, and it must never be tuned toward a target; every system
// gets the same testbed, links, sysctls and clients. It needs root, the
// programs of the testbed, iperf3 and curl, and for the proxies
// shadowsocks-libev, redsocks, microsocks and mptcpize (scripts/setup.sh
// installs them).
//
// Usage:
//
//	bench [-out DIR] [-reps N] [-dsl RATE,DELAY] [-lte RATE,DELAY] [-systems a,b,c,d] [-gb N]
//
// The systems: (a) direct TCP over the DSL link alone; (b) mcpagent on the
// router and mcpgw on the MCP host; (c) shadowsocks-libev, ss-redir on the
// router (LAN TCP redirected to it) and ss-server on the MCP host; (d)
// redsocks on the router to the SOCKS5 server microsocks on the MCP host.
// (c) and (d) run under mptcpize with the same MPTCP endpoints as (b).
//
// bench also runs its own clients inside the LAN host's namespace:
//
//	bench hold ADDR N          open N connections to an echo server, print
//	                           "held N", keep them until stdin closes
//	bench connrate ADDR R D    open R connections a second for D to an echo
//	                           server, report setup latencies as JSON
//	bench echo ADDR            the echo server, on the server host
package main
