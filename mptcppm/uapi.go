package mptcppm

// Wire constants of the mptcp_pm generic netlink family, from the Linux UAPI
// headers include/uapi/linux/mptcp_pm.h (generated from
// Documentation/netlink/specs/mptcp_pm.yaml) and include/uapi/linux/mptcp.h,
// as of Linux 6.18. golang.org/x/sys/unix has none of them.
//
// Byte order follows net/mptcp/pm_netlink.c: endpoint ports
// (MPTCP_PM_ADDR_ATTR_PORT) are host-order u16, event ports
// (MPTCP_ATTR_SPORT/DPORT) are big-endian, IPv4 addresses are in network
// order everywhere, every other integer is host order.
const (
	familyName    = "mptcp_pm"        // MPTCP_PM_NAME
	familyVersion = 1                 // MPTCP_PM_VER
	eventsGroup   = "mptcp_pm_events" // MPTCP_PM_EV_GRP_NAME

	// enum mptcp_pm_cmd (MPTCP_PM_CMD_*).
	cmdAddAddr        = 1
	cmdDelAddr        = 2
	cmdGetAddr        = 3
	cmdFlushAddrs     = 4
	cmdSetLimits      = 5
	cmdGetLimits      = 6
	cmdSetFlags       = 7
	cmdAnnounce       = 8
	cmdRemove         = 9
	cmdSubflowCreate  = 10
	cmdSubflowDestroy = 11

	// MPTCP_PM_ATTR_* (the "attr" set); MPTCP_PM_ENDPOINT_ADDR, the only
	// member of the "endpoint" set, is 1 as well.
	pmAttrAddr        = 1 // nested MPTCP_PM_ADDR_ATTR_*
	pmAttrRcvAddAddrs = 2 // u32
	pmAttrSubflows    = 3 // u32
	pmAttrToken       = 4 // u32
	pmAttrLocID       = 5 // u8
	pmAttrAddrRemote  = 6 // nested MPTCP_PM_ADDR_ATTR_*

	// MPTCP_PM_ADDR_ATTR_*.
	addrAttrFamily = 1 // u16
	addrAttrID     = 2 // u8
	addrAttrAddr4  = 3 // 4 bytes, network order
	addrAttrAddr6  = 4 // 16 bytes
	addrAttrPort   = 5 // u16, host order
	addrAttrFlags  = 6 // u32
	addrAttrIfIdx  = 7 // s32

	// enum mptcp_event_attr (MPTCP_ATTR_*).
	evAttrToken       = 1  // u32
	evAttrFamily      = 2  // u16
	evAttrLocID       = 3  // u8
	evAttrRemID       = 4  // u8
	evAttrSaddr4      = 5  // 4 bytes, network order
	evAttrSaddr6      = 6  // 16 bytes
	evAttrDaddr4      = 7  // 4 bytes, network order
	evAttrDaddr6      = 8  // 16 bytes
	evAttrSport       = 9  // be16
	evAttrDport       = 10 // be16
	evAttrBackup      = 11 // u8
	evAttrError       = 12 // u8
	evAttrFlags       = 13 // u16, MPTCP_PM_EV_FLAG_*
	evAttrTimeout     = 14 // u32, declared but never sent by the kernel
	evAttrIfIdx       = 15 // s32
	evAttrResetReason = 16 // u32
	evAttrResetFlags  = 17 // u32
	evAttrServerSide  = 18 // u8, deprecated in favour of MPTCP_PM_EV_FLAG_SERVER_SIDE

	// Address families as Linux numbers them (AF_INET, AF_INET6): the
	// decoders are portable, so they cannot take these from the host.
	linuxAFInet  = 2
	linuxAFInet6 = 10
)
