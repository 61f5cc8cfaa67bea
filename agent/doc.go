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
// Without static MCPs it learns their list over DHCP (provision.go): from
// the DHCP clients' hooks through the control socket, or by asking itself
// (inform.go, dhcpopt.InformV4 and InformV6), one list per uplink, merged
// in uplink order into the policy's.
//
// Package agent holds no protocol logic of its own; it must not parse
// packets or options itself (dhcpopt decodes them), and it removes on stop
// exactly what it installed, its control socket included. It needs
// CAP_NET_ADMIN (netfilter, routing, path manager, NFQUEUE) and
// CAP_NET_RAW-free transparent sockets (IP_TRANSPARENT needs CAP_NET_ADMIN);
// the inform source also needs CAP_NET_RAW (packet sockets).
package agent
