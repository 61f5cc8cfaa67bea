package intercept

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/mcpagent/mcpagent/mptcpleg"
)

// Native classifies the MPTCP options of a SYN.
type Native uint8

const (
	// NativeNone: the SYN carries no MP_CAPABLE or MP_JOIN option.
	NativeNone Native = iota
	// NativeCapable: the SYN opens a Multipath TCP connection
	// (MP_CAPABLE, RFC 8684 section 3.1).
	NativeCapable
	// NativeJoin: the SYN adds a subflow to an existing Multipath TCP
	// connection (MP_JOIN, RFC 8684 section 3.2).
	NativeJoin
)

func (n Native) String() string {
	switch n {
	case NativeNone:
		return "none"
	case NativeCapable:
		return "MP_CAPABLE"
	case NativeJoin:
		return "MP_JOIN"
	}
	return fmt.Sprintf("Native(%d)", uint8(n))
}

// MPConvert classifies the MP_CONVERT options (draft-boucadair-mptcp-plain-mode
// section 4) at the start of a SYN's data.
type MPConvert uint8

const (
	// MPConvertNone: the captured data does not start with an MP_CONVERT
	// option.
	MPConvertNone MPConvert = iota
	// MPConvertAddr: the data starts with MP_CONVERT options, none of them an
	// empty destination option: the request of an off-path MCP.
	MPConvertAddr
	// MPConvertEmpty: among the MP_CONVERT options at the start of the data
	// is an empty destination option (length 4, D bit clear), which asks
	// an on-path MCP to terminate the connection (section 6.2.1).
	MPConvertEmpty
)

func (c MPConvert) String() string {
	switch c {
	case MPConvertNone:
		return "none"
	case MPConvertAddr:
		return "address"
	case MPConvertEmpty:
		return "empty"
	}
	return fmt.Sprintf("MPConvert(%d)", uint8(c))
}

// SYN is the part of a TCP SYN the decision needs.
type SYN struct {
	Src, Dst netip.AddrPort
	MPTCP    Native
	DataLen  int // TCP payload bytes carried by the SYN (TFO data)
	// Token is the receiver's token of an MP_JOIN SYN, which names the
	// connection the subflow joins (RFC 8684 section 3.2); 0 otherwise.
	Token uint32
	// MPConvert classifies the MP_CONVERT options that begin the data, as
	// far as it was captured.
	MPConvert MPConvert
}

// Header constants (RFC 791, RFC 8200, RFC 9293, RFC 8684).
const (
	ipv4MinHeaderLen = 20
	ipv6HeaderLen    = 40
	tcpMinHeaderLen  = 20
	protoTCP         = 6

	ipv4FlagMF         = 0x2000
	ipv4FragOffsetMask = 0x1fff

	tcpFlagFIN = 0x01
	tcpFlagSYN = 0x02
	tcpFlagRST = 0x04
	tcpFlagACK = 0x10

	optEOL   = 0
	optNOP   = 1
	optMPTCP = 30

	mptcpSubtypeCapable = 0
	mptcpSubtypeJoin    = 1
	// Lengths of the MPTCP options a SYN may carry: MP_CAPABLE version 1
	// (RFC 8684) or version 0 (RFC 6824) and MP_JOIN.
	lenCapableV1 = 4
	lenCapableV0 = 12
	lenJoinSYN   = 12
)

// ParseSYN decodes an IPv4 or IPv6 packet, as NFQUEUE delivers it (starting
// at the IP header), that holds a TCP segment with SYN set and ACK, RST and
// FIN clear.
//
// ParseSYN is strict and reads only the headers and the MP_CONVERT
// options at the start of the data. It rejects, with an error
// saying why:
//   - an IP version other than 4 or 6, an IPv4 header length below 20, an IP
//     length field shorter than the headers it must cover, or more captured
//     bytes than the IP length field accounts for;
//   - IPv4 fragments (a fragment offset or the MF flag: the TCP header of a
//     fragmented SYN cannot be trusted, and with conntrack loaded the kernel
//     reassembles before the mangle table anyway);
//   - IPv6 packets whose fixed header is not directly followed by TCP:
//     extension headers are not walked (hosts do not put them on SYNs);
//   - headers cut short by the capture;
//   - a TCP data offset below 20 or beyond the segment, port 0, a segment
//     that is not a pure SYN;
//   - malformed TCP options: a length below 2, an option running past the
//     header, an MPTCP option too short for its subtype, or an MP_CAPABLE
//     or MP_JOIN option of a length the RFCs do not define for a SYN.
//
// The capture may end anywhere after the TCP header (NFQUEUE's copy range):
// DataLen comes from the IP length fields, not from len(pkt), and MPConvert
// looks only at the MP_CONVERT options whose bytes were captured, at most
// two (section 4 of the plain-mode draft), each of a length the draft
// defines; it does not check their fields beyond the kind, length, subtype
// and D bit. ParseSYN checks
// no checksums: the kernel verified the IPv4 header before the packet was
// queued, and the TCP checksum covers bytes the capture may not have.
//
// If both MP_CAPABLE and MP_JOIN are present the SYN is NativeCapable, as
// the Linux kernel treats it; other MPTCP subtypes are ignored.
func ParseSYN(pkt []byte) (SYN, error) {
	if len(pkt) == 0 {
		return SYN{}, fmt.Errorf("empty packet")
	}
	var (
		src    netip.Addr
		dst    netip.Addr
		seg    []byte // the captured TCP segment
		segLen int    // the TCP segment's length per the IP header
	)
	switch v := pkt[0] >> 4; v {
	case 4:
		if len(pkt) < ipv4MinHeaderLen {
			return SYN{}, fmt.Errorf("ipv4 packet of %d bytes is shorter than a minimal header", len(pkt))
		}
		hl := int(pkt[0]&0x0f) * 4
		if hl < ipv4MinHeaderLen {
			return SYN{}, fmt.Errorf("ipv4 header length %d is below %d", hl, ipv4MinHeaderLen)
		}
		if len(pkt) < hl {
			return SYN{}, fmt.Errorf("ipv4 header of %d bytes truncated to %d", hl, len(pkt))
		}
		total := int(binary.BigEndian.Uint16(pkt[2:4]))
		if total < hl+tcpMinHeaderLen {
			return SYN{}, fmt.Errorf("ipv4 total length %d leaves no room for a tcp header after a %d-byte ip header", total, hl)
		}
		if len(pkt) > total {
			return SYN{}, fmt.Errorf("captured %d bytes but ipv4 total length is %d", len(pkt), total)
		}
		if frag := binary.BigEndian.Uint16(pkt[6:8]); frag&(ipv4FlagMF|ipv4FragOffsetMask) != 0 {
			return SYN{}, fmt.Errorf("ipv4 fragment (offset %d, more fragments %t)", 8*int(frag&ipv4FragOffsetMask), frag&ipv4FlagMF != 0)
		}
		if p := pkt[9]; p != protoTCP {
			return SYN{}, fmt.Errorf("ipv4 protocol %d is not tcp", p)
		}
		src = netip.AddrFrom4([4]byte(pkt[12:16]))
		dst = netip.AddrFrom4([4]byte(pkt[16:20]))
		seg, segLen = pkt[hl:], total-hl
	case 6:
		if len(pkt) < ipv6HeaderLen {
			return SYN{}, fmt.Errorf("ipv6 header truncated to %d bytes", len(pkt))
		}
		if nh := pkt[6]; nh != protoTCP {
			return SYN{}, fmt.Errorf("ipv6 next header %d is not tcp (extension headers are not supported)", nh)
		}
		payload := int(binary.BigEndian.Uint16(pkt[4:6]))
		if payload < tcpMinHeaderLen {
			return SYN{}, fmt.Errorf("ipv6 payload length %d leaves no room for a tcp header", payload)
		}
		if len(pkt) > ipv6HeaderLen+payload {
			return SYN{}, fmt.Errorf("captured %d bytes but ipv6 payload length is %d", len(pkt), payload)
		}
		src = netip.AddrFrom16([16]byte(pkt[8:24]))
		dst = netip.AddrFrom16([16]byte(pkt[24:40]))
		seg, segLen = pkt[ipv6HeaderLen:], payload
	default:
		return SYN{}, fmt.Errorf("ip version %d is not 4 or 6", v)
	}

	if len(seg) < tcpMinHeaderLen {
		return SYN{}, fmt.Errorf("tcp header truncated to %d bytes", len(seg))
	}
	doff := int(seg[12]>>4) * 4
	if doff < tcpMinHeaderLen {
		return SYN{}, fmt.Errorf("tcp data offset %d is below %d", doff, tcpMinHeaderLen)
	}
	if doff > segLen {
		return SYN{}, fmt.Errorf("tcp data offset %d is beyond the %d-byte segment", doff, segLen)
	}
	if len(seg) < doff {
		return SYN{}, fmt.Errorf("tcp header of %d bytes truncated to %d", doff, len(seg))
	}
	if f := seg[13]; f&(tcpFlagSYN|tcpFlagACK|tcpFlagRST|tcpFlagFIN) != tcpFlagSYN {
		return SYN{}, fmt.Errorf("tcp flags %#02x are not a pure syn", f)
	}
	sport := binary.BigEndian.Uint16(seg[0:2])
	dport := binary.BigEndian.Uint16(seg[2:4])
	if sport == 0 || dport == 0 {
		return SYN{}, fmt.Errorf("tcp port 0 (%d -> %d)", sport, dport)
	}
	native, token, err := parseOptions(seg[tcpMinHeaderLen:doff])
	if err != nil {
		return SYN{}, err
	}
	data := seg[doff:min(len(seg), segLen)]
	return SYN{
		Src:       netip.AddrPortFrom(src, sport),
		Dst:       netip.AddrPortFrom(dst, dport),
		MPTCP:     native,
		DataLen:   segLen - doff,
		Token:     token,
		MPConvert: classifyConvert(data),
	}, nil
}

// classifyConvert classifies the MP_CONVERT options at the start of the
// captured SYN data.
func classifyConvert(data []byte) MPConvert {
	c := MPConvertNone
	for range mptcpleg.MaxOptions {
		n, source, empty, ok := mptcpleg.PeekOption(data)
		if !ok {
			break
		}
		if c == MPConvertNone {
			c = MPConvertAddr
		}
		if empty && !source {
			c = MPConvertEmpty
		}
		data = data[n:]
	}
	return c
}

// parseOptions walks the TCP options of a SYN and classifies its MPTCP
// options; token is the token of the first MP_JOIN option.
func parseOptions(opts []byte) (n Native, token uint32, err error) {
	var capable, join bool
	for i := 0; i < len(opts); {
		kind := opts[i]
		if kind == optEOL {
			break
		}
		if kind == optNOP {
			i++
			continue
		}
		if i+1 >= len(opts) {
			return NativeNone, 0, fmt.Errorf("tcp option %d at offset %d has no length byte", kind, tcpMinHeaderLen+i)
		}
		l := int(opts[i+1])
		if l < 2 {
			return NativeNone, 0, fmt.Errorf("tcp option %d at offset %d has length %d", kind, tcpMinHeaderLen+i, l)
		}
		if i+l > len(opts) {
			return NativeNone, 0, fmt.Errorf("tcp option %d at offset %d of length %d overruns the %d-byte header", kind, tcpMinHeaderLen+i, l, tcpMinHeaderLen+len(opts))
		}
		if kind == optMPTCP {
			if l < 3 {
				return NativeNone, 0, fmt.Errorf("mptcp option of length %d has no subtype", l)
			}
			switch sub := opts[i+2] >> 4; sub {
			case mptcpSubtypeCapable:
				if l != lenCapableV1 && l != lenCapableV0 {
					return NativeNone, 0, fmt.Errorf("MP_CAPABLE option of length %d, want %d or %d in a syn", l, lenCapableV1, lenCapableV0)
				}
				capable = true
			case mptcpSubtypeJoin:
				if l != lenJoinSYN {
					return NativeNone, 0, fmt.Errorf("MP_JOIN option of length %d, want %d in a syn", l, lenJoinSYN)
				}
				if !join {
					token = binary.BigEndian.Uint32(opts[i+4 : i+8])
				}
				join = true
			}
		}
		i += l
	}
	switch {
	case capable:
		return NativeCapable, 0, nil
	case join:
		return NativeJoin, token, nil
	}
	return NativeNone, 0, nil
}
