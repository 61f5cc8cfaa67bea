// Package intercepttest builds raw TCP SYN packets, as NFQUEUE delivers
// them (starting at the IP header), for tests of package intercept and of
// its Handlers.
//
// Package intercepttest is for tests only.
package intercepttest

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// Option changes the segment that SYN builds.
type Option func(*segment)

type segment struct {
	flags   byte
	opts    []byte
	payload []byte
}

// SYN returns an IPv4 packet if src and dst are IPv4 addresses, or an IPv6
// packet if both are IPv6 addresses, holding a TCP SYN from src to dst with
// the given options, in order. The IP and TCP checksums are left zero. SYN
// panics if the families differ or the options exceed the 40 bytes a TCP
// header can hold.
func SYN(src, dst netip.AddrPort, opts ...Option) []byte {
	s := segment{flags: 0x02}
	for _, o := range opts {
		o(&s)
	}
	if len(s.opts) > 40 {
		panic(fmt.Sprintf("intercepttest: %d bytes of tcp options, at most 40 fit", len(s.opts)))
	}
	optLen := (len(s.opts) + 3) &^ 3 // padded with EOL bytes
	tcp := make([]byte, 20+optLen, 20+optLen+len(s.payload))
	binary.BigEndian.PutUint16(tcp[0:2], src.Port())
	binary.BigEndian.PutUint16(tcp[2:4], dst.Port())
	binary.BigEndian.PutUint32(tcp[4:8], 1) // sequence number
	tcp[12] = byte(len(tcp)/4) << 4
	tcp[13] = s.flags
	binary.BigEndian.PutUint16(tcp[14:16], 65535) // window
	copy(tcp[20:], s.opts)
	tcp = append(tcp, s.payload...)

	switch {
	case src.Addr().Is4() && dst.Addr().Is4():
		ip := make([]byte, 20, 20+len(tcp))
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:4], uint16(20+len(tcp)))
		binary.BigEndian.PutUint16(ip[6:8], 0x4000) // DF, as Linux sends SYNs
		ip[8] = 64                                  // TTL
		ip[9] = 6                                   // TCP
		s4, d4 := src.Addr().As4(), dst.Addr().As4()
		copy(ip[12:16], s4[:])
		copy(ip[16:20], d4[:])
		return append(ip, tcp...)
	case src.Addr().Is6() && dst.Addr().Is6():
		ip := make([]byte, 40, 40+len(tcp))
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:6], uint16(len(tcp)))
		ip[6] = 6  // next header: TCP
		ip[7] = 64 // hop limit
		s16, d16 := src.Addr().As16(), dst.Addr().As16()
		copy(ip[8:24], s16[:])
		copy(ip[24:40], d16[:])
		return append(ip, tcp...)
	}
	panic(fmt.Sprintf("intercepttest: SYN from %v to %v mixes address families", src, dst))
}

// Flags sets the TCP flags byte (default: SYN only).
func Flags(f byte) Option { return func(s *segment) { s.flags = f } }

// Payload appends b to the segment as TCP Fast Open data.
func Payload(b []byte) Option {
	return func(s *segment) { s.payload = append(s.payload, b...) }
}

// RawOptions appends b, as given, to the TCP options. The options are padded
// with EOL bytes to a multiple of 4.
func RawOptions(b ...byte) Option {
	return func(s *segment) { s.opts = append(s.opts, b...) }
}

// MSS appends a Maximum Segment Size option (RFC 9293).
func MSS(n uint16) Option { return RawOptions(2, 4, byte(n>>8), byte(n)) }

// WindowScale appends a Window Scale option (RFC 7323).
func WindowScale(shift uint8) Option { return RawOptions(3, 3, shift) }

// SACKPermitted appends a SACK-Permitted option (RFC 2018).
func SACKPermitted() Option { return RawOptions(4, 2) }

// Timestamps appends a Timestamps option (RFC 7323).
func Timestamps(val, ecr uint32) Option {
	b := []byte{8, 10, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[2:6], val)
	binary.BigEndian.PutUint32(b[6:10], ecr)
	return RawOptions(b...)
}

// MPCapable appends an MP_CAPABLE option as Linux puts it in a SYN:
// version 1, HMAC-SHA256 (RFC 8684 section 3.1).
func MPCapable() Option { return RawOptions(30, 4, 0x01, 0x01) }

// MPJoin appends an MP_JOIN option for a SYN (RFC 8684 section 3.2) with
// the receiver's token, the sender's random number and address ID 0.
func MPJoin(token, nonce uint32) Option {
	b := []byte{30, 12, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[4:8], token)
	binary.BigEndian.PutUint32(b[8:12], nonce)
	return RawOptions(b...)
}
