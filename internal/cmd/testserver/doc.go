// Command testserver is the server end of the end-to-end tests and
// benchmarks: it serves a directory over HTTP, optionally echoes TCP
// streams, and can tell a client whether its connection arrived over
// Multipath TCP. It is a test tool and must not grow features of the
// product; it needs no privileges beyond binding its addresses.
//
// Usage:
//
//	testserver -http ADDR [-http ADDR ...] -dir DIR [-echo ADDR ...] [-mptcp] [-report-mptcp]
//
// Flags:
//
//	-http ADDR       serve DIR over HTTP on ADDR (repeatable, e.g. once for IPv4
//	                 and once for IPv6: -http 203.0.113.10:80 -http [2001:db8:5::10]:80)
//	-dir DIR         the directory to serve
//	-echo ADDR       echo every byte received on ADDR back to its sender (repeatable)
//	-mptcp           make every listener accept Multipath TCP; without it the
//	                 listeners are plain TCP, whatever the Go default
//	-report-mptcp    answer GET /mptcp with "mptcp" or "tcp": what the requesting
//	                 connection uses
//
// Once a listener accepts connections, testserver prints "listening ADDR"
// on its own line on stdout, ADDR being the bound address (so port 0 shows
// the chosen port). It exits cleanly on SIGINT or SIGTERM.
package main
