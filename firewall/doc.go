// Package firewall installs the netfilter rules that steer LAN TCP SYNs
// through the agent, and removes exactly those rules on Close.
//
// A SYN that a LAN host sends through the router enters mangle PREROUTING
// on a LAN interface and jumps to the agent's chain, which queues it to
// NFQUEUE with queue-bypass (no agent listening: the SYN flows on). The
// agent answers with a verdict:
//
//   - NF_REPEAT with the convert mark: the SYN re-traverses mangle
//     PREROUTING and a TPROXY rule delivers it to the agent's transparent
//     listener, setting the TPROXY routing mark;
//   - NF_REPEAT with the reject mark: the SYN is routed on and a filter
//     FORWARD rule answers it with a TCP reset;
//   - NF_ACCEPT without a mark: the SYN is routed normally ("direct").
//
// Later packets of converted connections belong to a transparent socket;
// they are matched with the socket match and given the TPROXY routing mark.
// Packets to the router's own addresses, packets that are not SYNs, and
// SYNs that already carry one of the agent's marks are never queued, so
// NF_REPEAT cannot loop.
//
// The rules are described once, independently of the backend, and
// rendered for iptables: iptables-restore --noflush loads each address
// family's rules atomically. Because a killed agent leaves its rules behind
// (and, thanks to queue-bypass, traffic still flows), Install first removes
// any leftovers of a previous run.
//
// The package must not decide anything about individual connections, nor
// touch rules outside its own chains and the jumps into them. It needs
// CAP_NET_ADMIN and the iptables, iptables-restore, ip6tables and
// ip6tables-restore programs (legacy or nf_tables based), with the kernel
// modules for the NFQUEUE, TPROXY, MARK and REJECT targets and the socket,
// addrtype and mark matches. It works on Linux only.
package firewall
