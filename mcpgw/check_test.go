package mcpgw

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mcpagent/mcpagent/mptcpleg"
)

// testOwn is a host with 192.0.2.1/24 and 2001:db8:1::1/64 on its links,
// a /31 point-to-point address, and a listen address that is on no link.
func testOwn(t testing.TB) addrSet {
	t.Helper()
	var ifaddrs []net.Addr
	for _, s := range []string{"192.0.2.1/24", "198.51.100.0/31", "2001:db8:1::1/64"} {
		ip, ipn, err := net.ParseCIDR(s)
		if err != nil {
			t.Fatal(err)
		}
		ipn.IP = ip
		ifaddrs = append(ifaddrs, ipn)
	}
	return newAddrSet(ifaddrs, []netip.Addr{netip.MustParseAddr("::ffff:198.18.0.5")})
}

func TestCheckDestination(t *testing.T) {
	own := testOwn(t)
	deny := []netip.Prefix{
		normPrefix(netip.MustParsePrefix("10.0.0.0/8")),
		normPrefix(netip.MustParsePrefix("fd00::/8")),
		normPrefix(netip.MustParsePrefix("::ffff:172.16.0.0/108")), // 172.16.0.0/12
	}
	allowLocal := []netip.Prefix{normPrefix(netip.MustParsePrefix("2001:db8:1::1/128"))}
	tests := []struct {
		name string
		addr string
		want Reason
	}{
		{"unspecified v4", "0.0.0.0", ReasonUnspecified},
		{"this network v4", "0.1.2.3", ReasonUnspecified},
		{"unspecified v6", "::", ReasonUnspecified},
		{"unspecified mapped", "::ffff:0.0.0.0", ReasonUnspecified},
		{"loopback v4", "127.0.0.1", ReasonLoopback},
		{"loopback v4 other", "127.255.0.9", ReasonLoopback},
		{"loopback v6", "::1", ReasonLoopback},
		{"loopback mapped", "::ffff:127.0.0.1", ReasonLoopback},
		{"multicast v4", "224.0.0.1", ReasonMulticast},
		{"multicast v4 top", "239.255.255.255", ReasonMulticast},
		{"multicast v6", "ff02::1", ReasonMulticast},
		{"multicast v6 global", "ff0e::101", ReasonMulticast},
		{"multicast mapped", "::ffff:232.1.1.1", ReasonMulticast},
		{"limited broadcast", "255.255.255.255", ReasonBroadcast},
		{"limited broadcast mapped", "::ffff:255.255.255.255", ReasonBroadcast},
		{"directed broadcast of own subnet", "192.0.2.255", ReasonBroadcast},
		{"directed broadcast mapped", "::ffff:192.0.2.255", ReasonBroadcast},
		{"link-local v4", "169.254.169.254", ReasonLinkLocal},
		{"link-local v6", "fe80::1", ReasonLinkLocal},
		{"link-local mapped", "::ffff:169.254.1.1", ReasonLinkLocal},
		{"own v4", "192.0.2.1", ReasonOwnAddress},
		{"own v4 mapped", "::ffff:192.0.2.1", ReasonOwnAddress},
		{"own /31", "198.51.100.0", ReasonOwnAddress},
		{"own listen address", "198.18.0.5", ReasonOwnAddress},
		{"own v6 in allow-local", "2001:db8:1::1", ""},
		{"denied v4", "10.1.2.3", ReasonDenied},
		{"denied mapped", "::ffff:10.1.2.3", ReasonDenied},
		{"denied v6", "fd12::1", ReasonDenied},
		{"denied by mapped prefix", "172.20.0.1", ReasonDenied},
		{"allowed v4", "203.0.113.10", ""},
		{"allowed v4 mapped", "::ffff:203.0.113.10", ""},
		{"allowed v6", "2001:db8:2::10", ""},
		{"allowed neighbour on own subnet", "192.0.2.2", ""},
		{"allowed other end of own /31", "198.51.100.1", ""},
		{"allowed v6 on own subnet", "2001:db8:1::2", ""},
		{"allowed v4 just below multicast", "223.255.255.255", ""},
		{"allowed v4-compatible v6", "::7f00:1", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := checkDestination(netip.MustParseAddr(tt.addr), own, deny, allowLocal)
			if got != tt.want {
				t.Errorf("checkDestination(%s) = %q, want %q", tt.addr, got, tt.want)
			}
		})
	}
}

func TestCheckDestinationAllowLocalNeverOverrides(t *testing.T) {
	own := testOwn(t)
	all := []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	deny := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	for addr, want := range map[string]Reason{
		"127.0.0.1":   ReasonLoopback,
		"192.0.2.255": ReasonBroadcast,
		"192.0.2.1":   ReasonDenied,
		"fe80::1":     ReasonLinkLocal,
		"198.18.0.5":  "",
	} {
		if got := checkDestination(netip.MustParseAddr(addr), own, deny, all); got != want {
			t.Errorf("checkDestination(%s) with allow-local everything = %q, want %q", addr, got, want)
		}
	}
}

func TestNewAddrSet(t *testing.T) {
	own := testOwn(t)
	wantOwn := map[netip.Addr]bool{
		netip.MustParseAddr("192.0.2.1"):     true,
		netip.MustParseAddr("198.51.100.0"):  true,
		netip.MustParseAddr("2001:db8:1::1"): true,
		netip.MustParseAddr("198.18.0.5"):    true,
	}
	wantBroadcast := map[netip.Addr]bool{netip.MustParseAddr("192.0.2.255"): true}
	cmpAddr := cmp.Comparer(func(a, b netip.Addr) bool { return a == b })
	if diff := cmp.Diff(wantOwn, own.own, cmpAddr); diff != "" {
		t.Errorf("own (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantBroadcast, own.broadcast, cmpAddr); diff != "" {
		t.Errorf("broadcast (-want +got):\n%s", diff)
	}
}

func TestNormPrefix(t *testing.T) {
	tests := []struct{ in, want string }{
		{"10.1.2.3/8", "10.0.0.0/8"},
		{"::ffff:10.0.0.0/104", "10.0.0.0/8"},
		{"::ffff:0.0.0.0/96", "0.0.0.0/0"},
		{"::ffff:0:0/95", "::fffe:0:0/95"},
		{"2001:db8::1/32", "2001:db8::/32"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := normPrefix(netip.MustParsePrefix(tt.in)).String(); got != tt.want {
				t.Errorf("normPrefix(%s) = %s, want %s", tt.in, got, tt.want)
			}
		})
	}
}

func TestDestination(t *testing.T) {
	v4 := netip.MustParseAddr("203.0.113.10")
	v6 := netip.MustParseAddr("2001:db8::10")
	dst := func(a netip.Addr, port uint16) mptcpleg.Option {
		return mptcpleg.Option{Protocol: mptcpleg.ProtocolTCP, Addr: a, Port: port}
	}
	src := mptcpleg.Option{Source: true, Protocol: mptcpleg.ProtocolTCP, Addr: netip.MustParseAddr("192.168.1.2"), Port: 40000}
	tests := []struct {
		name   string
		opts   []mptcpleg.Option
		onPath bool
		want   string
		reason Reason
	}{
		{"v4 with port", []mptcpleg.Option{dst(v4, 443)}, false, "203.0.113.10:443", ""},
		{"v4 without port takes the leg's", []mptcpleg.Option{dst(v4, 0)}, false, "203.0.113.10:5124", ""},
		{"v6 with port", []mptcpleg.Option{dst(v6, 80)}, false, "[2001:db8::10]:80", ""},
		{"mapped is unmapped", []mptcpleg.Option{dst(netip.AddrFrom16(v4.As16()), 80)}, false, "203.0.113.10:80", ""},
		{"source option ignored", []mptcpleg.Option{src, dst(v4, 80)}, false, "203.0.113.10:80", ""},
		{"flags ignored", []mptcpleg.Option{{Flags: 7, Protocol: 6, Addr: v4, Port: 80}}, false, "203.0.113.10:80", ""},
		{"only a source option", []mptcpleg.Option{src}, false, "", ReasonNoDestination},
		{"empty option", []mptcpleg.Option{{Protocol: 6}}, false, "", ReasonEmptyOption},
		{"udp", []mptcpleg.Option{{Protocol: 17, Addr: v4, Port: 53}}, false, "", ReasonProtocol},
		{"source option with udp", []mptcpleg.Option{{Source: true, Protocol: 17, Addr: v4}, dst(v4, 80)}, false, "", ReasonProtocol},
		{"on path: empty option takes where the leg went", []mptcpleg.Option{{Protocol: 6}}, true, "198.51.100.7:5124", ""},
		{"on path with a source option", []mptcpleg.Option{{Protocol: 6}, src}, true, "198.51.100.7:5124", ""},
		{"on path: an address is refused", []mptcpleg.Option{dst(v4, 80)}, true, "", ReasonAddressOnPath},
		{"on path: only a source option", []mptcpleg.Option{src}, true, "", ReasonNoDestination},
		{"on path: udp", []mptcpleg.Option{{Protocol: 17}}, true, "", ReasonProtocol},
	}
	local := netip.MustParseAddrPort("[::ffff:198.51.100.7]:5124")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, reason := destination(tt.opts, local, tt.onPath)
			if reason != tt.reason {
				t.Fatalf("reason = %q, want %q", reason, tt.reason)
			}
			if reason == "" && got.String() != tt.want {
				t.Errorf("destination = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestSource(t *testing.T) {
	allowed := []netip.Prefix{netip.MustParsePrefix("10.0.1.0/24"), netip.MustParsePrefix("2001:db8:1::/48")}
	v4dst := netip.MustParseAddrPort("203.0.113.10:80")
	v6dst := netip.MustParseAddrPort("[2001:db8:5::10]:80")
	src := func(a string) mptcpleg.Option {
		return mptcpleg.Option{Source: true, Protocol: 6, Addr: netip.MustParseAddr(a)}
	}
	empty := mptcpleg.Option{Protocol: 6}
	tests := []struct {
		name    string
		opts    []mptcpleg.Option
		dst     netip.AddrPort
		allowed []netip.Prefix
		want    netip.Addr
	}{
		{"allowed v4", []mptcpleg.Option{empty, src("10.0.1.2")}, v4dst, allowed, netip.MustParseAddr("10.0.1.2")},
		{"mapped v4 is unmapped", []mptcpleg.Option{empty, src("::ffff:10.0.1.2")}, v4dst, allowed, netip.MustParseAddr("10.0.1.2")},
		{"allowed v6", []mptcpleg.Option{src("2001:db8:1::2"), empty}, v6dst, allowed, netip.MustParseAddr("2001:db8:1::2")},
		{"outside the prefixes", []mptcpleg.Option{empty, src("10.0.2.2")}, v4dst, allowed, netip.Addr{}},
		{"nothing allowed: off by default", []mptcpleg.Option{empty, src("10.0.1.2")}, v4dst, nil, netip.Addr{}},
		{"family differs from the destination's", []mptcpleg.Option{empty, src("10.0.1.2")}, v6dst, allowed, netip.Addr{}},
		{"empty source option", []mptcpleg.Option{empty, {Source: true, Protocol: 6}}, v4dst, []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, netip.Addr{}},
		{"no source option", []mptcpleg.Option{empty}, v4dst, allowed, netip.Addr{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := source(tt.opts, tt.dst, tt.allowed); got != tt.want {
				t.Errorf("source = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestHeaderReason(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want Reason
	}{
		{"EOL only", []byte{0}, ReasonNoDestination},
		{"two destinations", []byte{30, 8, 0xe0, 6, 1, 2, 3, 4, 30, 8, 0xe0, 6, 1, 2, 3, 4, 0}, ReasonDuplicateOption},
		{"garbage", []byte("GET / HTTP/1.1\r\n"), ReasonMalformed},
		{"other MPTCP subtype", []byte{30, 8, 0x00, 6, 1, 2, 3, 4, 0}, ReasonMalformed},
		{"bad length", []byte{30, 9, 0xe0, 6, 1, 2, 3, 4, 5, 0}, ReasonMalformed},
		{"no EOL", []byte{30, 8, 0xe0, 6, 1, 2, 3, 4, 'G'}, ReasonMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := mptcpleg.ParseHeader(tt.in)
			if err == nil || errors.Is(err, mptcpleg.ErrTruncated) {
				t.Fatalf("ParseHeader = %v, want a hard error", err)
			}
			if got := headerReason(err); got != tt.want {
				t.Errorf("headerReason(%v) = %q, want %q", err, got, tt.want)
			}
		})
	}
}

// FuzzDecide checks that no header, however hostile, yields a destination
// in a class mcpgw must never connect to.
func FuzzDecide(f *testing.F) {
	// A valid header naming 203.0.113.10:443.
	f.Add([]byte{30, 10, 0xe0, 6, 203, 0, 113, 10, 1, 187, 0})
	// Loopback, as an IPv4-mapped IPv6 address without port.
	f.Add([]byte{30, 20, 0xe0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1, 0})
	// Source and destination options, then SYN data.
	f.Add([]byte{30, 10, 0xe8, 6, 192, 168, 1, 2, 0x9c, 0x40, 30, 8, 0xe0, 6, 192, 0, 2, 255, 0, 'h', 'i'})
	// Garbage.
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	own := testOwn(f)
	deny := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	f.Fuzz(func(t *testing.T, b []byte) {
		opts, _, err := mptcpleg.ParseHeader(b)
		if err != nil {
			return
		}
		d, reason := destination(opts, netip.MustParseAddrPort("198.51.100.7:5124"), false)
		if reason != "" {
			return
		}
		if d.Port() == 0 || d.Addr().Is4In6() {
			t.Fatalf("destination %s: zero port or mapped address", d)
		}
		if checkDestination(d.Addr(), own, deny, nil) != "" {
			return
		}
		a := d.Addr()
		if a.IsLoopback() || a.IsMulticast() || a.IsUnspecified() || a.IsLinkLocalUnicast() ||
			a == limitedBroadcast || a == netip.MustParseAddr("192.0.2.255") || own.own[a] ||
			deny[0].Contains(a) || (a.Is4() && a.As4()[0] == 0) {
			t.Fatalf("destination %s accepted", a)
		}
	})
}
