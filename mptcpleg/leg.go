package mptcpleg

import (
	"errors"
	"net"
	"net/netip"
)

// DialConfig configures Dial.
type DialConfig struct {
	// Remote is the downstream MCP.
	Remote netip.AddrPort
	// Header is sent as the TCP Fast Open payload of the SYN, usually the
	// output of AppendHeader. Dial does not modify it.
	Header []byte
	// Mark is the SO_MARK of the leg's packets, for policy routing over an
	// uplink; 0 sets none. A non-zero Mark needs CAP_NET_ADMIN.
	Mark uint32
	// HeaderAfterHandshake sends Header as the first data after the
	// handshake instead of in the SYN. The MCP then learns the destination
	// half a round trip later, but Linux (seen on 6.18) mishandles a
	// Multipath TCP connection opened with SYN data once a second subflow
	// joins: transfers stall for seconds at a time. The zero value follows
	// the plain-mode draft: Header travels in the SYN.
	HeaderAfterHandshake bool
	// Local, if valid, is the source address of the initial subflow: the
	// address of the uplink it is to leave by (the agent's source rules
	// route it there). Invalid lets routing choose.
	Local netip.Addr
	// CongestionControl, if not empty, is the congestion control of the
	// leg's subflows (TCP_CONGESTION), e.g. "cubic". Linux takes any name
	// on an MPTCP socket before it connects and falls back to its default
	// for a name it does not know: check the name beforehand.
	CongestionControl string
}

// Leg is an established leg.
type Leg struct {
	// Conn is the connection; closing it closes the leg.
	Conn *net.TCPConn
	// MPTCP reports whether the leg runs Multipath TCP. It is false when the
	// leg fell back to plain TCP, e.g. because a middlebox stripped
	// MP_CAPABLE (RFC 8041, section 3.1) or the peer does not speak MPTCP.
	MPTCP bool
}

// Errors for kernel settings that Dial and Listen need; the errors they
// return wrap these and name the sysctl and the value needed.
var (
	// ErrMPTCPDisabled means the kernel cannot open Multipath TCP sockets:
	// it lacks MPTCP (Linux 5.6, CONFIG_MPTCP) or net.mptcp.enabled is 0.
	ErrMPTCPDisabled = errors.New("multipath TCP unavailable")
	// ErrFastOpenDisabled means net.ipv4.tcp_fastopen lacks the bits for
	// the side asked for: 0x1 to send data in a SYN, 0x2|0x200 to accept it
	// without a cookie.
	ErrFastOpenDisabled = errors.New("TCP Fast Open disabled")
)
