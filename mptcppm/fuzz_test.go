package mptcppm

import (
	"net/netip"
	"testing"

	"github.com/mdlayher/genetlink"
)

// FuzzParseEndpoint checks that the endpoint decoder never panics and that
// whatever it accepts survives a round trip through the encoder: the
// kernel's replies and this package's requests share one layout.
func FuzzParseEndpoint(f *testing.F) {
	// Seeds: every GET_ADDR reply captured from the kernel (IPv4, IPv6,
	// port, interface, laminar), then an empty message and a truncated
	// attribute header.
	labels, msgs := readHex(f, "endpoints.hex")
	for _, l := range labels {
		f.Add(msgs[l].Data)
	}
	f.Add([]byte{})
	f.Add([]byte{8, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := parseEndpointMsg(b)
		if err != nil {
			return
		}
		req, err := endpointRequest(e)
		if err != nil {
			t.Fatalf("decoded %+v, which does not encode: %v", e, err)
		}
		e2, err := parseEndpointMsg(req)
		if err != nil {
			t.Fatalf("encoded %+v, which does not decode: %v", e, err)
		}
		if e != e2 {
			t.Fatalf("round trip changed %+v to %+v", e, e2)
		}
	})
}

// FuzzEndpointRoundTrip encodes arbitrary endpoints and checks that they
// decode unchanged.
func FuzzEndpointRoundTrip(f *testing.F) {
	// Seeds: an IPv4 subflow endpoint with a kernel-chosen ID, an IPv6
	// signal endpoint with ID, port and interface, unknown flag bits.
	f.Add(uint8(0), []byte{10, 0, 0, 1}, uint16(0), uint32(FlagSubflow), int32(0))
	f.Add(uint8(7), netip.MustParseAddr("fd00::1").AsSlice(), uint16(4000), uint32(FlagSignal|FlagBackup), int32(3))
	f.Add(uint8(255), []byte{127, 0, 0, 2}, uint16(1), uint32(0xffffffff), int32(1<<31-1))
	f.Fuzz(func(t *testing.T, id uint8, addr []byte, port uint16, flags uint32, ifindex int32) {
		a, ok := netip.AddrFromSlice(addr)
		if !ok || ifindex < 0 {
			return
		}
		e := Endpoint{ID: id, Addr: a, Port: port, Flags: Flags(flags), IfIndex: int(ifindex)}
		req, err := endpointRequest(e)
		if err != nil {
			t.Fatalf("encode %+v: %v", e, err)
		}
		got, err := parseEndpointMsg(req)
		if err != nil {
			t.Fatalf("decode %+v: %v", e, err)
		}
		if got != e {
			t.Fatalf("round trip changed %+v to %+v", e, got)
		}
	})
}

// FuzzParseEvent checks that the event decoder never panics on any
// generic netlink message.
func FuzzParseEvent(f *testing.F) {
	// Seeds: every event captured from the kernel, IPv4 and IPv6: every
	// event type but the ones only a peer's actions cause are there.
	for _, file := range []string{"events_ipv4.hex", "events_ipv6.hex"} {
		labels, msgs := readHex(f, file)
		for _, l := range labels {
			b, err := msgs[l].MarshalBinary()
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var m genetlink.Message
		if err := m.UnmarshalBinary(b); err != nil {
			return
		}
		ev, err := parseEvent(m)
		if err != nil {
			return
		}
		if ev.Type != EventType(m.Header.Command) {
			t.Fatalf("event type %d from command %d", ev.Type, m.Header.Command)
		}
	})
}

// FuzzParseLimits: the limits decoder never panics, and what it accepts
// encodes back to limits that decode the same.
func FuzzParseLimits(f *testing.F) {
	for _, l := range []Limits{{}, {AddAddrAccepted: 1, Subflows: 2}, {AddAddrAccepted: 8, Subflows: 8}} {
		b, err := encodeLimits(l)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{8, 0, 9, 0, 1, 0, 0, 0}) // subflows only
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := parseLimits(b)
		if err != nil {
			return
		}
		again, err := encodeLimits(l)
		if err != nil {
			t.Fatalf("encode %+v: %v", l, err)
		}
		if l2, err := parseLimits(again); err != nil || l2 != l {
			t.Fatalf("round trip of %+v gave %+v, %v", l, l2, err)
		}
	})
}
