// Package agent wires the upstream MCP together on the router: the SYN
// interceptor, the conversion policy, the MPTCP legs, the transparent
// listener that pairs each released SYN with its leg, the relay, and the
// OS state they need (netfilter rules, policy routing, MPTCP path-manager
// endpoints).
//
// A SYN travels: intercept (held in NFQUEUE) → policy (pass, convert or
// fall back) → mptcpleg (leg opened with MP_CONVERT in the SYN payload) →
// intercept (released with the convert mark into the TPROXY listener) →
// relay (LAN connection ↔ leg).
//
// Package agent holds no protocol logic of its own; it must not parse
// packets or options, and it removes on stop exactly what it installed.
// It needs CAP_NET_ADMIN (netfilter, routing, path manager, NFQUEUE) and
// CAP_NET_RAW-free transparent sockets (IP_TRANSPARENT needs CAP_NET_ADMIN).
package agent
