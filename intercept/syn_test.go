package intercept_test

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mcpagent/mcpagent/intercept"
	"github.com/mcpagent/mcpagent/intercept/intercepttest"
)

var (
	src4 = netip.MustParseAddrPort("192.168.1.23:40000")
	dst4 = netip.MustParseAddrPort("198.51.100.7:443")
	src6 = netip.MustParseAddrPort("[fd00::23]:40000")
	dst6 = netip.MustParseAddrPort("[2001:db8::7]:443")

	cmpAddrPort = cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })
)

// linuxOptions are the options Linux puts in a plain SYN, in its order.
var linuxOptions = []intercepttest.Option{
	intercepttest.MSS(1460), intercepttest.SACKPermitted(), intercepttest.Timestamps(1, 0),
	intercepttest.RawOptions(1), intercepttest.WindowScale(7),
}

// with returns linuxOptions followed by more.
func with(more ...intercepttest.Option) []intercepttest.Option {
	return append(append([]intercepttest.Option(nil), linuxOptions...), more...)
}

// edit returns a copy of pkt changed by f.
func edit(pkt []byte, f func(p []byte)) []byte {
	p := bytes.Clone(pkt)
	f(p)
	return p
}

var validSYNs = []struct {
	name string
	pkt  []byte
	want intercept.SYN
}{
	{
		name: "ipv4 plain",
		pkt:  intercepttest.SYN(src4, dst4, linuxOptions...),
		want: intercept.SYN{Src: src4, Dst: dst4},
	},
	{
		name: "ipv6 plain",
		pkt:  intercepttest.SYN(src6, dst6, linuxOptions...),
		want: intercept.SYN{Src: src6, Dst: dst6},
	},
	{
		name: "no options",
		pkt:  intercepttest.SYN(src4, dst4),
		want: intercept.SYN{Src: src4, Dst: dst4},
	},
	{
		name: "ipv4 MP_CAPABLE",
		pkt:  intercepttest.SYN(src4, dst4, with(intercepttest.MPCapable())...),
		want: intercept.SYN{Src: src4, Dst: dst4, MPTCP: intercept.NativeCapable},
	},
	{
		name: "ipv6 MP_CAPABLE",
		pkt:  intercepttest.SYN(src6, dst6, with(intercepttest.MPCapable())...),
		want: intercept.SYN{Src: src6, Dst: dst6, MPTCP: intercept.NativeCapable},
	},
	{
		name: "MP_CAPABLE version 0 (RFC 6824) with its key",
		pkt:  intercepttest.SYN(src4, dst4, intercepttest.RawOptions(30, 12, 0x00, 0x81, 1, 2, 3, 4, 5, 6, 7, 8)),
		want: intercept.SYN{Src: src4, Dst: dst4, MPTCP: intercept.NativeCapable},
	},
	{
		name: "ipv4 MP_JOIN",
		pkt:  intercepttest.SYN(src4, dst4, intercepttest.MSS(1460), intercepttest.MPJoin(0xdeadbeef, 7)),
		want: intercept.SYN{Src: src4, Dst: dst4, MPTCP: intercept.NativeJoin, Token: 0xdeadbeef},
	},
	{
		name: "ipv6 MP_JOIN with backup bit",
		pkt:  intercepttest.SYN(src6, dst6, intercepttest.RawOptions(30, 12, 0x11, 3, 0, 0, 0, 1, 0, 0, 0, 2)),
		want: intercept.SYN{Src: src6, Dst: dst6, MPTCP: intercept.NativeJoin, Token: 1},
	},
	{
		name: "MP_JOIN and MP_CAPABLE: capable wins",
		pkt:  intercepttest.SYN(src4, dst4, intercepttest.MPJoin(1, 2), intercepttest.MPCapable()),
		want: intercept.SYN{Src: src4, Dst: dst4, MPTCP: intercept.NativeCapable},
	},
	{
		name: "other MPTCP subtype (MP_CONVERT) is not native",
		pkt:  intercepttest.SYN(src4, dst4, intercepttest.RawOptions(30, 4, 0xe0, 6)),
		want: intercept.SYN{Src: src4, Dst: dst4},
	},
	{
		name: "options after EOL are ignored",
		pkt:  intercepttest.SYN(src4, dst4, intercepttest.RawOptions(1, 0, 30, 1)),
		want: intercept.SYN{Src: src4, Dst: dst4},
	},
	{
		name: "on-path request: empty MP_CONVERT and EOL in the data",
		pkt:  intercepttest.SYN(src4, dst4, with(intercepttest.MPCapable(), intercepttest.Payload([]byte{30, 4, 0xe0, 6, 0}))...),
		want: intercept.SYN{Src: src4, Dst: dst4, MPTCP: intercept.NativeCapable, DataLen: 5, MPConvert: intercept.MPConvertEmpty},
	},
	{
		name: "on-path request with a source option after the empty one",
		pkt: intercepttest.SYN(src6, dst6, with(intercepttest.MPCapable(), intercepttest.Payload([]byte{
			30, 4, 0xe0, 6, 30, 8, 0xe8, 6, 203, 0, 113, 5, 0, 'G', 'E', 'T'}))...),
		want: intercept.SYN{Src: src6, Dst: dst6, MPTCP: intercept.NativeCapable, DataLen: 16, MPConvert: intercept.MPConvertEmpty},
	},
	{
		name: "on-path request with the source option first",
		pkt: intercepttest.SYN(src4, dst4, with(intercepttest.MPCapable(), intercepttest.Payload([]byte{
			30, 8, 0xe8, 6, 203, 0, 113, 5, 30, 4, 0xe0, 6, 0}))...),
		want: intercept.SYN{Src: src4, Dst: dst4, MPTCP: intercept.NativeCapable, DataLen: 13, MPConvert: intercept.MPConvertEmpty},
	},
	{
		name: "off-path request: MP_CONVERT with address and port",
		pkt: intercepttest.SYN(src4, dst4, with(intercepttest.MPCapable(), intercepttest.Payload([]byte{
			30, 10, 0xe0, 6, 198, 51, 100, 7, 0x01, 0xbb, 0}))...),
		want: intercept.SYN{Src: src4, Dst: dst4, MPTCP: intercept.NativeCapable, DataLen: 11, MPConvert: intercept.MPConvertAddr},
	},
	{
		name: "an empty source option (D=1) is not an on-path request",
		pkt:  intercepttest.SYN(src4, dst4, intercepttest.MPCapable(), intercepttest.Payload([]byte{30, 4, 0xe8, 6, 0})),
		want: intercept.SYN{Src: src4, Dst: dst4, MPTCP: intercept.NativeCapable, DataLen: 5, MPConvert: intercept.MPConvertAddr},
	},
	{
		name: "a third MP_CONVERT option is not looked at",
		pkt: intercepttest.SYN(src4, dst4, intercepttest.MPCapable(), intercepttest.Payload([]byte{
			30, 8, 0xe0, 6, 1, 2, 3, 4, 30, 8, 0xe8, 6, 1, 2, 3, 4, 30, 4, 0xe0, 6, 0})),
		want: intercept.SYN{Src: src4, Dst: dst4, MPTCP: intercept.NativeCapable, DataLen: 21, MPConvert: intercept.MPConvertAddr},
	},
	{
		name: "MP_CONVERT in a SYN without MP_CAPABLE is reported as seen",
		pkt:  intercepttest.SYN(src4, dst4, with(intercepttest.Payload([]byte{30, 4, 0xe0, 6, 0}))...),
		want: intercept.SYN{Src: src4, Dst: dst4, DataLen: 5, MPConvert: intercept.MPConvertEmpty},
	},
	{
		name: "another MPTCP subtype in the data is not MP_CONVERT",
		pkt:  intercepttest.SYN(src4, dst4, intercepttest.MPCapable(), intercepttest.Payload([]byte{30, 4, 0xd0, 6, 0})),
		want: intercept.SYN{Src: src4, Dst: dst4, MPTCP: intercept.NativeCapable, DataLen: 5},
	},
	{
		name: "MP_CONVERT length below 4 stops the walk",
		pkt:  intercepttest.SYN(src4, dst4, intercepttest.MPCapable(), intercepttest.Payload([]byte{30, 3, 0xe0, 6, 0})),
		want: intercept.SYN{Src: src4, Dst: dst4, MPTCP: intercept.NativeCapable, DataLen: 5},
	},
	{
		// Only 4, 8, 10, 20 and 22 are lengths of MP_CONVERT; a longer
		// one would also make the verdict depend on the capture's end.
		name: "MP_CONVERT of a length the draft does not define stops the walk",
		pkt:  intercepttest.SYN(src4, dst4, intercepttest.MPCapable(), intercepttest.Payload([]byte{30, 6, 0xe0, 6, 1, 2, 0})),
		want: intercept.SYN{Src: src4, Dst: dst4, MPTCP: intercept.NativeCapable, DataLen: 7},
	},
	{
		name: "an empty MP_CONVERT after one of an undefined length is not looked at",
		pkt: intercepttest.SYN(src4, dst4, intercepttest.MPCapable(), intercepttest.Payload([]byte{
			30, 9, 0xe0, 6, 1, 2, 3, 4, 5, 30, 4, 0xe0, 6, 0})),
		want: intercept.SYN{Src: src4, Dst: dst4, MPTCP: intercept.NativeCapable, DataLen: 14},
	},
	{
		name: "empty MP_CONVERT cut by the capture is not seen",
		pkt:  intercepttest.SYN(src4, dst4, intercepttest.MPCapable(), intercepttest.Payload([]byte{30, 4, 0xe0, 6, 0}))[:20+24+3],
		want: intercept.SYN{Src: src4, Dst: dst4, MPTCP: intercept.NativeCapable, DataLen: 5},
	},
	{
		name: "ipv4 TFO data",
		pkt:  intercepttest.SYN(src4, dst4, with(intercepttest.MPCapable(), intercepttest.Payload([]byte("0123456789abcdef")))...),
		want: intercept.SYN{Src: src4, Dst: dst4, MPTCP: intercept.NativeCapable, DataLen: 16},
	},
	{
		name: "ipv6 TFO data",
		pkt:  intercepttest.SYN(src6, dst6, with(intercepttest.Payload([]byte("GET / HTTP/1.1\r\n")))...),
		want: intercept.SYN{Src: src6, Dst: dst6, DataLen: 16},
	},
	{
		name: "ipv4 capture cut after the tcp header: DataLen from total length",
		pkt:  intercepttest.SYN(src4, dst4, with(intercepttest.Payload(make([]byte, 1000)))...)[:20+40],
		want: intercept.SYN{Src: src4, Dst: dst4, DataLen: 1000},
	},
	{
		name: "ipv6 capture cut inside the data",
		pkt:  intercepttest.SYN(src6, dst6, with(intercepttest.Payload(make([]byte, 1000)))...)[:128],
		want: intercept.SYN{Src: src6, Dst: dst6, DataLen: 1000},
	},
	{
		name: "ECN setup SYN (ECE, CWR) and AccECN bit",
		pkt: edit(intercepttest.SYN(src4, dst4, intercepttest.Flags(0xc2)), func(p []byte) {
			p[20+12] |= 0x01
		}),
		want: intercept.SYN{Src: src4, Dst: dst4},
	},
	{
		name: "longest headers: ipv4 options and 40 bytes of tcp options",
		pkt: func() []byte {
			p := intercepttest.SYN(src4, dst4, with(intercepttest.MPCapable(), intercepttest.MPJoin(1, 2), intercepttest.RawOptions(1, 1, 1))...)
			// Insert 40 bytes of IPv4 options (NOPs) and fix the lengths.
			p = append(p[:20:20], append(bytes.Repeat([]byte{1}, 40), p[20:]...)...)
			p[0] = 0x4f
			binary.BigEndian.PutUint16(p[2:4], uint16(len(p)))
			return p
		}(),
		want: intercept.SYN{Src: src4, Dst: dst4, MPTCP: intercept.NativeCapable},
	},
}

func TestParseSYN(t *testing.T) {
	for _, tt := range validSYNs {
		t.Run(tt.name, func(t *testing.T) {
			got, err := intercept.ParseSYN(tt.pkt)
			if err != nil {
				t.Fatalf("ParseSYN(% x): %v", tt.pkt, err)
			}
			if diff := cmp.Diff(tt.want, got, cmpAddrPort); diff != "" {
				t.Errorf("ParseSYN (-want +got):\n%s", diff)
			}
		})
	}
}

// badSYNs are packets ParseSYN must reject; wantErr is part of the error.
var badSYNs = []struct {
	name    string
	pkt     []byte
	wantErr string
}{
	{"empty", nil, "empty packet"},
	{"ip version 5", edit(intercepttest.SYN(src4, dst4), func(p []byte) { p[0] = 0x55 }), "ip version 5"},
	{"ipv4 shorter than a header", intercepttest.SYN(src4, dst4)[:19], "shorter than a minimal header"},
	{"ipv4 header length 16", edit(intercepttest.SYN(src4, dst4), func(p []byte) { p[0] = 0x44 }), "header length 16"},
	{"ipv4 header cut by the capture", edit(intercepttest.SYN(src4, dst4), func(p []byte) { p[0] = 0x4f })[:40], "ipv4 header of 60 bytes truncated to 40"},
	{"ipv4 total length too short for tcp", edit(intercepttest.SYN(src4, dst4), func(p []byte) { binary.BigEndian.PutUint16(p[2:4], 39) })[:39], "ipv4 total length 39"},
	{"ipv4 bytes beyond total length", append(intercepttest.SYN(src4, dst4), 0), "captured 41 bytes but ipv4 total length is 40"},
	{"ipv4 first fragment", edit(intercepttest.SYN(src4, dst4), func(p []byte) { p[6] = 0x20 }), "ipv4 fragment (offset 0, more fragments true)"},
	{"ipv4 later fragment", edit(intercepttest.SYN(src4, dst4), func(p []byte) { p[6], p[7] = 0x40, 0x03 }), "ipv4 fragment (offset 24, more fragments false)"},
	{"ipv4 udp", edit(intercepttest.SYN(src4, dst4), func(p []byte) { p[9] = 17 }), "ipv4 protocol 17 is not tcp"},
	{"ipv6 shorter than a header", intercepttest.SYN(src6, dst6)[:39], "ipv6 header truncated to 39 bytes"},
	{"ipv6 hop-by-hop header", edit(intercepttest.SYN(src6, dst6), func(p []byte) { p[6] = 0 }), "ipv6 next header 0 is not tcp"},
	{"ipv6 payload too short for tcp", edit(intercepttest.SYN(src6, dst6), func(p []byte) { p[5] = 19 })[:59], "ipv6 payload length 19"},
	{"ipv6 bytes beyond payload length", append(intercepttest.SYN(src6, dst6), 0), "captured 61 bytes but ipv6 payload length is 20"},
	{"tcp header cut by the capture", intercepttest.SYN(src4, dst4, intercepttest.Payload(make([]byte, 8)))[:20+12], "tcp header truncated to 12 bytes"},
	{"tcp data offset 16", edit(intercepttest.SYN(src4, dst4), func(p []byte) { p[20+12] = 0x40 }), "tcp data offset 16 is below 20"},
	{"tcp data offset beyond the segment", edit(intercepttest.SYN(src6, dst6, intercepttest.MSS(1460)), func(p []byte) { p[40+12] = 0xf0 }), "tcp data offset 60 is beyond the 24-byte segment"},
	{"tcp options cut by the capture", intercepttest.SYN(src4, dst4, with(intercepttest.Payload(make([]byte, 8)))...)[:20+30], "tcp header of 40 bytes truncated to 30"},
	{"SYN-ACK", intercepttest.SYN(src4, dst4, intercepttest.Flags(0x12)), "tcp flags 0x12 are not a pure syn"},
	{"ACK", intercepttest.SYN(src4, dst4, intercepttest.Flags(0x10)), "tcp flags 0x10"},
	{"SYN-RST", intercepttest.SYN(src4, dst4, intercepttest.Flags(0x06)), "tcp flags 0x06"},
	{"SYN-FIN", intercepttest.SYN(src6, dst6, intercepttest.Flags(0x03)), "tcp flags 0x03"},
	{"no SYN", intercepttest.SYN(src6, dst6, intercepttest.Flags(0x08)), "tcp flags 0x08"},
	{"source port 0", intercepttest.SYN(netip.AddrPortFrom(src4.Addr(), 0), dst4), "tcp port 0 (0 -> 443)"},
	{"destination port 0", intercepttest.SYN(src6, netip.AddrPortFrom(dst6.Addr(), 0)), "tcp port 0 (40000 -> 0)"},
	{"option length 0", intercepttest.SYN(src4, dst4, intercepttest.MSS(1460), intercepttest.RawOptions(2, 0, 5, 0xb4)), "tcp option 2 at offset 24 has length 0"},
	{"option length 1", intercepttest.SYN(src4, dst4, intercepttest.RawOptions(8, 1, 0, 0)), "tcp option 8 at offset 20 has length 1"},
	{"option without a length byte", intercepttest.SYN(src4, dst4, intercepttest.RawOptions(1, 1, 1, 3)), "tcp option 3 at offset 23 has no length byte"},
	{"option overruns the header", intercepttest.SYN(src6, dst6, intercepttest.RawOptions(1, 8, 10, 0, 0, 0, 0, 0)), "tcp option 8 at offset 21 of length 10 overruns the 28-byte header"},
	{"mptcp option without subtype", intercepttest.SYN(src4, dst4, intercepttest.RawOptions(30, 2, 1, 1)), "mptcp option of length 2 has no subtype"},
	{"MP_CAPABLE of length 8", intercepttest.SYN(src4, dst4, intercepttest.RawOptions(30, 8, 0x01, 0x01, 0, 0, 0, 0)), "MP_CAPABLE option of length 8"},
	{"MP_JOIN of length 16 (a SYN-ACK's)", intercepttest.SYN(src6, dst6, intercepttest.RawOptions(30, 16, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)), "MP_JOIN option of length 16, want 12"},
}

func TestParseSYNErrors(t *testing.T) {
	for _, tt := range badSYNs {
		t.Run(tt.name, func(t *testing.T) {
			got, err := intercept.ParseSYN(tt.pkt)
			if err == nil {
				t.Fatalf("ParseSYN(% x) = %+v, want an error containing %q", tt.pkt, got, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseSYN(% x): error %q, want it to contain %q", tt.pkt, err, tt.wantErr)
			}
			if diff := cmp.Diff(intercept.SYN{}, got, cmpAddrPort); diff != "" {
				t.Errorf("ParseSYN returned a SYN with its error (-want +got):\n%s", diff)
			}
		})
	}
}

// maxCapture is the most of a SYN that ParseSYN reads: a 60-byte IPv4
// header, a 60-byte TCP header and two MP_CONVERT options of at most 22
// bytes each.
const maxCapture = 120 + 2*22

func FuzzParseSYN(f *testing.F) {
	// Every table packet, valid and invalid.
	for _, tt := range validSYNs {
		f.Add(tt.pkt)
	}
	for _, tt := range badSYNs {
		f.Add(tt.pkt)
	}
	// Option soup behind valid headers: every kind/length combination the
	// walker branches on.
	f.Add(intercepttest.SYN(src4, dst4, intercepttest.RawOptions(30, 3, 0x10, 30, 4, 0x00, 1, 0, 2, 4)))
	f.Add(intercepttest.SYN(src6, dst6, intercepttest.RawOptions(1, 1, 30, 12, 0x1f, 0xff, 1, 2, 3, 4, 5, 6, 7, 8, 0)))
	// MP_CONVERT soup in the data: lengths 0 to 22, both D bits, a
	// length that overruns the capture.
	f.Add(intercepttest.SYN(src4, dst4, intercepttest.MPCapable(), intercepttest.Payload([]byte{30, 22, 0xe8, 6, 30, 0, 0xe0, 30, 4, 0xe0, 6})))
	f.Add(intercepttest.SYN(src6, dst6, intercepttest.MPCapable(), intercepttest.Payload([]byte{30, 4, 0xe8, 6, 30, 40, 0xe0, 6})))
	f.Fuzz(func(t *testing.T, pkt []byte) {
		s, err := intercept.ParseSYN(pkt)
		if err != nil {
			return
		}
		// The addresses are of the packet's IP version, the ports set.
		if want4 := pkt[0]>>4 == 4; s.Src.Addr().Is4() != want4 || s.Dst.Addr().Is4() != want4 || !s.Src.Addr().IsValid() || !s.Dst.Addr().IsValid() {
			t.Fatalf("ParseSYN(% x) = %+v: addresses do not match ip version %d", pkt, s, pkt[0]>>4)
		}
		if s.Src.Port() == 0 || s.Dst.Port() == 0 || s.DataLen < 0 || s.DataLen > 65535-20 || s.MPTCP > intercept.NativeJoin {
			t.Fatalf("ParseSYN(% x) = %+v: field out of range", pkt, s)
		}
		// Bounded: a capture cut after what it reads parses the same.
		if len(pkt) > maxCapture {
			cut, err := intercept.ParseSYN(pkt[:maxCapture])
			if err != nil || cut != s {
				t.Fatalf("ParseSYN(% x) = %+v but its first %d bytes give %+v, %v", pkt, s, maxCapture, cut, err)
			}
		}
		if s.Token != 0 && s.MPTCP != intercept.NativeJoin || s.MPConvert > intercept.MPConvertEmpty || s.MPConvert != intercept.MPConvertNone && s.DataLen < 4 {
			t.Fatalf("ParseSYN(% x) = %+v: token or MP_CONVERT out of range", pkt, s)
		}
		// Round trip: a SYN built from the result parses to the same.
		var opts []intercepttest.Option
		switch s.MPTCP {
		case intercept.NativeCapable:
			opts = append(opts, intercepttest.MPCapable())
		case intercept.NativeJoin:
			opts = append(opts, intercepttest.MPJoin(s.Token, 2))
		}
		data := make([]byte, s.DataLen)
		switch s.MPConvert {
		case intercept.MPConvertEmpty:
			copy(data, []byte{30, 4, 0xe0, 6})
		case intercept.MPConvertAddr:
			copy(data, []byte{30, 4, 0xe8, 6}) // an empty source option
		}
		opts = append(opts, intercepttest.Payload(data))
		again, err := intercept.ParseSYN(intercepttest.SYN(s.Src, s.Dst, opts...))
		if err != nil || again != s {
			t.Fatalf("ParseSYN(% x) = %+v, but a SYN built from that parses to %+v, %v", pkt, s, again, err)
		}
	})
}
