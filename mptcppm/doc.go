// Package mptcppm is a client for the Linux kernel's MPTCP path manager
// through the mptcp_pm generic netlink family: it manages the in-kernel path
// manager's endpoints and limits and receives the path manager's events.
//
// It only speaks netlink: it decides nothing about which addresses,
// subflows or limits a system should have, keeps no state beyond its
// sockets, and does not log.
//
// A Client and an EventConn act on the network namespace of the thread
// that opened them. Reading the limits and listing the endpoints need no
// privilege; every other request, and receiving events, need CAP_NET_ADMIN
// in that namespace.
// Kernel errors are *netlink.OpError values (package
// github.com/mdlayher/netlink) that unwrap to the errno and carry the
// kernel's extended-acknowledgement message.
//
// On systems other than Linux, Dial and ListenEvents return an error
// wrapping ErrNotSupported.
package mptcppm
