// Command linkemu emulates one direction of a testbed link (package
// linkemu): it binds an NFQUEUE and delays, drops or passes the packets the
// firewall queues to it, with settings read from a file and re-read on
// SIGHUP, so they change while traffic runs. It is a test tool and must not
// grow features of the product; it needs CAP_NET_ADMIN in its network
// namespace.
//
// Usage:
//
//	linkemu -queue N -config FILE [-seed S]
//
// FILE holds the settings in linkemu.ParseParams' syntax, for example
// "delay=10ms jitter=1ms loss=0.01 up". A file that does not parse on
// SIGHUP is reported on stderr and the settings stay as they were.
//
// Once the queue is bound linkemu prints "linkemu running queue N: SETTINGS"
// on stdout, and the same line after each change. It exits cleanly on
// SIGINT or SIGTERM, releasing the packets it holds.
package main
