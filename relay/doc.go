// Package relay copies bytes both ways between pairs of established stream
// sockets: a LAN TCP connection and its Multipath TCP leg on the router, a
// leg and the server connection on mcpgw. It propagates half-closes (an EOF
// on one socket becomes a FIN, on an MPTCP socket a DATA_FIN, on the other
// once every byte is delivered) and resets (an error or reset on one socket
// becomes an abortive close, RST or MP_FASTCLOSE, of the other), and closes
// pairs that stay idle too long.
//
// The package must not dial, accept or decide anything: its caller hands it
// two connected sockets and learns from a callback how the pair ended.
//
// A router holds thousands of mostly idle connections in little memory, so
// an idle pair costs no goroutine and no buffer. A fixed pool of workers,
// each with its own epoll instance, waits on the raw sockets and moves
// bytes with splice(2) through one pipe per worker (read and write through
// one buffer per worker where splice is not supported). A direction whose
// destination is full holds the bytes already taken from its source, at
// most 128 KiB, until the destination drains, and meanwhile reads nothing
// more from its source, so a slow reader pushes back on the sender. One
// coarse sweep per worker finds idle pairs.
//
// The package needs Linux (epoll, eventfd, splice) and no privileges. Where
// splice fails with EINVAL on a socket, as it may on Multipath TCP sockets
// of older kernels, that direction reads and writes through the worker's
// buffer instead; on Linux 6.18 both TCP and MPTCP sockets splice. On other
// systems New returns an error.
package relay
