package mptcpleg

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// MP_CONVERT wire constants (draft-boucadair-mptcp-plain-mode-09, section 4).
const (
	// OptionKind is the TCP option kind of Multipath TCP (RFC 8684).
	OptionKind = 30
	// SubtypeConvert is the MPTCP subtype of MP_CONVERT that the draft
	// allows for early deployment in managed networks.
	SubtypeConvert = 0xe
	// ProtocolTCP is the IANA protocol number of TCP, the draft's default
	// for Option.Protocol.
	ProtocolTCP = 6
	// MaxHeaderLen is the length of the longest valid header: two options
	// with an IPv6 address and a port (22 bytes each) and the EOL byte.
	MaxHeaderLen = 45
	// MaxOptions is how many MP_CONVERT options a SYN may carry: "Up to
	// two MP_CONVERT options can appear inside a SYN".
	MaxOptions = 2
)

const (
	kindEOL = 0 // TCP "End of Option List"

	// Option lengths, the only ones the draft defines: the 4 fixed bytes
	// (kind, length, subtype/D/flags, protocol), then an optional IPv4 or
	// IPv6 address, then an optional 2-byte port after an address.
	lenEmpty    = 4
	lenIPv4     = lenEmpty + 4
	lenIPv4Port = lenIPv4 + 2
	lenIPv6     = lenEmpty + 16
	lenIPv6Port = lenIPv6 + 2

	dBit      = 0x08 // byte 2: Subtype(4) | D(1) | Flags(3)
	flagsMask = 0x07
)

// Option is one MP_CONVERT option.
//
// The zero Addr stands for the empty option (length 4) that an upstream MCP
// sends toward an on-path downstream MCP. An IPv4 address is encoded in 4
// bytes and an IPv6 address in 16; an IPv4-mapped IPv6 address
// (::ffff:a.b.c.d) is an IPv6 address here and is encoded in 16 bytes, so
// callers that mean IPv4 must Unmap it first. ParseHeader returns addresses
// exactly as they were encoded.
type Option struct {
	// Source is the D bit: Addr and Port name the source of the original
	// connection; false: its destination.
	Source bool
	// Flags are the 3 reserved flag bits. AppendHeader encodes them as given
	// (the draft says to send zero); ParseHeader returns them as received and
	// never rejects them (the draft says to ignore them on receipt).
	Flags uint8
	// Protocol is the IANA protocol number of the original connection;
	// ProtocolTCP for TCP.
	Protocol uint8
	// Addr is the address, or the zero Addr for an option without one.
	Addr netip.Addr
	// Port is the port; 0 means the option has no port field.
	Port uint16
}

// Errors of ParseHeader: every error it returns is ErrTruncated or wraps one
// of the others, so callers test with errors.Is. AppendHeader wraps
// ErrNoOption, ErrTooManyOptions and ErrSameDirection for the same faults.
var (
	// ErrTruncated means that b ends before the header does but is the
	// start of a header that may still be valid: read more bytes and retry.
	ErrTruncated = errors.New("MP_CONVERT header truncated")
	// ErrNoOption means that the header has no option before its EOL.
	ErrNoOption = errors.New("no MP_CONVERT option")
	// ErrKind means that the first byte is not MPTCP option kind 30.
	ErrKind = errors.New("not an MPTCP option")
	// ErrSubtype means an MPTCP option other than MP_CONVERT.
	ErrSubtype = errors.New("not an MP_CONVERT option")
	// ErrLength means an option length other than 4, 8, 10, 20 or 22.
	ErrLength = errors.New("invalid MP_CONVERT option length")
	// ErrZeroPort means a port field that holds port 0.
	ErrZeroPort = errors.New("MP_CONVERT port field is zero")
	// ErrSameDirection means two options with the same D bit, which the
	// draft forbids.
	ErrSameDirection = errors.New("two MP_CONVERT options with the same D bit")
	// ErrTooManyOptions means a third option; the draft allows two.
	ErrTooManyOptions = errors.New("more than two MP_CONVERT options")
	// ErrMissingEOL means that an option is followed by a byte that is
	// neither EOL nor the start of another MP_CONVERT option. As the EOL must
	// follow the options at once, a header never extends past MaxHeaderLen
	// bytes.
	ErrMissingEOL = errors.New("MP_CONVERT options not followed by EOL")
)

// AppendHeader appends the options followed by one EOL byte (kind 0) to b
// and returns the extended slice: the payload that Dial sends in the SYN.
// It accepts one or two options, with different D bits, Flags within 3 bits,
// no address zone and no Port without an Addr. On error it returns b
// unchanged.
func AppendHeader(b []byte, opts ...Option) ([]byte, error) {
	if err := checkOptions(opts); err != nil {
		return b, fmt.Errorf("encode MP_CONVERT header: %w", err)
	}
	for _, o := range opts {
		b = appendOption(b, o)
	}
	return append(b, kindEOL), nil
}

func checkOptions(opts []Option) error {
	switch {
	case len(opts) == 0:
		return ErrNoOption
	case len(opts) > MaxOptions:
		return ErrTooManyOptions
	case len(opts) == MaxOptions && opts[0].Source == opts[1].Source:
		return ErrSameDirection
	}
	for i, o := range opts {
		switch {
		case o.Flags&^flagsMask != 0:
			return fmt.Errorf("option %d: flags %#x do not fit in 3 bits", i, o.Flags)
		case o.Addr.Zone() != "":
			return fmt.Errorf("option %d: address %s has a zone", i, o.Addr)
		case !o.Addr.IsValid() && o.Port != 0:
			return fmt.Errorf("option %d: port %d without an address", i, o.Port)
		}
	}
	return nil
}

func appendOption(b []byte, o Option) []byte {
	var addr []byte
	switch {
	case o.Addr.Is4():
		a := o.Addr.As4()
		addr = a[:]
	case o.Addr.Is6():
		a := o.Addr.As16()
		addr = a[:]
	}
	length := lenEmpty + len(addr)
	if o.Port != 0 {
		length += 2
	}
	b2 := byte(SubtypeConvert<<4) | o.Flags
	if o.Source {
		b2 |= dBit
	}
	b = append(b, OptionKind, byte(length), b2, o.Protocol)
	b = append(b, addr...)
	if o.Port != 0 {
		b = binary.BigEndian.AppendUint16(b, o.Port)
	}
	return b
}

// ParseHeader decodes the MP_CONVERT options and the EOL byte at the start
// of b. n counts the bytes consumed, including the EOL, so b[n:] is the data
// of the original SYN. Decoding is strict: the header must start with an
// option, hold one or two MP_CONVERT options with different D bits, and end
// with an EOL right after them; it never looks past MaxHeaderLen bytes.
// If b is a strict prefix of a header that may still turn out valid,
// ParseHeader returns ErrTruncated. The addresses are not judged (loopback,
// multicast, the MCP's own): that is the caller's job.
func ParseHeader(b []byte) (opts []Option, n int, err error) {
	for {
		if n == len(b) {
			return nil, 0, ErrTruncated
		}
		switch k := b[n]; {
		case k == kindEOL && len(opts) == 0:
			return nil, 0, ErrNoOption
		case k == kindEOL:
			return opts, n + 1, nil
		case k != OptionKind && len(opts) == 0:
			return nil, 0, fmt.Errorf("first byte is kind %d: %w", k, ErrKind)
		case k != OptionKind:
			return nil, 0, fmt.Errorf("byte %d is %#x: %w", n, k, ErrMissingEOL)
		case len(opts) == MaxOptions:
			return nil, 0, fmt.Errorf("option at byte %d: %w", n, ErrTooManyOptions)
		}
		o, l, err := parseOption(b[n:], opts)
		if err == ErrTruncated {
			return nil, 0, err
		}
		if err != nil {
			return nil, 0, fmt.Errorf("option at byte %d: %w", n, err)
		}
		opts = append(opts, o)
		n += l
	}
}

// validLen reports whether l is an option length the draft defines.
func validLen(l int) bool {
	switch l {
	case lenEmpty, lenIPv4, lenIPv4Port, lenIPv6, lenIPv6Port:
		return true
	}
	return false
}

// PeekOption looks at the MP_CONVERT option at the start of b without
// decoding its fields, for a classifier that sees only part of a SYN's
// data: ok is false unless b holds all of an option of the MP_CONVERT
// subtype and of a length the draft defines. n is the option's length,
// source its D bit, and empty reports an option without address or port.
func PeekOption(b []byte) (n int, source, empty, ok bool) {
	if len(b) < 3 || b[0] != OptionKind || b[2]>>4 != SubtypeConvert {
		return 0, false, false, false
	}
	n = int(b[1])
	if !validLen(n) || n > len(b) {
		return 0, false, false, false
	}
	return n, b[2]&dBit != 0, n == lenEmpty, true
}

// parseOption decodes the option at the start of b, whose first byte is
// OptionKind; prev are the options before it.
func parseOption(b []byte, prev []Option) (Option, int, error) {
	if len(b) < 2 {
		return Option{}, 0, ErrTruncated
	}
	l := int(b[1])
	if !validLen(l) {
		return Option{}, 0, fmt.Errorf("length %d: %w", l, ErrLength)
	}
	if len(b) < 3 {
		return Option{}, 0, ErrTruncated
	}
	if st := b[2] >> 4; st != SubtypeConvert {
		return Option{}, 0, fmt.Errorf("subtype %#x: %w", st, ErrSubtype)
	}
	o := Option{Source: b[2]&dBit != 0, Flags: b[2] & flagsMask}
	for _, p := range prev {
		if p.Source == o.Source {
			return Option{}, 0, ErrSameDirection
		}
	}
	if len(b) < l {
		return Option{}, 0, ErrTruncated
	}
	o.Protocol = b[3]
	switch l {
	case lenIPv4, lenIPv4Port:
		o.Addr = netip.AddrFrom4([4]byte(b[4:8]))
	case lenIPv6, lenIPv6Port:
		o.Addr = netip.AddrFrom16([16]byte(b[4:20]))
	}
	if l == lenIPv4Port || l == lenIPv6Port {
		o.Port = binary.BigEndian.Uint16(b[l-2 : l])
		if o.Port == 0 {
			return Option{}, 0, ErrZeroPort
		}
	}
	return o, l, nil
}
