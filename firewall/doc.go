// Package firewall installs the netfilter rules that steer LAN TCP SYNs
// through the agent, and removes exactly those rules on Close.
//
// A SYN that a LAN host sends through the router enters the prerouting hook
// on a LAN interface and reaches the agent's chain, which queues it to
// NFQUEUE with queue-bypass (no agent listening: the SYN flows on). The
// agent answers with a verdict:
//
//   - NF_REPEAT with the convert mark: the SYN re-traverses the prerouting
//     chain, and a TPROXY rule delivers it to the agent's transparent
//     listener, setting the TPROXY routing mark. The listener is on the
//     loopback address (Rules.TProxyListeners), not the any-address, where
//     the socket match would also find it for unconverted connections to
//     its port;
//   - NF_REPEAT with the reject mark: the SYN is routed on and a rule in the
//     forward hook answers it with a TCP reset;
//   - NF_ACCEPT without a mark: the SYN is routed normally ("direct").
//
// The queue rule applies only while the agent beats: Heartbeat sends a
// marked UDP datagram to the loopback address, which a rule in the output
// hook drops, recording the time (an nftables set whose elements time out;
// an iptables recent list). SYNs are queued only within
// Rules.AliveTimeout of the last heartbeat, so an agent that holds the
// queue but no longer runs (stopped, frozen) lets them flow on, as one that
// has exited does.
//
// Later packets of converted connections belong to a transparent socket;
// they are matched with the socket match and given the TPROXY routing mark.
// Packets to the router's own addresses, packets that are not SYNs, and
// SYNs that already carry one of the agent's marks are never queued, so
// NF_REPEAT cannot loop.
//
// The rules are described once, independently of the backend, and rendered
// for one of two backends (see Backend):
//
//   - nftables: a table of the agent's own, table inet mcpagent, holding
//     both address families, with base chains in the prerouting hook at
//     mangle priority, in the forward hook at filter priority and, for the
//     heartbeats, in the output hook at mangle priority. One nft -f
//     transaction adds the table, deletes it and declares it anew, so it
//     replaces whatever a killed run left; Close deletes the table. OpenWrt's
//     fw4 flushes and deletes only its own table inet fw4, so its reloads
//     leave the agent's table alone.
//   - iptables: chains of the agent's own in the mangle and filter tables
//     and jumps into them at the top of PREROUTING, FORWARD and, for the
//     heartbeats, OUTPUT; iptables-restore --noflush loads each address
//     family's rules atomically, after deleting the jumps a killed run
//     left.
//
// The nftables rules are generated as text for nft -f rather than built
// with a netlink library such as github.com/google/nftables: the text is
// what a vendor or an operator would write and read in nft list ruleset,
// so a golden file of it can be reviewed line by line; nft applies it
// atomically; and the same text is what nft --check validates against the
// running kernel when the backend is chosen. The library would add a
// dependency and about 100 KB to every binary, and its rules are trees of
// low-level expressions (payload offsets, registers, bitwise masks) that
// are much harder to check by eye than the statements they stand for.
//
// The package must not decide anything about individual connections, nor
// touch rules outside its own table or chains and the jumps into them. It
// needs CAP_NET_ADMIN. The nftables backend needs the nft program and the
// kernel's nf_tables with the queue, tproxy, socket, fib and reject
// expressions and sets with timeouts (OpenWrt: kmod-nft-queue,
// kmod-nft-tproxy, kmod-nft-socket, beside fw4's kmod-nft-core and
// kmod-nft-fib). The iptables backend needs
// the iptables, iptables-restore, ip6tables and ip6tables-restore programs
// (legacy or nf_tables based), with the kernel modules for the NFQUEUE,
// TPROXY, MARK and REJECT targets and the socket, addrtype, mark and recent
// matches. It works on Linux only.
package firewall
