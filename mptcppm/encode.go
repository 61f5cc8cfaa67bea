package mptcppm

import (
	"fmt"
	"math"
	"net/netip"

	"github.com/mdlayher/netlink"
)

// encodeEndpoint adds e as a nested MPTCP_PM_ADDR_ATTR_* set of type typ,
// with only the fields that are set, as iproute2 does. An invalid e.Addr
// leaves out family and address, which is how requests name an endpoint by
// ID alone.
func encodeEndpoint(ae *netlink.AttributeEncoder, typ uint16, e Endpoint) error {
	if e.Addr.Zone() != "" {
		return fmt.Errorf("endpoint address %s: zones are not supported, set IfIndex", e.Addr)
	}
	if e.IfIndex < 0 || e.IfIndex > math.MaxInt32 {
		return fmt.Errorf("endpoint interface index %d out of range", e.IfIndex)
	}
	ae.Nested(typ, func(nae *netlink.AttributeEncoder) error {
		if e.Addr.IsValid() {
			encodeAddr(nae, e.Addr)
		}
		if e.ID != 0 {
			nae.Uint8(addrAttrID, e.ID)
		}
		if e.Port != 0 {
			nae.Uint16(addrAttrPort, e.Port)
		}
		if e.Flags != 0 {
			nae.Uint32(addrAttrFlags, uint32(e.Flags))
		}
		if e.IfIndex != 0 {
			nae.Int32(addrAttrIfIdx, int32(e.IfIndex))
		}
		return nil
	})
	return nil
}

// encodeAddr adds the family and address attributes of a.
func encodeAddr(ae *netlink.AttributeEncoder, a netip.Addr) {
	if a.Is4() {
		ae.Uint16(addrAttrFamily, linuxAFInet)
		b := a.As4()
		ae.Bytes(addrAttrAddr4, b[:])
		return
	}
	ae.Uint16(addrAttrFamily, linuxAFInet6)
	b := a.As16()
	ae.Bytes(addrAttrAddr6, b[:])
}

// encodeLimits returns the attributes of a SET_LIMITS request.
func encodeLimits(l Limits) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(pmAttrRcvAddAddrs, l.AddAddrAccepted)
	ae.Uint32(pmAttrSubflows, l.Subflows)
	return ae.Encode()
}
