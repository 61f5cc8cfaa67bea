package mptcpleg

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// cmpAddr compares netip.Addr values, whose fields are unexported.
var cmpAddr = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

// validHeaders are encodings written out by hand from the layout in the
// draft (byte 2 = Subtype | D | Flags), used in both directions.
var validHeaders = []struct {
	name string
	opts []Option
	wire []byte
}{
	{
		name: "empty option toward an on-path MCP",
		opts: []Option{{Protocol: ProtocolTCP}},
		wire: []byte{0x1e, 0x04, 0xe0, 0x06, 0x00},
	},
	{
		name: "IPv4 destination",
		opts: []Option{{Protocol: ProtocolTCP, Addr: netip.MustParseAddr("192.0.2.1")}},
		wire: []byte{0x1e, 0x08, 0xe0, 0x06, 0xc0, 0x00, 0x02, 0x01, 0x00},
	},
	{
		name: "IPv4 destination and port",
		opts: []Option{{Protocol: ProtocolTCP, Addr: netip.MustParseAddr("192.0.2.1"), Port: 443}},
		wire: []byte{0x1e, 0x0a, 0xe0, 0x06, 0xc0, 0x00, 0x02, 0x01, 0x01, 0xbb, 0x00},
	},
	{
		name: "IPv6 destination",
		opts: []Option{{Protocol: ProtocolTCP, Addr: netip.MustParseAddr("2001:db8::1")}},
		wire: []byte{
			0x1e, 0x14, 0xe0, 0x06,
			0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00,
			0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
			0x00,
		},
	},
	{
		name: "IPv6 destination and port",
		opts: []Option{{Protocol: ProtocolTCP, Addr: netip.MustParseAddr("2001:db8::1"), Port: 80}},
		wire: []byte{
			0x1e, 0x16, 0xe0, 0x06,
			0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00,
			0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
			0x00, 0x50,
			0x00,
		},
	},
	{
		name: "IPv4-mapped IPv6 address keeps the IPv6 length",
		opts: []Option{{Protocol: ProtocolTCP, Addr: netip.MustParseAddr("::ffff:192.0.2.1"), Port: 443}},
		wire: []byte{
			0x1e, 0x16, 0xe0, 0x06,
			0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
			0x00, 0x00, 0xff, 0xff, 0xc0, 0x00, 0x02, 0x01,
			0x01, 0xbb,
			0x00,
		},
	},
	{
		name: "source (D bit), reserved flags and UDP as received",
		opts: []Option{{Source: true, Flags: 5, Protocol: 17}},
		wire: []byte{0x1e, 0x04, 0xed, 0x11, 0x00},
	},
	{
		name: "source IPv4 and port, then destination IPv6 and port",
		opts: []Option{
			{Source: true, Protocol: ProtocolTCP, Addr: netip.MustParseAddr("198.51.100.7"), Port: 50000},
			{Protocol: ProtocolTCP, Addr: netip.MustParseAddr("2001:db8::2"), Port: 8443},
		},
		wire: []byte{
			0x1e, 0x0a, 0xe8, 0x06, 0xc6, 0x33, 0x64, 0x07, 0xc3, 0x50,
			0x1e, 0x16, 0xe0, 0x06,
			0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00,
			0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02,
			0x20, 0xfb,
			0x00,
		},
	},
	{
		name: "longest header: two IPv6 options with ports",
		opts: []Option{
			{Protocol: ProtocolTCP, Addr: netip.MustParseAddr("2001:db8::1"), Port: 443},
			{Source: true, Flags: 7, Protocol: ProtocolTCP, Addr: netip.MustParseAddr("2001:db8::2"), Port: 1},
		},
		wire: []byte{
			0x1e, 0x16, 0xe0, 0x06,
			0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00,
			0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
			0x01, 0xbb,
			0x1e, 0x16, 0xef, 0x06,
			0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00,
			0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02,
			0x00, 0x01,
			0x00,
		},
	},
}

func TestAppendHeader(t *testing.T) {
	for _, tt := range validHeaders {
		t.Run(tt.name, func(t *testing.T) {
			prefix := []byte("prefix")
			got, err := AppendHeader(prefix, tt.opts...)
			if err != nil {
				t.Fatalf("AppendHeader: %v", err)
			}
			want := append([]byte("prefix"), tt.wire...)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("AppendHeader (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseHeader(t *testing.T) {
	data := []byte("GET / HTTP/1.1\r\n")
	for _, tt := range validHeaders {
		t.Run(tt.name, func(t *testing.T) {
			b := append(append([]byte(nil), tt.wire...), data...)
			opts, n, err := ParseHeader(b)
			if err != nil {
				t.Fatalf("ParseHeader: %v", err)
			}
			if diff := cmp.Diff(tt.opts, opts, cmpAddr); diff != "" {
				t.Errorf("options (-want +got):\n%s", diff)
			}
			if n != len(tt.wire) {
				t.Errorf("n = %d, want %d", n, len(tt.wire))
			}
			if len(tt.wire) == MaxHeaderLen && n != MaxHeaderLen {
				t.Errorf("longest header: n = %d, want MaxHeaderLen", n)
			}
		})
	}
}

func TestParseHeaderErrors(t *testing.T) {
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{name: "nothing yet", b: nil, want: ErrTruncated},
		{name: "kind only", b: []byte{0x1e}, want: ErrTruncated},
		{name: "kind and length", b: []byte{0x1e, 0x08}, want: ErrTruncated},
		{name: "address cut short", b: []byte{0x1e, 0x08, 0xe0, 0x06, 0xc0, 0x00, 0x02}, want: ErrTruncated},
		{name: "EOL still missing", b: []byte{0x1e, 0x08, 0xe0, 0x06, 0xc0, 0x00, 0x02, 0x01}, want: ErrTruncated},
		// A zero first port byte may still be followed by a non-zero one.
		{name: "half a port", b: []byte{0x1e, 0x0a, 0xe0, 0x06, 0xc0, 0x00, 0x02, 0x01, 0x00}, want: ErrTruncated},
		{name: "second option started", b: []byte{0x1e, 0x04, 0xe0, 0x06, 0x1e, 0x04, 0xe8}, want: ErrTruncated},

		{name: "EOL first", b: []byte{0x00, 0x1e, 0x04, 0xe0, 0x06}, want: ErrNoOption},
		{name: "MSS option", b: []byte{0x02, 0x04, 0x05, 0xb4, 0x00}, want: ErrKind},
		{name: "NOP first", b: []byte{0x01, 0x1e, 0x04, 0xe0, 0x06, 0x00}, want: ErrKind},
		{name: "MP_CAPABLE subtype", b: []byte{0x1e, 0x04, 0x00, 0x06, 0x00}, want: ErrSubtype},
		{name: "ADD_ADDR subtype in a second option", b: []byte{0x1e, 0x04, 0xe0, 0x06, 0x1e, 0x08, 0x38}, want: ErrSubtype},
		{name: "length 0", b: []byte{0x1e, 0x00}, want: ErrLength},
		{name: "length 3", b: []byte{0x1e, 0x03, 0xe0}, want: ErrLength},
		// Length 6 would be a port without an address.
		{name: "length 6", b: []byte{0x1e, 0x06, 0xe0, 0x06, 0x01, 0xbb, 0x00}, want: ErrLength},
		{name: "length 9", b: []byte{0x1e, 0x09, 0xe0, 0x06, 0xc0, 0x00, 0x02, 0x01, 0x01, 0x00}, want: ErrLength},
		{name: "length 24", b: []byte{0x1e, 0x18}, want: ErrLength},
		{name: "bad length in second option", b: []byte{0x1e, 0x04, 0xe0, 0x06, 0x1e, 0x05}, want: ErrLength},
		{name: "IPv4 port 0", b: []byte{0x1e, 0x0a, 0xe0, 0x06, 0xc0, 0x00, 0x02, 0x01, 0x00, 0x00, 0x00}, want: ErrZeroPort},
		{
			name: "IPv6 port 0",
			b: []byte{
				0x1e, 0x16, 0xe0, 0x06,
				0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00,
				0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
				0x00, 0x00,
				0x00,
			},
			want: ErrZeroPort,
		},
		{name: "two destinations", b: []byte{0x1e, 0x04, 0xe0, 0x06, 0x1e, 0x04, 0xe0, 0x06, 0x00}, want: ErrSameDirection},
		{name: "two sources", b: []byte{0x1e, 0x04, 0xe8, 0x06, 0x1e, 0x08, 0xe8, 0x06, 0xc0, 0x00, 0x02, 0x01, 0x00}, want: ErrSameDirection},
		// The D bit alone already rules the header out.
		{name: "same direction before the rest arrives", b: []byte{0x1e, 0x04, 0xe0, 0x06, 0x1e, 0x04, 0xe1}, want: ErrSameDirection},
		{
			name: "three options",
			b:    []byte{0x1e, 0x04, 0xe0, 0x06, 0x1e, 0x04, 0xe8, 0x06, 0x1e, 0x04, 0xe0, 0x06, 0x00},
			want: ErrTooManyOptions,
		},
		{name: "third option started", b: []byte{0x1e, 0x04, 0xe0, 0x06, 0x1e, 0x04, 0xe8, 0x06, 0x1e}, want: ErrTooManyOptions},
		{name: "NOP after an option", b: []byte{0x1e, 0x04, 0xe0, 0x06, 0x01, 0x00}, want: ErrMissingEOL},
		{name: "data right after two options", b: []byte{0x1e, 0x04, 0xe0, 0x06, 0x1e, 0x04, 0xe8, 0x06, 'G', 'E', 'T'}, want: ErrMissingEOL},
		{
			name: "no EOL within MaxHeaderLen",
			b: []byte{
				0x1e, 0x16, 0xe0, 0x06,
				0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00,
				0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
				0x01, 0xbb,
				0x1e, 0x16, 0xe8, 0x06,
				0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00,
				0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02,
				0x01, 0xbb,
				0x01, 0x00,
			},
			want: ErrMissingEOL,
		},
	}
	sentinels := []error{
		ErrTruncated, ErrNoOption, ErrKind, ErrSubtype, ErrLength, ErrZeroPort,
		ErrSameDirection, ErrTooManyOptions, ErrMissingEOL,
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts, n, err := ParseHeader(tt.b)
			if !errors.Is(err, tt.want) {
				t.Fatalf("ParseHeader(% x) error = %v, want %v", tt.b, err, tt.want)
			}
			for _, s := range sentinels {
				if s != tt.want && errors.Is(err, s) {
					t.Errorf("error %q also matches %q", err, s)
				}
			}
			if opts != nil || n != 0 {
				t.Errorf("ParseHeader = %v, %d with an error, want nil, 0", opts, n)
			}
		})
	}
}

// TestParseHeaderPrefixes checks the ErrTruncated contract on every strict
// prefix of every valid header: each may still become valid.
func TestParseHeaderPrefixes(t *testing.T) {
	for _, tt := range validHeaders {
		for i := range tt.wire {
			if _, _, err := ParseHeader(tt.wire[:i]); err != ErrTruncated {
				t.Errorf("%s: ParseHeader(% x) error = %v, want ErrTruncated", tt.name, tt.wire[:i], err)
			}
		}
	}
}

func TestAppendHeaderErrors(t *testing.T) {
	v4 := netip.MustParseAddr("192.0.2.1")
	tests := []struct {
		name string
		opts []Option
		want error // nil: any error
	}{
		{name: "no option", want: ErrNoOption},
		{name: "three options", opts: []Option{{}, {Source: true}, {Addr: v4}}, want: ErrTooManyOptions},
		{name: "two destinations", opts: []Option{{Addr: v4}, {}}, want: ErrSameDirection},
		{name: "two sources", opts: []Option{{Source: true}, {Source: true, Addr: v4}}, want: ErrSameDirection},
		{name: "flags beyond 3 bits", opts: []Option{{Flags: 8}}},
		{name: "zone", opts: []Option{{Addr: netip.MustParseAddr("fe80::1%eth0")}}},
		{name: "port without address", opts: []Option{{Port: 443}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := []byte{0xaa}
			got, err := AppendHeader(b, tt.opts...)
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Fatalf("AppendHeader error = %v, want %v", err, tt.want)
			}
			if !bytes.Equal(got, []byte{0xaa}) {
				t.Errorf("AppendHeader changed b to % x on error", got)
			}
		})
	}
}

func FuzzParseHeader(f *testing.F) {
	// Every valid header, alone and followed by SYN data.
	for _, tt := range validHeaders {
		f.Add(tt.wire)
		f.Add(append(append([]byte(nil), tt.wire...), "GET /"...))
	}
	f.Add([]byte{})                                                        // truncated
	f.Add([]byte{0x00})                                                    // EOL without an option
	f.Add([]byte{0x1e, 0x0a, 0xe0, 0x06, 0xc0, 0x00, 0x02, 0x01, 0x00})    // half a port
	f.Add([]byte{0x1e, 0x04, 0xe0, 0x06, 0x1e, 0x04, 0xe0, 0x06, 0x00})    // same D bit
	f.Add([]byte{0x1e, 0x04, 0xe0, 0x06, 0x1e, 0x04, 0xe8, 0x06, 0x1e})    // third option
	f.Add([]byte{0x1e, 0x04, 0x00, 0x06, 0x00})                            // MP_CAPABLE
	f.Add([]byte{0x1e, 0x16, 0xe0, 0x06, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0}) // long, truncated
	f.Fuzz(func(t *testing.T, b []byte) {
		opts, n, err := ParseHeader(b)
		// PeekOption agrees with ParseHeader on every valid header's first
		// option, and never reaches past b.
		pn, source, empty, ok := PeekOption(b)
		if ok && (pn > len(b) || !validLen(pn) || empty != (pn == lenEmpty)) || !ok && pn != 0 {
			t.Fatalf("PeekOption(% x) = %d, %v, %v, %v", b, pn, source, empty, ok)
		}
		if err == nil && (!ok || source != opts[0].Source || empty != !opts[0].Addr.IsValid()) {
			t.Fatalf("PeekOption(% x) = %d, %v, %v, %v; ParseHeader's first option is %+v", b, pn, source, empty, ok, opts[0])
		}
		if len(b) > MaxHeaderLen {
			// Bounded: the bytes past MaxHeaderLen never matter.
			opts2, n2, err2 := ParseHeader(b[:MaxHeaderLen])
			if n2 != n || (err == nil) != (err2 == nil) || (err != nil && err.Error() != err2.Error()) ||
				!cmp.Equal(opts, opts2, cmpAddr) {
				t.Fatalf("ParseHeader(% x) = %v, %d, %v but its first %d bytes give %v, %d, %v",
					b, opts, n, err, MaxHeaderLen, opts2, n2, err2)
			}
		}
		if err != nil {
			if opts != nil || n != 0 {
				t.Fatalf("ParseHeader(% x) = %v, %d with error %v", b, opts, n, err)
			}
			if err == ErrTruncated && len(b) >= MaxHeaderLen {
				t.Fatalf("ParseHeader(% x): ErrTruncated for %d bytes", b, len(b))
			}
			return
		}
		if n > len(b) || n > MaxHeaderLen || len(opts) == 0 || len(opts) > 2 {
			t.Fatalf("ParseHeader(% x) = %d options, n = %d", b, len(opts), n)
		}
		enc, err := AppendHeader(nil, opts...)
		if err != nil {
			t.Fatalf("AppendHeader(%+v) of decoded options: %v", opts, err)
		}
		if !bytes.Equal(enc, b[:n]) {
			t.Fatalf("round trip of % x: re-encoded as % x", b[:n], enc)
		}
		for i := 0; i < n; i++ {
			if _, _, err := ParseHeader(b[:i]); err != ErrTruncated {
				t.Fatalf("prefix % x of a valid header: error %v, want ErrTruncated", b[:i], err)
			}
		}
	})
}

func FuzzAppendHeader(f *testing.F) {
	// count, then per option: D bit, flags, protocol, address length
	// (0, 4 or 16; other values mean 0), 16 address bytes, port.
	addr := []byte("\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01")
	f.Add(uint8(1), false, uint8(0), uint8(6), uint8(0), addr, uint16(0), true, uint8(0), uint8(6), uint8(0), addr, uint16(0))        // empty option
	f.Add(uint8(1), false, uint8(0), uint8(6), uint8(4), addr, uint16(443), true, uint8(0), uint8(6), uint8(0), addr, uint16(0))      // IPv4 and port
	f.Add(uint8(2), true, uint8(3), uint8(17), uint8(16), addr, uint16(1), false, uint8(7), uint8(6), uint8(16), addr, uint16(65535)) // longest
	f.Add(uint8(2), true, uint8(0), uint8(6), uint8(4), addr, uint16(0), true, uint8(0), uint8(6), uint8(0), addr, uint16(0))         // same D bit
	f.Add(uint8(1), false, uint8(9), uint8(6), uint8(0), addr, uint16(80), false, uint8(0), uint8(6), uint8(0), addr, uint16(0))      // bad flags, port without address
	f.Add(uint8(3), false, uint8(0), uint8(6), uint8(0), addr, uint16(0), true, uint8(0), uint8(6), uint8(0), addr, uint16(0))        // three options
	f.Fuzz(func(t *testing.T, count uint8,
		d1 bool, flags1, proto1, alen1 uint8, addr1 []byte, port1 uint16,
		d2 bool, flags2, proto2, alen2 uint8, addr2 []byte, port2 uint16) {
		mk := func(d bool, flags, proto, alen uint8, a []byte, port uint16) Option {
			o := Option{Source: d, Flags: flags, Protocol: proto, Port: port}
			if int(alen) <= len(a) {
				switch alen {
				case 4:
					o.Addr = netip.AddrFrom4([4]byte(a[:4]))
				case 16:
					o.Addr = netip.AddrFrom16([16]byte(a[:16]))
				}
			}
			return o
		}
		o1 := mk(d1, flags1, proto1, alen1, addr1, port1)
		o2 := mk(d2, flags2, proto2, alen2, addr2, port2)
		opts := []Option{o1, o2, o1}[:min(int(count), 3)]

		valid := len(opts) >= 1 && len(opts) <= 2 && (len(opts) == 1 || d1 != d2)
		for _, o := range opts {
			valid = valid && o.Flags < 8 && (o.Port == 0 || o.Addr.IsValid())
		}
		b, err := AppendHeader(nil, opts...)
		if (err == nil) != valid {
			t.Fatalf("AppendHeader(%+v) error = %v, want valid = %t", opts, err, valid)
		}
		if err != nil {
			return
		}
		if len(b) > MaxHeaderLen {
			t.Fatalf("AppendHeader(%+v) = %d bytes, more than MaxHeaderLen", opts, len(b))
		}
		got, n, err := ParseHeader(b)
		if err != nil {
			t.Fatalf("ParseHeader(AppendHeader(%+v) = % x): %v", opts, b, err)
		}
		if n != len(b) {
			t.Errorf("ParseHeader consumed %d of %d bytes", n, len(b))
		}
		if diff := cmp.Diff(opts, got, cmpAddr); diff != "" {
			t.Errorf("round trip (-want +got):\n%s", diff)
		}
	})
}

// FuzzParseHeaderPrefixes checks what reading a header from a stream
// relies on (mcpgw reads until ParseHeader stops saying ErrTruncated):
// every prefix of the input is either truncated or decodes exactly as the
// whole input does, and once a prefix decides, longer ones agree.
func FuzzParseHeaderPrefixes(f *testing.F) {
	f.Add([]byte{30, 10, 0xe0, 6, 192, 0, 2, 1, 1, 187, 0, 'G', 'E', 'T'})
	f.Add([]byte{30, 4, 0xe0, 6, 30, 8, 0xe8, 6, 10, 0, 1, 2, 0})
	f.Add([]byte{30, 22, 0xe0, 6, 0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 80, 0})
	f.Add([]byte{30, 9, 0xe0, 6})
	f.Fuzz(func(t *testing.T, b []byte) {
		whole, wn, werr := ParseHeader(b)
		for k := 0; k < len(b); k++ {
			opts, n, err := ParseHeader(b[:k])
			if errors.Is(err, ErrTruncated) {
				continue
			}
			if (err == nil) != (werr == nil) || n != wn || !cmp.Equal(opts, whole, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })) {
				t.Fatalf("prefix %x decides %v, %d, %v; the whole %x decides %v, %d, %v", b[:k], opts, n, err, b, whole, wn, werr)
			}
		}
	})
}

func TestPeekOption(t *testing.T) {
	tests := []struct {
		name          string
		b             []byte
		n             int
		source, empty bool
		ok            bool
	}{
		{"empty destination", []byte{0x1e, 0x04, 0xe0, 0x06}, 4, false, true, true},
		{"empty source", []byte{0x1e, 0x04, 0xe8, 0x06, 0x00}, 4, true, true, true},
		{"IPv4 and port, then data", []byte{0x1e, 0x0a, 0xe0, 0x06, 198, 51, 100, 7, 0x01, 0xbb, 'G'}, 10, false, false, true},
		{"cut short", []byte{0x1e, 0x0a, 0xe0, 0x06, 198, 51, 100, 7, 0x01}, 0, false, false, false},
		{"undefined length", []byte{0x1e, 0x06, 0xe0, 0x06, 1, 2}, 0, false, false, false},
		{"MP_CAPABLE", []byte{0x1e, 0x04, 0x00, 0x06}, 0, false, false, false},
		{"another kind", []byte{0x02, 0x04, 0xe0, 0x06}, 0, false, false, false},
		{"two bytes", []byte{0x1e, 0x04}, 0, false, false, false},
	}
	for _, tt := range tests {
		n, source, empty, ok := PeekOption(tt.b)
		if n != tt.n || source != tt.source || empty != tt.empty || ok != tt.ok {
			t.Errorf("%s: PeekOption(% x) = %d, %v, %v, %v; want %d, %v, %v, %v", tt.name, tt.b, n, source, empty, ok, tt.n, tt.source, tt.empty, tt.ok)
		}
	}
}
