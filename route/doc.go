// Package route installs the policy routing the agent needs and watches the
// uplinks: a rule and a table that deliver TPROXY-marked packets locally,
// and per uplink a routing table with copies of the uplink's routes plus a
// rule per uplink address, so that a socket bound to an uplink's address
// (an MPTCP subflow) leaves through that uplink. Each uplink table ends in
// an unreachable default, so that nothing from the uplink's address leaves
// by another uplink, and throws the LAN's prefixes back to the main table,
// so that the router's replies from that address to LAN hosts stay in the
// LAN. It reports every change of the uplinks' state to the agent.
//
// The package reconciles level-triggered: on any link, address or route
// change it dumps the kernel's state, computes what it wants from that
// snapshot alone, and adds or deletes the difference. Its rules and routes
// carry their own protocol number (see routeProtocol), which is how it
// recognizes them, including those a killed run left behind, and how Close
// removes exactly them.
//
// It must not change routes or rules it did not create, nor decide which
// uplink a connection uses. It talks netlink only and runs no commands
// (OpenWrt's busybox ip lacks features). It needs CAP_NET_ADMIN and Linux
// 4.17 or later (rule protocols, FRA_PROTOCOL). It works on Linux only.
package route
