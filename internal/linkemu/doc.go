// Package linkemu emulates one direction of a network link in userspace:
// it holds every packet that the firewall queues to an NFQUEUE for a
// one-way delay (plus jitter), drops a random fraction of them, or all of
// them while the link is down, and releases the rest in the order they
// came. It exists because the testbed's kernel has no netem. Rate limits
// are not its job: the testbed shapes rate with tbf.
//
// The firewall queues a link direction's packets, for example every
// packet leaving wan0 to queue 101:
//
//	iptables -t mangle -A POSTROUTING -o wan0 -j NFQUEUE --queue-num 101
//
// (and the same with ip6tables). The queue is bound in metadata-only copy
// mode, so the kernel keeps the packet and sends only its id. Without
// --queue-bypass the link carries nothing while no Link is bound, as a
// cable that is cut.
//
// Settings change at run time with Link.Set and apply to the packets that
// arrive from then on. The package is for the testbed and the benchmarks;
// the product must not import it. Binding a queue needs Linux and
// CAP_NET_ADMIN in the queue's network namespace; Params and ParseParams
// are pure Go and build everywhere, and on other systems Open returns an
// error.
package linkemu
