// Package intercept sees every LAN TCP SYN that the firewall queues to an
// NFQUEUE, hands it to a decision function (Handler) and releases it with
// the Handler's verdict.
//
// The firewall must queue only the SYNs to intercept, and only while their
// mark has no bit of Config.MarkMask set, with --queue-bypass so that SYNs
// pass untouched while no Interceptor is bound. With iptables, for LAN
// interface br-lan, queue 100 and mask 0xff00 (nftables: "meta mark & 0xff00
// == 0 tcp flags & (syn | ack) == syn queue num 100 bypass"):
//
//	iptables -t mangle -A PREROUTING -i br-lan -p tcp --syn -m mark --mark 0/0xff00 \
//		-j NFQUEUE --queue-num 100 --queue-bypass
//
// Convert and Reject set Config.ConvertMark or Config.RejectMark within the
// mask, keep the mark's other bits, and repeat the hook (NF_REPEAT): the
// packet runs through the mangle PREROUTING chain again from its start,
// skips the queue rule and must meet a rule for its mark, for example
//
//	iptables -t mangle -A PREROUTING -p tcp -m mark --mark 0x100/0xff00 \
//		-j TPROXY --on-port 7000 --tproxy-mark 0x100/0xff00
//	iptables -A FORWARD -p tcp -m mark --mark 0x200/0xff00 -j REJECT --reject-with tcp-reset
//
// (the same with ip6tables). Accept lets the SYN continue unchanged; Drop
// drops it.
//
// The package must never hold up the network: it fails open. Its receive
// loop never blocks, so the Handler must not either. A packet that does not
// parse as a SYN is accepted at once. When the queue is full, or the socket
// cannot take a packet, the kernel accepts it (NFQA_CFG_F_FAIL_OPEN).
// ExpireHeld accepts the SYNs a faulty Handler has held too long. Close
// accepts every SYN still held; when no socket is bound, --queue-bypass
// accepts. If the process dies, the kernel drops the SYNs it held for it
// and their senders' retransmissions pass through the bypass. The package
// does not decide anything, install firewall rules or change sysctls.
//
// Binding a queue needs Linux and CAP_NET_ADMIN in the queue's network
// namespace. ParseSYN is pure Go and builds everywhere; on other systems
// Open returns an error.
package intercept
