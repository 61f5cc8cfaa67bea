// Package mcpgw is the downstream Multipath Conversion Point (MCP) in
// off-path mode (draft-boucadair-mptcp-plain-mode-09 §5.2 and §6.2.1): it
// accepts Multipath TCP legs whose first bytes, carried in the SYN by TCP
// Fast Open, are MP_CONVERT options naming a destination; it checks the
// destination, connects to it over plain TCP, writes any data that followed
// the options, and relays both ways.
//
// Package mcpgw must never open an outbound connection for a leg whose
// header is incomplete, malformed, or names a destination it refuses: a
// multicast, broadcast, loopback, unspecified or link-local address, one of
// the host's own addresses, or a denied prefix (§4 and §9.2 of the draft).
// Such a leg is torn down abortively (a TCP reset, or MP_FASTCLOSE on an
// MPTCP leg) and logged at Debug with a stable reason= key. The empty
// MP_CONVERT option, which asks an on-path MCP to forward the SYN as it is,
// is refused: on-path mode is not implemented.
//
// Serve needs, in its network namespace: net.mptcp.enabled=1, the server
// bits 0x2|0x200 of net.ipv4.tcp_fastopen, and the MPTCP path manager's
// subflow limit. It sets whatever is not already right, which needs root
// (writing /proc/sys) and CAP_NET_ADMIN (mptcp_pm SET_LIMITS); when every
// setting is already right it writes nothing and runs unprivileged.
package mcpgw
