package mptcpleg

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// Subflow is one subflow of a leg.
type Subflow struct {
	Local, Remote netip.AddrPort
	// State is the subflow's TCP state (TCPEstablished, ...).
	State TCPState
}

// TCPState is a TCP socket state as Linux numbers them
// (include/net/tcp_states.h).
type TCPState uint8

// TCP states.
const (
	TCPEstablished TCPState = 1
	TCPClose       TCPState = 7
)

var tcpStateNames = [...]string{1: "established", "syn-sent", "syn-recv", "fin-wait-1", "fin-wait-2", "time-wait", "close", "close-wait", "last-ack", "listen", "closing", "new-syn-recv"}

func (s TCPState) String() string {
	if int(s) < len(tcpStateNames) && tcpStateNames[s] != "" {
		return tcpStateNames[s]
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Layout of the MPTCP_SUBFLOW_ADDRS socket option (include/uapi/linux/
// mptcp.h, Linux 5.16): a struct mptcp_subflow_data header, then one struct
// mptcp_subflow_addrs per subflow: the local and the remote address, each
// in a struct __kernel_sockaddr_storage.
const (
	subflowDataLen = 16  // sizeof(struct mptcp_subflow_data)
	sockaddrLen    = 128 // sizeof(struct __kernel_sockaddr_storage)
	subflowAddrLen = 2 * sockaddrLen

	afInet  = 2  // AF_INET
	afInet6 = 10 // AF_INET6
)

// MaxSubflows bounds the subflows Subflows reports: the kernel allows at
// most 8 additional subflows per connection.
const MaxSubflows = 9

// tcpInfoPrefix is how much of each subflow's struct tcp_info the
// MPTCP_TCPINFO request asks for: its first bytes, tcpi_state first.
const tcpInfoPrefix = 8

// subflowDataRequest returns the buffer to pass to getsockopt for
// MPTCP_SUBFLOW_ADDRS or MPTCP_TCPINFO: a header that asks for up to
// MaxSubflows elements of elem bytes.
func subflowDataRequest(elem int) []byte {
	b := make([]byte, subflowDataLen+MaxSubflows*elem)
	binary.NativeEndian.PutUint32(b[0:], subflowDataLen)
	binary.NativeEndian.PutUint32(b[12:], uint32(elem))
	return b
}

// parseSubflowData checks the struct mptcp_subflow_data header the kernel
// wrote back for a request of elem-byte elements, whose kernel size must be
// at least minKernel (exactly elem when exact), and returns the elements
// that it copied, at most MaxSubflows.
func parseSubflowData(b []byte, elem, minKernel int, exact bool) ([][]byte, error) {
	if len(b) < subflowDataLen {
		return nil, fmt.Errorf("%d bytes, shorter than the %d-byte header", len(b), subflowDataLen)
	}
	hdr, num := binary.NativeEndian.Uint32(b[0:]), binary.NativeEndian.Uint32(b[4:])
	kernel, user := binary.NativeEndian.Uint32(b[8:]), binary.NativeEndian.Uint32(b[12:])
	if hdr != subflowDataLen || user != uint32(elem) {
		return nil, fmt.Errorf("header size %d and element size %d, want %d and %d", hdr, user, subflowDataLen, elem)
	}
	if kernel < uint32(minKernel) || exact && kernel != uint32(elem) {
		return nil, fmt.Errorf("kernel element size %d, want %d", kernel, elem)
	}
	// num counts every subflow; the kernel copies those that fit.
	data := b[subflowDataLen:]
	n := min(int(min(num, MaxSubflows)), len(data)/elem)
	out := make([][]byte, n)
	for i := range out {
		out[i] = data[i*elem : (i+1)*elem]
	}
	return out, nil
}

// parseSubflowStates decodes what the kernel wrote back for MPTCP_TCPINFO
// asked with tcpInfoPrefix-byte elements: each subflow's TCP state.
func parseSubflowStates(b []byte) ([]TCPState, error) {
	elems, err := parseSubflowData(b, tcpInfoPrefix, tcpInfoPrefix, false)
	if err != nil {
		return nil, fmt.Errorf("subflow tcp info: %w", err)
	}
	out := make([]TCPState, len(elems))
	for i, e := range elems {
		out[i] = TCPState(e[0])
	}
	return out, nil
}

// joinSubflows pairs the addresses and states the kernel listed in the same
// order, and leaves out the closed subflows: the kernel keeps a
// connection's first subflow listed after closing it (msk->first lives as
// long as the connection). It reports false if the lists differ in length:
// a subflow came or went between the two requests.
func joinSubflows(addrs []Subflow, states []TCPState) ([]Subflow, bool) {
	if len(addrs) != len(states) {
		return nil, false
	}
	out := make([]Subflow, 0, len(addrs))
	for i, sf := range addrs {
		if states[i] == TCPClose {
			continue
		}
		sf.State = states[i]
		out = append(out, sf)
	}
	return out, true
}

// parseSubflowAddrs decodes what the kernel wrote back for
// MPTCP_SUBFLOW_ADDRS: each subflow's local and remote address. It is
// strict: a header of other sizes, or an address family other than IPv4
// and IPv6, is an error.
func parseSubflowAddrs(b []byte) ([]Subflow, error) {
	elems, err := parseSubflowData(b, subflowAddrLen, subflowAddrLen, true)
	if err != nil {
		return nil, fmt.Errorf("subflow addresses: %w", err)
	}
	out := make([]Subflow, 0, len(elems))
	for i, e := range elems {
		local, err := parseSockaddr(e[:sockaddrLen])
		if err != nil {
			return nil, fmt.Errorf("subflow %d local address: %w", i, err)
		}
		remote, err := parseSockaddr(e[sockaddrLen:])
		if err != nil {
			return nil, fmt.Errorf("subflow %d remote address: %w", i, err)
		}
		out = append(out, Subflow{Local: local, Remote: remote})
	}
	return out, nil
}

// parseSockaddr decodes a struct sockaddr_in or sockaddr_in6 at the start
// of b (the family in host order, the port in network order).
func parseSockaddr(b []byte) (netip.AddrPort, error) {
	if len(b) < 28 {
		return netip.AddrPort{}, errors.New("too short")
	}
	port := binary.BigEndian.Uint16(b[2:])
	switch f := binary.NativeEndian.Uint16(b); f {
	case afInet:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), port), nil
	case afInet6:
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])).Unmap(), port), nil
	default:
		return netip.AddrPort{}, fmt.Errorf("family %d is neither IPv4 nor IPv6", f)
	}
}
