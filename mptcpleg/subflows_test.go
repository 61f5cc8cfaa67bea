package mptcpleg

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// subflowHeader builds a struct mptcp_subflow_data as the kernel writes
// it back: num subflows counted, elements of user bytes copied, of kernel
// bytes in the kernel.
func subflowHeader(num, kernel, user uint32) []byte {
	b := make([]byte, 16)
	binary.NativeEndian.PutUint32(b[0:], 16)
	binary.NativeEndian.PutUint32(b[4:], num)
	binary.NativeEndian.PutUint32(b[8:], kernel)
	binary.NativeEndian.PutUint32(b[12:], user)
	return b
}

// subflowReply builds an MPTCP_SUBFLOW_ADDRS reply: num subflows counted,
// the given elements copied.
func subflowReply(num uint32, subflows ...[2]netip.AddrPort) []byte {
	b := subflowHeader(num, 256, 256)
	for _, s := range subflows {
		b = append(b, sockaddrBytes(s[0])...)
		b = append(b, sockaddrBytes(s[1])...)
	}
	return b
}

// tcpInfoReply builds an MPTCP_TCPINFO reply for 8-byte elements of a
// kernel whose struct tcp_info is 248 bytes, one per state.
func tcpInfoReply(states ...TCPState) []byte {
	b := subflowHeader(uint32(len(states)), 248, 8)
	for _, st := range states {
		b = append(b, byte(st), 0, 0, 0, 0, 0, 0, 0)
	}
	return b
}

// sockaddrBytes writes a sockaddr_in or sockaddr_in6 padded to a
// sockaddr_storage, by hand rather than with the decoder's constants.
func sockaddrBytes(ap netip.AddrPort) []byte {
	b := make([]byte, 128)
	binary.BigEndian.PutUint16(b[2:], ap.Port())
	if ap.Addr().Is4() {
		binary.NativeEndian.PutUint16(b, 2)
		a := ap.Addr().As4()
		copy(b[4:], a[:])
	} else {
		binary.NativeEndian.PutUint16(b, 10)
		a := ap.Addr().As16()
		copy(b[8:], a[:])
	}
	return b
}

func TestParseSubflowAddrs(t *testing.T) {
	dsl := [2]netip.AddrPort{netip.MustParseAddrPort("10.0.1.2:40000"), netip.MustParseAddrPort("198.51.100.1:5124")}
	lte := [2]netip.AddrPort{netip.MustParseAddrPort("100.64.0.2:40001"), netip.MustParseAddrPort("198.51.100.1:5124")}
	v6 := [2]netip.AddrPort{netip.MustParseAddrPort("[2001:db8:1::2]:40002"), netip.MustParseAddrPort("[2001:db8:4::1]:5124")}
	bad := subflowReply(1, dsl)
	binary.NativeEndian.PutUint16(bad[subflowDataLen+128:], 1) // AF_UNIX remote
	tests := []struct {
		name    string
		in      []byte
		want    []Subflow
		wantErr string
	}{
		{name: "none", in: subflowReply(0), want: []Subflow{}},
		{name: "two ipv4", in: subflowReply(2, dsl, lte), want: []Subflow{{Local: dsl[0], Remote: dsl[1]}, {Local: lte[0], Remote: lte[1]}}},
		{name: "ipv6", in: subflowReply(1, v6), want: []Subflow{{Local: v6[0], Remote: v6[1]}}},
		{name: "closed first subflow, no remote", in: subflowReply(1, [2]netip.AddrPort{dsl[0], netip.AddrPortFrom(netip.IPv4Unspecified(), 0)}),
			want: []Subflow{{Local: dsl[0], Remote: netip.AddrPortFrom(netip.IPv4Unspecified(), 0)}}},
		{name: "more counted than copied", in: subflowReply(12, dsl), want: []Subflow{{Local: dsl[0], Remote: dsl[1]}}},
		{name: "short header", in: make([]byte, 15), wantErr: "shorter than the 16-byte header"},
		{name: "other element size", in: func() []byte { b := subflowReply(0); binary.NativeEndian.PutUint32(b[12:], 128); return b }(), wantErr: "element size 128"},
		{name: "other kernel size", in: func() []byte { b := subflowReply(0); binary.NativeEndian.PutUint32(b[8:], 300); return b }(), wantErr: "kernel element size 300"},
		{name: "unknown family", in: bad, wantErr: "subflow 0 remote address: family 1"},
		{name: "truncated element", in: subflowReply(1, dsl)[:16+200], want: []Subflow{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseSubflowAddrs(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseSubflowStates(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		want    []TCPState
		wantErr string
	}{
		{name: "two", in: tcpInfoReply(TCPEstablished, 4), want: []TCPState{TCPEstablished, 4}},
		{name: "none", in: tcpInfoReply(), want: []TCPState{}},
		{name: "kernel struct smaller than asked", in: subflowHeader(0, 4, 8), wantErr: "kernel element size 4"},
		{name: "other element size", in: subflowHeader(0, 248, 16), wantErr: "element size 16"},
		{name: "short", in: []byte{1, 2, 3}, wantErr: "shorter than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseSubflowStates(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestJoinSubflows(t *testing.T) {
	a := Subflow{Local: netip.MustParseAddrPort("10.0.1.2:1"), Remote: netip.MustParseAddrPort("198.51.100.1:5124")}
	b := Subflow{Local: netip.MustParseAddrPort("100.64.0.2:2"), Remote: netip.MustParseAddrPort("198.51.100.1:5124")}
	got, ok := joinSubflows([]Subflow{a, b}, []TCPState{TCPClose, TCPEstablished})
	b.State = TCPEstablished
	if !ok || len(got) != 1 || got[0] != b {
		t.Errorf("joinSubflows = %+v, %v; want only the established one, %+v", got, ok, b)
	}
	if _, ok := joinSubflows([]Subflow{a}, nil); ok {
		t.Error("lists of different lengths joined")
	}
	if s := TCPState(4).String(); s != "fin-wait-1" {
		t.Errorf("TCPState(4) = %q", s)
	}
	if s := TCPState(99).String(); s != "state(99)" {
		t.Errorf("TCPState(99) = %q", s)
	}
}

// FuzzParseSubflowStates: any reply decodes or fails cleanly, to at most
// MaxSubflows states.
func FuzzParseSubflowStates(f *testing.F) {
	f.Add(tcpInfoReply(TCPEstablished, 4))
	f.Add(subflowHeader(100, 248, 8))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := parseSubflowStates(b)
		if err == nil && len(got) > MaxSubflows {
			t.Fatalf("%d states, more than %d", len(got), MaxSubflows)
		}
	})
}

// FuzzParseSubflowAddrs: any reply decodes or fails cleanly, never to more
// than MaxSubflows subflows, each with valid addresses.
func FuzzParseSubflowAddrs(f *testing.F) {
	f.Add(subflowReply(0))
	f.Add(subflowReply(2,
		[2]netip.AddrPort{netip.MustParseAddrPort("10.0.1.2:1"), netip.MustParseAddrPort("198.51.100.1:5124")},
		[2]netip.AddrPort{netip.MustParseAddrPort("[2001:db8::2]:2"), netip.MustParseAddrPort("[2001:db8::1]:5124")}))
	f.Add(subflowReply(40)) // counted, none copied
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := parseSubflowAddrs(b)
		if err != nil {
			return
		}
		if len(got) > MaxSubflows {
			t.Fatalf("%d subflows, more than %d", len(got), MaxSubflows)
		}
		for _, s := range got {
			if !s.Local.IsValid() || !s.Remote.IsValid() {
				t.Fatalf("invalid address in %+v", s)
			}
		}
	})
}
