// Package nfqsetup prepares a go-nfqueue socket so that binding a queue
// works while packets already arrive, and accepts the packets queued during
// that setup. It is the one place that knows this subtlety; it does not
// open, bind or read queues itself.
//
// go-nfqueue's Open and Register send configuration requests and read one
// reply to each. The kernel queues packets from the moment the queue is
// bound, and a packet message read in place of a reply fails the setup
// ("mismatched sequence"). Prepare attaches a socket filter that drops
// packet messages; Ready removes it once the queue is bound. The kernel
// still holds the packets whose messages were dropped: AcceptBefore, called
// with the id of the first packet the receive loop sees, accepts them.
//
// It needs Linux and CAP_NET_ADMIN (SO_RCVBUFFORCE also needs it in the
// initial user namespace; without it the buffer is what net.core.rmem_max
// allows). On other systems every function returns an error.
package nfqsetup
