// Package mcpgw is the downstream Multipath Conversion Point (MCP)
// (draft-boucadair-mptcp-plain-mode-09 §5.2 and §6.2.1): it accepts
// Multipath TCP legs whose first bytes, carried in the SYN by TCP Fast Open,
// are MP_CONVERT options naming a destination; it checks the destination,
// connects to it over plain TCP, writes any data that followed the options,
// and relays both ways. Off path, legs are addressed to its listen
// addresses. On path (Config.OnPath, §6.2.1 and §7), it runs on a router
// and takes over, by NFQUEUE and TPROXY, the legs addressed to the
// destination itself whose SYN carries an empty MP_CONVERT, with their
// MP_JOIN subflows; native Multipath TCP and everything else is forwarded
// untouched. A source (D=1) option is used, as the source address of the
// connection to the destination, only within Config.PreserveSource.
//
// Package mcpgw must never open an outbound connection for a leg whose
// header is incomplete, malformed, or names a destination it refuses: a
// multicast, broadcast, loopback, unspecified or link-local address, one of
// the host's own addresses, or a denied prefix (§4 and §9.2 of the draft).
// Such a leg is torn down abortively (a TCP reset, or MP_FASTCLOSE on an
// MPTCP leg) and logged at Debug with a stable reason= key. An empty
// MP_CONVERT option on a leg to a listen address is refused, as is an
// address-carrying one on a leg taken over on the path. Nor does it open
// one for a leg whose client has not completed its handshake: cookie-less
// Fast Open hands over the SYN's data before the client's ACK shows that
// the source address is its own (Config.TrustSYNData waives the wait).
//
// Serve needs, in its network namespace: net.mptcp.enabled=1, the server
// bits 0x2|0x200 of net.ipv4.tcp_fastopen, and the MPTCP path manager's
// subflow limit. It sets whatever is not already right, which needs root
// (writing /proc/sys) and CAP_NET_ADMIN (mptcp_pm SET_LIMITS); when every
// setting is already right it writes nothing and runs unprivileged. On
// path it also needs root: it binds an NFQUEUE, installs iptables rules
// (mangle chains MCPGW and MCPGW_DIVERT, filter chain MCPGW_REJECT, IPv4
// and IPv6) and a policy routing rule and table, and removes them when
// Serve returns. Source preservation needs CAP_NET_ADMIN (IP_TRANSPARENT).
package mcpgw
