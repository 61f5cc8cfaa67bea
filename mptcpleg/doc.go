// Package mptcpleg is the Multipath TCP leg between the two Multipath
// Conversion Points (MCPs): the MP_CONVERT codec and the sockets at both
// ends of the leg.
//
// The upstream MCP (the router) names the real destination of an
// intercepted connection in MP_CONVERT options (draft-boucadair-mptcp-
// plain-mode-09, section 4), which it sends, followed by an EOL byte, as the
// TCP Fast Open payload of the SYN that opens the leg (AppendHeader, Dial).
// The downstream MCP (mcpgw) accepts the leg with a Fast Open listener
// (Listen), reads the header as the first bytes of the connection and
// decodes it (ParseHeader).
//
// The package must not decide policy: it does not judge the addresses it
// decodes (the draft's rule to ignore multicast, broadcast and loopback
// addresses belongs to the downstream MCP), it never falls back to plain
// TCP sockets on its own, and it never changes sysctls; it reports which
// setting is missing (net.mptcp.enabled, net.ipv4.tcp_fastopen) and leaves
// the change to its caller.
//
// The codec is pure Go and builds everywhere. The sockets need Linux with
// Multipath TCP (IPPROTO_MPTCP, Linux 5.6; TCP Fast Open on MPTCP sockets,
// Linux 6.2). Dial and Listen need no privileges, except that a non-zero
// DialConfig.Mark needs CAP_NET_ADMIN and a port below 1024
// CAP_NET_BIND_SERVICE; on other systems they return an error.
package mptcpleg
