package mptcppm

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// ErrNotSupported reports that the running system has no MPTCP path manager
// to talk to: the kernel has no mptcp_pm generic netlink family (Linux older
// than 5.7, or built without CONFIG_MPTCP), or the OS is not Linux.
// Errors from Dial and ListenEvents wrap it; test with errors.Is.
var ErrNotSupported = errors.New("mptcp path manager not supported")

// Flags are the flags of a path-manager endpoint
// (MPTCP_PM_ADDR_FLAG_* in include/uapi/linux/mptcp.h).
type Flags uint32

// Endpoint flags. The kernel sets FlagImplicit itself and refuses it in
// AddEndpoint; FlagLaminar needs Linux 6.18.
const (
	// FlagSignal announces the address to the peer (ADD_ADDR).
	FlagSignal Flags = 1 << 0
	// FlagSubflow opens a subflow from the address to the peer.
	FlagSubflow Flags = 1 << 1
	// FlagBackup marks subflows on the address as backup (MP_PRIO).
	FlagBackup Flags = 1 << 2
	// FlagFullmesh opens a subflow from the address to every address the
	// peer announced.
	FlagFullmesh Flags = 1 << 3
	// FlagImplicit marks an entry the kernel created for an address in use
	// that no endpoint named.
	FlagImplicit Flags = 1 << 4
	// FlagLaminar makes the address, once, the source of a subflow to an
	// address the peer announces.
	FlagLaminar Flags = 1 << 5
)

var flagNames = []struct {
	f    Flags
	name string
}{
	{FlagSignal, "signal"},
	{FlagSubflow, "subflow"},
	{FlagBackup, "backup"},
	{FlagFullmesh, "fullmesh"},
	{FlagImplicit, "implicit"},
	{FlagLaminar, "laminar"},
}

// String returns the flags as ip-mptcp(8) names them, joined by "|", with
// unknown bits in hex; "0" for none.
func (f Flags) String() string {
	if f == 0 {
		return "0"
	}
	var parts []string
	for _, n := range flagNames {
		if f&n.f != 0 {
			parts = append(parts, n.name)
			f &^= n.f
		}
	}
	if f != 0 {
		parts = append(parts, fmt.Sprintf("%#x", uint32(f)))
	}
	return strings.Join(parts, "|")
}

// Endpoint is a path-manager endpoint: a local address the in-kernel path
// manager may announce or open subflows from.
type Endpoint struct {
	// ID identifies the endpoint, 1 to 255. Zero in AddEndpoint lets the
	// kernel choose.
	ID uint8
	// Addr is the local IPv4 or IPv6 address, without zone.
	Addr netip.Addr
	// Port is the port announced with a FlagSignal endpoint (the kernel
	// then listens on it); zero means the connection's port. The kernel
	// refuses a port together with FlagSubflow.
	Port uint16
	// Flags say what the path manager does with the address.
	Flags Flags
	// IfIndex binds subflows from the address to an interface; zero means
	// none.
	IfIndex int
}

// Limits are the per-namespace limits of the in-kernel path manager.
// The kernel refuses values above 8.
type Limits struct {
	// AddAddrAccepted is how many addresses announced by a peer
	// (ADD_ADDR) a connection accepts (MPTCP_PM_ATTR_RCV_ADD_ADDRS).
	AddAddrAccepted uint32
	// Subflows is how many additional subflows a connection may have
	// (MPTCP_PM_ATTR_SUBFLOWS).
	Subflows uint32
}

// EventType is the kind of a path-manager event
// (enum mptcp_event_type in include/uapi/linux/mptcp_pm.h).
type EventType uint8

// Event types, numbered as the kernel numbers them.
const (
	// EventCreated: a connection was created (first subflow's SYN).
	EventCreated EventType = 1
	// EventEstablished: a connection is fully established and may open
	// more subflows.
	EventEstablished EventType = 2
	// EventClosed: a connection is gone; only Token is set.
	EventClosed EventType = 3
	// EventAnnounced: the peer announced an address (RemoteID, Daddr,
	// Dport).
	EventAnnounced EventType = 6
	// EventRemoved: the peer removed an address (RemoteID).
	EventRemoved EventType = 7
	// EventSubEstablished: an additional subflow is established.
	EventSubEstablished EventType = 10
	// EventSubClosed: a subflow is closed; Error, ResetReason and
	// ResetFlags may say why.
	EventSubClosed EventType = 11
	// EventSubPriority: a subflow's backup flag changed.
	EventSubPriority EventType = 13
	// EventListenerCreated: the path manager opened a listener for a
	// FlagSignal endpoint with a port (Saddr, Sport).
	EventListenerCreated EventType = 15
	// EventListenerClosed: that listener is closed.
	EventListenerClosed EventType = 16
)

var eventTypeNames = map[EventType]string{
	EventCreated:         "created",
	EventEstablished:     "established",
	EventClosed:          "closed",
	EventAnnounced:       "announced",
	EventRemoved:         "removed",
	EventSubEstablished:  "sub_established",
	EventSubClosed:       "sub_closed",
	EventSubPriority:     "sub_priority",
	EventListenerCreated: "listener_created",
	EventListenerClosed:  "listener_closed",
}

// String returns the name ip-mptcp(8) monitor uses, or "EventType(N)".
func (t EventType) String() string {
	if n, ok := eventTypeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("EventType(%d)", uint8(t))
}

// EventFlags are the flags of a created or established event
// (MPTCP_PM_EV_FLAG_* in include/uapi/linux/mptcp.h).
type EventFlags uint16

// Event flags.
const (
	// EventFlagDenyJoinID0: the peer refuses subflows to its initial
	// address (MP_CAPABLE "C" bit).
	EventFlagDenyJoinID0 EventFlags = 1 << 0
	// EventFlagServerSide: the connection was accepted, not initiated,
	// here (Linux 6.18+; older kernels send a separate attribute, see
	// Event.ServerSide).
	EventFlagServerSide EventFlags = 1 << 1
)

// Event is one path-manager event. Which fields the kernel sets depends on
// Type; fields it did not send are zero.
//
// The kernel declares a timeout attribute (MPTCP_ATTR_TIMEOUT) but never
// sends it, so Event has no field for it.
type Event struct {
	Type EventType
	// Token identifies the connection (not set for listener events).
	Token uint32
	// Family is the subflow's address family as Linux numbers it:
	// 2 (AF_INET) or 10 (AF_INET6).
	Family uint16
	// LocalID and RemoteID are the address IDs of a subflow's ends;
	// RemoteID is also the announced or removed address's ID.
	LocalID, RemoteID uint8
	// Saddr and Sport are the local end of the (first) subflow, or the
	// listener's address.
	Saddr netip.Addr
	Sport uint16
	// Daddr and Dport are the remote end, or the announced address.
	Daddr netip.Addr
	Dport uint16
	// Backup reports whether the subflow is a backup subflow.
	Backup bool
	// IfIndex is the interface the subflow is bound to, if any.
	IfIndex int
	// Error is the subflow socket's pending error as a Linux errno value
	// (sk_err), if any.
	Error uint8
	// Flags are the connection's event flags.
	Flags EventFlags
	// ServerSide reports whether the connection was accepted here. It is
	// set from the deprecated server-side attribute or from
	// EventFlagServerSide, whichever the kernel sent.
	ServerSide bool
	// ResetReason and ResetFlags are the MP_TCPRST reason code and
	// transient flag the peer sent with a reset of the subflow.
	ResetReason, ResetFlags uint32
}
