package mptcppm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
)

// The decoders below are pure: they take generic netlink payloads (the
// attributes after the genetlink header) and build on no OS facility, so
// they are tested and fuzzed on any platform. They are strict about what
// the kernel promises (attribute lengths, address families) and ignore
// attribute types they do not know, which newer kernels may add.

// parseEndpointMsg decodes the payload of a GET_ADDR reply: one
// MPTCP_PM_ATTR_ADDR holding the endpoint.
func parseEndpointMsg(b []byte) (Endpoint, error) {
	ad, err := newDecoder(b)
	if err != nil {
		return Endpoint{}, fmt.Errorf("decode endpoint: %w", err)
	}
	var (
		e     Endpoint
		found bool
	)
	for ad.Next() {
		if ad.Type() != pmAttrAddr {
			continue
		}
		if found {
			return Endpoint{}, errors.New("decode endpoint: more than one MPTCP_PM_ATTR_ADDR")
		}
		found = true
		ad.Do(func(b []byte) error {
			e, err = parseEndpoint(b)
			return err
		})
	}
	if err := ad.Err(); err != nil {
		return Endpoint{}, fmt.Errorf("decode endpoint: %w", err)
	}
	if !found {
		return Endpoint{}, errors.New("decode endpoint: no MPTCP_PM_ATTR_ADDR")
	}
	return e, nil
}

// parseEndpoint decodes a nested MPTCP_PM_ADDR_ATTR_* set, as
// mptcp_nl_fill_addr writes it.
func parseEndpoint(b []byte) (Endpoint, error) {
	ad, err := newDecoder(b)
	if err != nil {
		return Endpoint{}, err
	}
	var (
		e      Endpoint
		family uint16
	)
	for ad.Next() {
		typ := ad.Type()
		ad.Do(func(b []byte) error {
			var err error
			switch typ {
			case addrAttrFamily:
				family, err = getU16("MPTCP_PM_ADDR_ATTR_FAMILY", b)
			case addrAttrID:
				e.ID, err = getU8("MPTCP_PM_ADDR_ATTR_ID", b)
			case addrAttrAddr4:
				err = setAddr(&e.Addr, "MPTCP_PM_ADDR_ATTR_ADDR4", b, 4)
			case addrAttrAddr6:
				err = setAddr(&e.Addr, "MPTCP_PM_ADDR_ATTR_ADDR6", b, 16)
			case addrAttrPort:
				e.Port, err = getU16("MPTCP_PM_ADDR_ATTR_PORT", b)
			case addrAttrFlags:
				var f uint32
				f, err = getU32("MPTCP_PM_ADDR_ATTR_FLAGS", b)
				e.Flags = Flags(f)
			case addrAttrIfIdx:
				e.IfIndex, err = getIfIndex("MPTCP_PM_ADDR_ATTR_IF_IDX", b)
			}
			return err
		})
	}
	if err := ad.Err(); err != nil {
		return Endpoint{}, err
	}
	if !e.Addr.IsValid() {
		return Endpoint{}, errors.New("endpoint has no address")
	}
	if err := checkFamily(family, "MPTCP_PM_ADDR_ATTR_FAMILY", e.Addr); err != nil {
		return Endpoint{}, err
	}
	return e, nil
}

// parseLimits decodes the payload of a GET_LIMITS reply.
func parseLimits(b []byte) (Limits, error) {
	ad, err := newDecoder(b)
	if err != nil {
		return Limits{}, fmt.Errorf("decode limits: %w", err)
	}
	var (
		l            Limits
		haveAccepted bool
		haveSubflows bool
	)
	for ad.Next() {
		typ := ad.Type()
		ad.Do(func(b []byte) error {
			var err error
			switch typ {
			case pmAttrRcvAddAddrs:
				l.AddAddrAccepted, err = getU32("MPTCP_PM_ATTR_RCV_ADD_ADDRS", b)
				haveAccepted = true
			case pmAttrSubflows:
				l.Subflows, err = getU32("MPTCP_PM_ATTR_SUBFLOWS", b)
				haveSubflows = true
			}
			return err
		})
	}
	if err := ad.Err(); err != nil {
		return Limits{}, fmt.Errorf("decode limits: %w", err)
	}
	if !haveAccepted || !haveSubflows {
		return Limits{}, errors.New("decode limits: reply lacks MPTCP_PM_ATTR_RCV_ADD_ADDRS or MPTCP_PM_ATTR_SUBFLOWS")
	}
	return l, nil
}

// parseEvent decodes one message of the mptcp_pm_events group: the
// command is the event type, the attributes are MPTCP_ATTR_*.
func parseEvent(m genetlink.Message) (Event, error) {
	ev := Event{Type: EventType(m.Header.Command)}
	ad, err := newDecoder(m.Data)
	if err != nil {
		return Event{}, fmt.Errorf("decode %s event: %w", ev.Type, err)
	}
	for ad.Next() {
		typ := ad.Type()
		ad.Do(func(b []byte) error { return ev.decodeAttr(typ, b) })
	}
	if err := ad.Err(); err != nil {
		return Event{}, fmt.Errorf("decode %s event: %w", ev.Type, err)
	}
	for _, a := range []netip.Addr{ev.Saddr, ev.Daddr} {
		if !a.IsValid() {
			continue
		}
		if err := checkFamily(ev.Family, "MPTCP_ATTR_FAMILY", a); err != nil {
			return Event{}, fmt.Errorf("decode %s event: %w", ev.Type, err)
		}
	}
	ev.ServerSide = ev.ServerSide || ev.Flags&EventFlagServerSide != 0
	return ev, nil
}

// decodeAttr stores the event attribute typ with payload b in ev.
func (ev *Event) decodeAttr(typ uint16, b []byte) error {
	var err error
	switch typ {
	case evAttrToken:
		ev.Token, err = getU32("MPTCP_ATTR_TOKEN", b)
	case evAttrFamily:
		ev.Family, err = getU16("MPTCP_ATTR_FAMILY", b)
	case evAttrLocID:
		ev.LocalID, err = getU8("MPTCP_ATTR_LOC_ID", b)
	case evAttrRemID:
		ev.RemoteID, err = getU8("MPTCP_ATTR_REM_ID", b)
	case evAttrSaddr4:
		err = setAddr(&ev.Saddr, "MPTCP_ATTR_SADDR4", b, 4)
	case evAttrSaddr6:
		err = setAddr(&ev.Saddr, "MPTCP_ATTR_SADDR6", b, 16)
	case evAttrDaddr4:
		err = setAddr(&ev.Daddr, "MPTCP_ATTR_DADDR4", b, 4)
	case evAttrDaddr6:
		err = setAddr(&ev.Daddr, "MPTCP_ATTR_DADDR6", b, 16)
	case evAttrSport:
		ev.Sport, err = getBE16("MPTCP_ATTR_SPORT", b)
	case evAttrDport:
		ev.Dport, err = getBE16("MPTCP_ATTR_DPORT", b)
	case evAttrBackup:
		var v uint8
		v, err = getU8("MPTCP_ATTR_BACKUP", b)
		ev.Backup = v != 0
	case evAttrError:
		ev.Error, err = getU8("MPTCP_ATTR_ERROR", b)
	case evAttrFlags:
		var v uint16
		v, err = getU16("MPTCP_ATTR_FLAGS", b)
		ev.Flags = EventFlags(v)
	case evAttrIfIdx:
		ev.IfIndex, err = getIfIndex("MPTCP_ATTR_IF_IDX", b)
	case evAttrResetReason:
		ev.ResetReason, err = getU32("MPTCP_ATTR_RESET_REASON", b)
	case evAttrResetFlags:
		ev.ResetFlags, err = getU32("MPTCP_ATTR_RESET_FLAGS", b)
	case evAttrServerSide:
		var v uint8
		v, err = getU8("MPTCP_ATTR_SERVER_SIDE", b)
		ev.ServerSide = v != 0
	}
	return err
}

// checkFamily reports an error unless family, the value of the attribute
// named name, is absent (zero) or matches a.
func checkFamily(family uint16, name string, a netip.Addr) error {
	want := uint16(linuxAFInet6)
	if a.Is4() {
		want = linuxAFInet
	}
	if family != 0 && family != want {
		return fmt.Errorf("%s is %d, but the address is %s", name, family, a)
	}
	return nil
}

func lengthError(name string, b []byte, want int) error {
	return fmt.Errorf("attribute %s has %d bytes, want %d", name, len(b), want)
}

func getU8(name string, b []byte) (uint8, error) {
	if len(b) != 1 {
		return 0, lengthError(name, b, 1)
	}
	return b[0], nil
}

func getU16(name string, b []byte) (uint16, error) {
	if len(b) != 2 {
		return 0, lengthError(name, b, 2)
	}
	return binary.NativeEndian.Uint16(b), nil
}

func getBE16(name string, b []byte) (uint16, error) {
	if len(b) != 2 {
		return 0, lengthError(name, b, 2)
	}
	return binary.BigEndian.Uint16(b), nil
}

func getU32(name string, b []byte) (uint32, error) {
	if len(b) != 4 {
		return 0, lengthError(name, b, 4)
	}
	return binary.NativeEndian.Uint32(b), nil
}

// getIfIndex decodes an interface index, an s32 the kernel fills from
// a positive int.
func getIfIndex(name string, b []byte) (int, error) {
	v, err := getU32(name, b)
	if err != nil {
		return 0, err
	}
	if int32(v) < 0 {
		return 0, fmt.Errorf("attribute %s is negative (%d)", name, int32(v))
	}
	return int(v), nil
}

// setAddr stores the n-byte address b (4 or 16) in *dst, which must not be
// set yet: a message with both an IPv4 and an IPv6 address is malformed.
func setAddr(dst *netip.Addr, name string, b []byte, n int) error {
	if len(b) != n {
		return lengthError(name, b, n)
	}
	if dst.IsValid() {
		return fmt.Errorf("attribute %s repeats an address already set to %s", name, *dst)
	}
	if n == 4 {
		*dst = netip.AddrFrom4([4]byte(b))
	} else {
		*dst = netip.AddrFrom16([16]byte(b))
	}
	return nil
}

// newDecoder returns an attribute decoder over a copy of b. The netlink
// package reads attribute headers in place, and a slice at an odd offset
// (a nested attribute, a fuzzer's input) faults on CPUs that trap
// unaligned loads, such as MIPS; a fresh allocation is aligned.
func newDecoder(b []byte) (*netlink.AttributeDecoder, error) {
	return netlink.NewAttributeDecoder(append([]byte(nil), b...))
}
