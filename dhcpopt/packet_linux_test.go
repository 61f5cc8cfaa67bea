package dhcpopt

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/bpf"
)

// ipv4Packet returns an IPv4 packet of protocol proto with fragment field
// frag, ihl 32-bit words of header, and a transport header starting with
// source port 67 and destination port dport.
func ipv4Packet(proto byte, frag uint16, ihl int, dport uint16) []byte {
	p := make([]byte, ihl*4+8+4)
	p[0] = 0x40 | byte(ihl)
	p[6], p[7] = byte(frag>>8), byte(frag)
	p[8], p[9] = 64, proto
	copy(p[12:], []byte{192, 0, 2, 1, 192, 0, 2, 10})
	t := p[ihl*4:]
	t[0], t[1], t[2], t[3] = 0, 67, byte(dport>>8), byte(dport)
	return p
}

// ipv6Packet returns an IPv6 packet from fe80::1 with next header nh whose
// payload is udp.
func ipv6Packet(nh byte, udp []byte) []byte {
	p := make([]byte, 40, 40+len(udp))
	p[0] = 0x60
	p[4], p[5] = byte(len(udp)>>8), byte(len(udp))
	p[6], p[7] = nh, 64
	copy(p[8:], netip.MustParseAddr("fe80::1").AsSlice())
	copy(p[24:], netip.MustParseAddr("fe80::2").AsSlice())
	return append(p, udp...)
}

// udpDatagram returns a UDP datagram from port 547 to dport carrying payload.
func udpDatagram(dport uint16, payload []byte) []byte {
	n := 8 + len(payload)
	return append([]byte{0x02, 0x23, byte(dport >> 8), byte(dport), byte(n >> 8), byte(n), 0, 0}, payload...)
}

func runFilter(t *testing.T, raw []bpf.RawInstruction, pkt []byte) bool {
	t.Helper()
	prog, ok := bpf.Disassemble(raw)
	if !ok {
		t.Fatal("filter does not disassemble")
	}
	vm, err := bpf.NewVM(prog)
	if err != nil {
		t.Fatal(err)
	}
	n, err := vm.Run(pkt)
	if err != nil {
		t.Fatal(err)
	}
	return n >= len(pkt) // the whole packet
}

func TestUDP4Filter(t *testing.T) {
	tests := []struct {
		name string
		pkt  []byte
		want bool
	}{
		{name: "dhcp reply", pkt: ipv4Packet(17, 0, 5, 68), want: true},
		{name: "with ip options", pkt: ipv4Packet(17, 0, 6, 68), want: true},
		{name: "first fragment", pkt: ipv4Packet(17, 0x2000, 5, 68), want: true},
		{name: "later fragment", pkt: ipv4Packet(17, 0x2001, 5, 68)},
		{name: "other port", pkt: ipv4Packet(17, 0, 5, 67)},
		{name: "tcp", pkt: ipv4Packet(6, 0, 5, 68)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := runFilter(t, udp4Filter, tt.pkt); got != tt.want {
				t.Fatalf("accepted %v, want %v", got, tt.want)
			}
		})
	}
}

func TestUDP6Filter(t *testing.T) {
	const port = 40000
	tests := []struct {
		name string
		pkt  []byte
		want bool
	}{
		{name: "to the client port", pkt: ipv6Packet(17, udpDatagram(546, []byte{7})), want: true},
		{name: "to the sending port", pkt: ipv6Packet(17, udpDatagram(port, []byte{7})), want: true},
		{name: "to the server port", pkt: ipv6Packet(17, udpDatagram(547, []byte{7}))},
		{name: "behind an extension header", pkt: ipv6Packet(0, udpDatagram(546, []byte{7}))},
		{name: "icmpv6", pkt: ipv6Packet(58, udpDatagram(546, []byte{7}))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := runFilter(t, udp6Filter(port), tt.pkt); got != tt.want {
				t.Fatalf("accepted %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParseUDP6(t *testing.T) {
	type result struct {
		Src     netip.AddrPort
		DPort   uint16
		Payload []byte
		OK      bool
	}
	valid := ipv6Packet(17, udpDatagram(546, []byte{7, 8, 9}))
	src := netip.MustParseAddrPort("[fe80::1]:547")
	tests := []struct {
		name string
		pkt  []byte
		want result
	}{
		{name: "valid", pkt: valid, want: result{src, 546, []byte{7, 8, 9}, true}},
		{name: "empty payload", pkt: ipv6Packet(17, udpDatagram(546, nil)), want: result{src, 546, []byte{}, true}},
		{name: "link padding after the packet", pkt: append(bytes.Clone(valid), 0, 0), want: result{src, 546, []byte{7, 8, 9}, true}},
		{name: "udp length shorter than the ip payload", pkt: func() []byte {
			p := bytes.Clone(valid)
			p[40+5] = 9 // one payload octet
			return p
		}(), want: result{src, 546, []byte{7}, true}},
		{name: "truncated", pkt: valid[:len(valid)-1]},
		{name: "no udp header", pkt: valid[:44]},
		{name: "ipv4", pkt: ipv4Packet(17, 0, 5, 546)},
		{name: "not udp", pkt: ipv6Packet(58, udpDatagram(546, []byte{7}))},
		{name: "ip payload shorter than a udp header", pkt: func() []byte {
			p := bytes.Clone(valid)
			p[5] = 7
			return p
		}()},
		{name: "udp length beyond the ip payload", pkt: func() []byte {
			p := bytes.Clone(valid)
			p[40+5] = 12
			return p
		}()},
		{name: "udp length below its header", pkt: func() []byte {
			p := bytes.Clone(valid)
			p[40+5] = 7
			return p
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got result
			got.Src, got.DPort, got.Payload, got.OK = parseUDP6(tt.pkt)
			if diff := cmp.Diff(tt.want, got, addrCmp, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Fatalf("(-want +got):\n%s", diff)
			}
		})
	}
}

// FuzzParseUDP6 checks that parseUDP6 never panics and that a payload it
// returns lies within the packet, after the UDP header, as long as the UDP
// length says.
func FuzzParseUDP6(f *testing.F) {
	f.Add(ipv6Packet(17, udpDatagram(546, []byte{7, 8, 9}))) // valid
	f.Add(ipv6Packet(17, udpDatagram(546, nil)))             // no payload
	f.Add(ipv6Packet(0, udpDatagram(546, nil)))              // extension header
	f.Add(ipv4Packet(17, 0, 5, 546))                         // IPv4
	f.Fuzz(func(t *testing.T, pkt []byte) {
		_, _, payload, ok := parseUDP6(pkt)
		if !ok {
			return
		}
		ulen := int(pkt[44])<<8 | int(pkt[45])
		if len(payload) != ulen-8 || !bytes.Equal(payload, pkt[48:48+len(payload)]) {
			t.Fatalf("payload % x is not the %d octets after the udp header of % x", payload, ulen-8, pkt)
		}
	})
}
