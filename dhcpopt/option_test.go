package dhcpopt

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// rejection is what a test expects of an error: the *Error's reason and
// address, or ok for no error.
type rejection struct {
	Reason string
	Addr   netip.Addr
}

// rejectionOf returns err's *Error as a rejection; it fails t when err is
// an error of another type.
func rejectionOf(t *testing.T, err error) rejection {
	t.Helper()
	if err == nil {
		return rejection{}
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %q (%T) is not an *Error", err, err)
	}
	return rejection{Reason: e.Reason, Addr: e.Addr}
}

var addrCmp = cmpopts.EquateComparable(netip.Addr{})

// repeatV4 returns n distinct usable addresses 10.0.x.y and their payload.
func repeatV4(n int) ([]netip.Addr, []byte) {
	var addrs []netip.Addr
	var b []byte
	for i := 0; i < n; i++ {
		a := [4]byte{10, 0, byte(i >> 8), byte(i)}
		addrs = append(addrs, netip.AddrFrom4(a))
		b = append(b, a[:]...)
	}
	return addrs, b
}

// repeatV6 returns n distinct usable addresses 2001:db8::x and their payload.
func repeatV6(n int) ([]netip.Addr, []byte) {
	var addrs []netip.Addr
	var b []byte
	for i := 0; i < n; i++ {
		a := [16]byte{0x20, 0x01, 0x0d, 0xb8, 14: byte(i >> 8), 15: byte(i)}
		addrs = append(addrs, netip.AddrFrom16(a))
		b = append(b, a[:]...)
	}
	return addrs, b
}

func TestParseV4(t *testing.T) {
	addrs64, payload64 := repeatV4(64)
	_, payload65 := repeatV4(65)
	tests := []struct {
		name    string
		payload []byte
		want    []netip.Addr
		reject  rejection
	}{
		{name: "one", payload: []byte{198, 51, 100, 1}, want: addrs("198.51.100.1")},
		{name: "two in order", payload: []byte{198, 51, 100, 2, 198, 51, 100, 1}, want: addrs("198.51.100.2", "198.51.100.1")},
		{name: "private and shared space are usable", payload: []byte{10, 31, 3, 2, 100, 64, 0, 1}, want: addrs("10.31.3.2", "100.64.0.1")},
		{name: "edges of the usable space", payload: []byte{1, 0, 0, 0, 126, 255, 255, 255, 169, 253, 255, 255, 169, 255, 0, 0, 223, 255, 255, 255},
			want: addrs("1.0.0.0", "126.255.255.255", "169.253.255.255", "169.255.0.0", "223.255.255.255")},
		{name: "64 addresses", payload: payload64, want: addrs64},
		{name: "nil", payload: nil, reject: rejection{Reason: ReasonEmpty}},
		{name: "empty", payload: []byte{}, reject: rejection{Reason: ReasonEmpty}},
		{name: "three octets", payload: []byte{0x0a, 0x1f, 0x03}, reject: rejection{Reason: ReasonLength}},
		{name: "five octets", payload: []byte{198, 51, 100, 1, 7}, reject: rejection{Reason: ReasonLength}},
		{name: "65 addresses", payload: payload65, reject: rejection{Reason: ReasonTooLong}},
		{name: "unspecified", payload: []byte{0, 0, 0, 0}, reject: rejection{ReasonUnspecified, netip.MustParseAddr("0.0.0.0")}},
		{name: "this network", payload: []byte{0, 1, 2, 3}, reject: rejection{ReasonThisNetwork, netip.MustParseAddr("0.1.2.3")}},
		{name: "loopback", payload: []byte{127, 0, 0, 1}, reject: rejection{ReasonLoopback, netip.MustParseAddr("127.0.0.1")}},
		{name: "loopback top", payload: []byte{127, 255, 255, 254}, reject: rejection{ReasonLoopback, netip.MustParseAddr("127.255.255.254")}},
		{name: "multicast", payload: []byte{224, 0, 0, 1}, reject: rejection{ReasonMulticast, netip.MustParseAddr("224.0.0.1")}},
		{name: "multicast top", payload: []byte{239, 255, 255, 255}, reject: rejection{ReasonMulticast, netip.MustParseAddr("239.255.255.255")}},
		{name: "class E", payload: []byte{240, 0, 0, 1}, reject: rejection{ReasonReserved, netip.MustParseAddr("240.0.0.1")}},
		{name: "limited broadcast", payload: []byte{255, 255, 255, 255}, reject: rejection{ReasonBroadcast, netip.MustParseAddr("255.255.255.255")}},
		{name: "link-local", payload: []byte{169, 254, 1, 1}, reject: rejection{ReasonLinkLocal, netip.MustParseAddr("169.254.1.1")}},
		{name: "duplicate", payload: []byte{198, 51, 100, 1, 198, 51, 100, 2, 198, 51, 100, 1}, reject: rejection{ReasonDuplicate, netip.MustParseAddr("198.51.100.1")}},
		{name: "one bad address rejects all", payload: []byte{198, 51, 100, 1, 127, 0, 0, 1}, reject: rejection{ReasonLoopback, netip.MustParseAddr("127.0.0.1")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseV4(tt.payload)
			if diff := cmp.Diff(tt.reject, rejectionOf(t, err), addrCmp); diff != "" {
				t.Fatalf("rejection (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.want, got, addrCmp); diff != "" {
				t.Fatalf("addresses (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseV6(t *testing.T) {
	addrs64, payload64 := repeatV6(64)
	_, payload65 := repeatV6(65)
	v6 := func(s string) []byte { return netip.MustParseAddr(s).AsSlice() }
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	tests := []struct {
		name    string
		payload []byte
		want    []netip.Addr
		reject  rejection
	}{
		{name: "one", payload: []byte{0x20, 0x01, 0x0d, 0xb8, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, want: addrs("2001:db8:4::1")},
		{name: "two in order", payload: cat(v6("2001:db8:4::2"), v6("2001:db8:4::1")), want: addrs("2001:db8:4::2", "2001:db8:4::1")},
		{name: "unique local is usable", payload: v6("fd00::1"), want: addrs("fd00::1")},
		{name: "just past link-local", payload: v6("fec0::1"), want: addrs("fec0::1")},
		{name: "64 addresses", payload: payload64, want: addrs64},
		{name: "empty", payload: []byte{}, reject: rejection{Reason: ReasonEmpty}},
		{name: "15 octets", payload: v6("2001:db8:4::1")[:15], reject: rejection{Reason: ReasonLength}},
		{name: "17 octets", payload: cat(v6("2001:db8:4::1"), []byte{0}), reject: rejection{Reason: ReasonLength}},
		{name: "an IPv4 list", payload: []byte{198, 51, 100, 1, 198, 51, 100, 2}, reject: rejection{Reason: ReasonLength}},
		{name: "65 addresses", payload: payload65, reject: rejection{Reason: ReasonTooLong}},
		{name: "unspecified", payload: make([]byte, 16), reject: rejection{ReasonUnspecified, netip.IPv6Unspecified()}},
		{name: "loopback", payload: []byte{15: 1}, reject: rejection{ReasonLoopback, netip.IPv6Loopback()}},
		{name: "multicast", payload: v6("ff02::1:2"), reject: rejection{ReasonMulticast, netip.MustParseAddr("ff02::1:2")}},
		{name: "global multicast", payload: v6("ff0e::1"), reject: rejection{ReasonMulticast, netip.MustParseAddr("ff0e::1")}},
		{name: "link-local", payload: v6("fe80::1"), reject: rejection{ReasonLinkLocal, netip.MustParseAddr("fe80::1")}},
		{name: "link-local top", payload: v6("febf:ffff::1"), reject: rejection{ReasonLinkLocal, netip.MustParseAddr("febf:ffff::1")}},
		{name: "ipv4-mapped", payload: []byte{10: 0xff, 11: 0xff, 12: 198, 13: 51, 14: 100, 15: 1}, reject: rejection{ReasonV4Mapped, netip.MustParseAddr("::ffff:198.51.100.1")}},
		{name: "ipv4-compatible", payload: []byte{12: 198, 13: 51, 14: 100, 15: 1}, reject: rejection{ReasonV4Compat, netip.MustParseAddr("::198.51.100.1")}},
		{name: "duplicate", payload: cat(v6("2001:db8:4::1"), v6("2001:db8:4::1")), reject: rejection{ReasonDuplicate, netip.MustParseAddr("2001:db8:4::1")}},
		{name: "one bad address rejects all", payload: cat(v6("2001:db8:4::1"), v6("fe80::1")), reject: rejection{ReasonLinkLocal, netip.MustParseAddr("fe80::1")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseV6(tt.payload)
			if diff := cmp.Diff(tt.reject, rejectionOf(t, err), addrCmp); diff != "" {
				t.Fatalf("rejection (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.want, got, addrCmp); diff != "" {
				t.Fatalf("addresses (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAppend(t *testing.T) {
	prefix := []byte{0xe0, 0x08} // an option header the caller already wrote
	tests := []struct {
		name   string
		append func([]byte, []netip.Addr) ([]byte, error)
		addrs  []netip.Addr
		want   []byte
		reject rejection
	}{
		{name: "v4", append: AppendV4, addrs: addrs("198.51.100.1", "198.51.100.2"),
			want: []byte{0xe0, 0x08, 198, 51, 100, 1, 198, 51, 100, 2}},
		{name: "v6", append: AppendV6, addrs: addrs("2001:db8:4::1"),
			want: []byte{0xe0, 0x08, 0x20, 0x01, 0x0d, 0xb8, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}},
		{name: "v4 empty", append: AppendV4, want: prefix, reject: rejection{Reason: ReasonEmpty}},
		{name: "v6 empty", append: AppendV6, want: prefix, reject: rejection{Reason: ReasonEmpty}},
		{name: "v4 given v6", append: AppendV4, addrs: addrs("2001:db8:4::1"), want: prefix,
			reject: rejection{ReasonFamily, netip.MustParseAddr("2001:db8:4::1")}},
		{name: "v4 given v4-mapped", append: AppendV4, addrs: addrs("::ffff:198.51.100.1"), want: prefix,
			reject: rejection{ReasonFamily, netip.MustParseAddr("::ffff:198.51.100.1")}},
		{name: "v6 given v4", append: AppendV6, addrs: addrs("198.51.100.1"), want: prefix,
			reject: rejection{ReasonFamily, netip.MustParseAddr("198.51.100.1")}},
		{name: "v6 given a zone", append: AppendV6, addrs: addrs("2001:db8:4::1%wan"), want: prefix,
			reject: rejection{ReasonFamily, netip.MustParseAddr("2001:db8:4::1%wan")}},
		{name: "v6 given the zero Addr", append: AppendV6, addrs: []netip.Addr{{}}, want: prefix,
			reject: rejection{Reason: ReasonFamily}},
		{name: "v4 loopback", append: AppendV4, addrs: addrs("198.51.100.1", "127.0.0.1"), want: prefix,
			reject: rejection{ReasonLoopback, netip.MustParseAddr("127.0.0.1")}},
		{name: "v6 duplicate", append: AppendV6, addrs: addrs("2001:db8:4::1", "2001:db8:4::1"), want: prefix,
			reject: rejection{ReasonDuplicate, netip.MustParseAddr("2001:db8:4::1")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.append(append([]byte(nil), prefix...), tt.addrs)
			if diff := cmp.Diff(tt.reject, rejectionOf(t, err), addrCmp); diff != "" {
				t.Fatalf("rejection (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Fatalf("bytes (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFromHex(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		want   []byte
		reject rejection
	}{
		{name: "udhcpc lower case", in: "0a1f0302", want: []byte{0x0a, 0x1f, 0x03, 0x02}},
		{name: "odhcp6c upper case", in: "20010DB8000400000000000000000001", want: netip.MustParseAddr("2001:db8:4::1").AsSlice()},
		{name: "mixed case", in: "aAbB", want: []byte{0xaa, 0xbb}},
		{name: "empty option", in: "", want: []byte{}},
		{name: "longest", in: strings.Repeat("ab", maxHex/2), want: bytes.Repeat([]byte{0xab}, maxHex/2)},
		{name: "too long", in: strings.Repeat("ab", maxHex/2+1), reject: rejection{Reason: ReasonTooLong}},
		{name: "odd", in: "0a1", reject: rejection{Reason: ReasonHex}},
		{name: "not hex", in: "0g", reject: rejection{Reason: ReasonHex}},
		{name: "colons", in: "0a:1f", reject: rejection{Reason: ReasonHex}},
		{name: "space", in: "0a 1f", reject: rejection{Reason: ReasonHex}},
		{name: "trailing newline", in: "0a1f\n", reject: rejection{Reason: ReasonHex}},
		{name: "0x prefix", in: "0x0a1f", reject: rejection{Reason: ReasonHex}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := FromHex(tt.in)
			if diff := cmp.Diff(tt.reject, rejectionOf(t, err), addrCmp); diff != "" {
				t.Fatalf("rejection (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Fatalf("bytes (-want +got):\n%s", diff)
			}
		})
	}
}

// FuzzParseV4 checks that ParseV4 never panics, rejects only with an
// *Error, and that what it accepts AppendV4 writes back byte for byte.
func FuzzParseV4(f *testing.F) {
	f.Add([]byte{198, 51, 100, 1})                       // one address
	f.Add([]byte{198, 51, 100, 1, 198, 51, 100, 2})      // two
	f.Add([]byte{0x0a, 0x1f, 0x03})                      // odd length
	f.Add([]byte{127, 0, 0, 1})                          // loopback
	f.Add([]byte{198, 51, 100, 1, 198, 51, 100, 1})      // duplicate
	f.Add([]byte{})                                      // empty
	f.Add(bytes.Repeat([]byte{10, 0, 0, 1}, MaxAddrs+1)) // too long (and duplicates)
	f.Fuzz(func(t *testing.T, payload []byte) {
		got, err := ParseV4(payload)
		if err != nil {
			rejectionOf(t, err)
			return
		}
		back, err := AppendV4(nil, got)
		if err != nil {
			t.Fatalf("AppendV4(%v) rejected what ParseV4 accepted: %v", got, err)
		}
		if !bytes.Equal(back, payload) {
			t.Fatalf("round trip: % x, want % x", back, payload)
		}
	})
}

// FuzzParseV6 is FuzzParseV4 for ParseV6 and AppendV6.
func FuzzParseV6(f *testing.F) {
	f.Add(netip.MustParseAddr("2001:db8:4::1").AsSlice())                              // one address
	f.Add(append(netip.MustParseAddr("2001:db8:4::1").AsSlice(), make([]byte, 16)...)) // then unspecified
	f.Add(netip.MustParseAddr("::ffff:198.51.100.1").AsSlice())                        // ipv4-mapped
	f.Add(netip.MustParseAddr("fe80::1").AsSlice())                                    // link-local
	f.Add([]byte{0x20, 0x01, 0x0d})                                                    // short
	f.Fuzz(func(t *testing.T, payload []byte) {
		got, err := ParseV6(payload)
		if err != nil {
			rejectionOf(t, err)
			return
		}
		back, err := AppendV6(nil, got)
		if err != nil {
			t.Fatalf("AppendV6(%v) rejected what ParseV6 accepted: %v", got, err)
		}
		if !bytes.Equal(back, payload) {
			t.Fatalf("round trip: % x, want % x", back, payload)
		}
	})
}

// FuzzFromHex checks that FromHex never panics, rejects only with an
// *Error, and accepts only what hex-encodes back to its input, case aside.
func FuzzFromHex(f *testing.F) {
	f.Add("0a1f0302")                         // udhcpc's form
	f.Add("20010DB8000400000000000000000001") // odhcp6c's form
	f.Add("0a1")                              // odd
	f.Add("zz")                               // not hex
	f.Add("")                                 // empty option
	f.Fuzz(func(t *testing.T, s string) {
		b, err := FromHex(s)
		if err != nil {
			rejectionOf(t, err)
			return
		}
		if got := hex.EncodeToString(b); got != strings.ToLower(s) {
			t.Fatalf("FromHex(%q) = % x, which encodes as %q", s, b, got)
		}
	})
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}
