package mptcppm

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
)

// cmpAddr compares netip.Addr values, whose fields cmp cannot see.
var cmpAddr = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

// readHex reads a testdata file written by TestIntegrationCapture: lines
// "label hex" of generic netlink messages, and # comments.
func readHex(t testing.TB, name string) (labels []string, msgs map[string]genetlink.Message) {
	t.Helper()
	// Netlink speaks the host's byte order, and the captures come from a
	// little-endian kernel; the decoders are checked on big-endian hosts
	// by the hand-built messages (ne16, ne32) of the other tests.
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("testdata was captured on a little-endian kernel; this host is big-endian")
	}
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	msgs = make(map[string]genetlink.Message)
	s := bufio.NewScanner(f)
	s.Buffer(nil, 1<<20)
	for s.Scan() {
		line := s.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		label, h, ok := strings.Cut(line, " ")
		if !ok {
			t.Fatalf("%s: malformed line %q", name, line)
		}
		b, err := hex.DecodeString(h)
		if err != nil {
			t.Fatalf("%s: %s: %v", name, label, err)
		}
		var m genetlink.Message
		if err := m.UnmarshalBinary(b); err != nil {
			t.Fatalf("%s: %s: %v", name, label, err)
		}
		labels = append(labels, label)
		msgs[label] = m
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	return labels, msgs
}

func TestParseCapturedEndpoints(t *testing.T) {
	_, msgs := readHex(t, "endpoints.hex")
	for _, tt := range []struct {
		label string
		want  Endpoint
	}{
		{"dump#1", Endpoint{ID: 1, Addr: netip.MustParseAddr("10.0.0.1"), Flags: FlagSubflow}},
		{"dump#2", Endpoint{ID: 2, Addr: netip.MustParseAddr("127.0.0.3"), Port: 4000, Flags: FlagSignal}},
		{"dump#3", Endpoint{ID: 3, Addr: netip.MustParseAddr("fd00::1"), Flags: FlagSubflow | FlagBackup | FlagFullmesh, IfIndex: 1}},
		{"dump#4", Endpoint{ID: 200, Addr: netip.MustParseAddr("10.0.0.2"), Flags: FlagLaminar}},
		{"get#1", Endpoint{ID: 200, Addr: netip.MustParseAddr("10.0.0.2"), Flags: FlagLaminar}},
	} {
		t.Run(tt.label, func(t *testing.T) {
			m, ok := msgs[tt.label]
			if !ok {
				t.Fatalf("no message %s", tt.label)
			}
			if m.Header.Command != cmdGetAddr {
				t.Errorf("command = %d, want GET_ADDR (%d)", m.Header.Command, cmdGetAddr)
			}
			got, err := parseEndpointMsg(m.Data)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, cmpAddr); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseCapturedLimits(t *testing.T) {
	_, msgs := readHex(t, "limits.hex")
	got, err := parseLimits(msgs["get#1"].Data)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Limits{AddAddrAccepted: 3, Subflows: 5}, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestParseCapturedEvents(t *testing.T) {
	var (
		lo1    = netip.MustParseAddr("127.0.0.1")
		lo2    = netip.MustParseAddr("127.0.0.2")
		lo3    = netip.MustParseAddr("127.0.0.3")
		v6a    = netip.MustParseAddr("fd00::1")
		v6b    = netip.MustParseAddr("fd00::2")
		client = uint32(0xd1b8e80e) // tokens of the IPv4 connection's ends
		server = uint32(0xd36b14c7)
		c6     = uint32(0xe69aa551) // and of the IPv6 connection's
		s6     = uint32(0x5aa2213f)
	)
	const (
		econnrefused = 111 // Linux errno
		srvPort      = 35433
		cliPort      = 53096
	)
	for _, tt := range []struct {
		file, label string
		want        Event
	}{
		{"events_ipv4.hex", "listener_created#1", Event{
			Type: EventListenerCreated, Family: linuxAFInet, Saddr: lo3, Sport: 4000,
		}},
		{"events_ipv4.hex", "created#1", Event{
			Type: EventCreated, Token: client, Family: linuxAFInet,
			Saddr: lo1, Sport: cliPort, Daddr: lo1, Dport: srvPort,
		}},
		{"events_ipv4.hex", "created#2", Event{
			Type: EventCreated, Token: server, Family: linuxAFInet,
			Saddr: lo1, Sport: srvPort, Daddr: lo1, Dport: cliPort,
			Flags: EventFlagServerSide, ServerSide: true,
		}},
		{"events_ipv4.hex", "established#2", Event{
			Type: EventEstablished, Token: client, Family: linuxAFInet,
			Saddr: lo1, Sport: cliPort, Daddr: lo1, Dport: srvPort,
		}},
		{"events_ipv4.hex", "announced#1", Event{
			Type: EventAnnounced, Token: client, RemoteID: 2, Daddr: lo3, Dport: 4000,
		}},
		{"events_ipv4.hex", "sub_established#3", Event{
			Type: EventSubEstablished, Token: client, Family: linuxAFInet, LocalID: 1,
			Saddr: lo2, Sport: 50971, Daddr: lo1, Dport: srvPort,
		}},
		{"events_ipv4.hex", "sub_priority#1", Event{
			Type: EventSubPriority, Token: server, Family: linuxAFInet, RemoteID: 1,
			Saddr: lo1, Sport: srvPort, Daddr: lo2, Dport: 50971, Backup: true,
		}},
		{"events_ipv4.hex", "removed#1", Event{Type: EventRemoved, Token: client, RemoteID: 2}},
		{"events_ipv4.hex", "sub_closed#1", Event{
			Type: EventSubClosed, Token: server, Family: linuxAFInet, LocalID: 1,
			Saddr: lo2, Sport: 34059, Daddr: lo1, Dport: cliPort, Error: econnrefused,
		}},
		{"events_ipv4.hex", "listener_closed#1", Event{
			Type: EventListenerClosed, Family: linuxAFInet, Saddr: lo3, Sport: 4000,
		}},
		{"events_ipv4.hex", "closed#1", Event{Type: EventClosed, Token: client}},
		{"events_ipv6.hex", "listener_created#1", Event{
			Type: EventListenerCreated, Family: linuxAFInet6, Saddr: v6a, Sport: 34103,
		}},
		{"events_ipv6.hex", "created#2", Event{
			Type: EventCreated, Token: s6, Family: linuxAFInet6,
			Saddr: v6a, Sport: 34103, Daddr: v6a, Dport: 40090,
			Flags: EventFlagServerSide, ServerSide: true,
		}},
		{"events_ipv6.hex", "sub_established#1", Event{
			Type: EventSubEstablished, Token: c6, Family: linuxAFInet6, LocalID: 1,
			Saddr: v6b, Sport: 54187, Daddr: v6a, Dport: 34103, IfIndex: 1,
		}},
		{"events_ipv6.hex", "sub_established#2", Event{
			Type: EventSubEstablished, Token: s6, Family: linuxAFInet6, RemoteID: 1,
			Saddr: v6a, Sport: 34103, Daddr: v6b, Dport: 54187, Backup: true,
		}},
		{"events_ipv6.hex", "sub_closed#1", Event{
			Type: EventSubClosed, Token: s6, Family: linuxAFInet6, LocalID: 1,
			Saddr: v6b, Sport: 46473, Daddr: v6a, Dport: 40090, IfIndex: 1, Error: econnrefused,
		}},
		{"events_ipv6.hex", "closed#2", Event{Type: EventClosed, Token: s6}},
	} {
		t.Run(tt.file+"/"+tt.label, func(t *testing.T) {
			_, msgs := readHex(t, tt.file)
			m, ok := msgs[tt.label]
			if !ok {
				t.Fatalf("no message %s", tt.label)
			}
			got, err := parseEvent(m)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, cmpAddr); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestParseCapturedAll decodes every captured message, so that nothing the
// kernel sent trips the strict decoders.
func TestParseCapturedAll(t *testing.T) {
	for _, file := range []string{"events_ipv4.hex", "events_ipv6.hex"} {
		labels, msgs := readHex(t, file)
		for _, l := range labels {
			ev, err := parseEvent(msgs[l])
			if err != nil {
				t.Errorf("%s %s: %v", file, l, err)
				continue
			}
			if name, _, _ := strings.Cut(l, "#"); ev.Type.String() != name {
				t.Errorf("%s %s: type %s", file, l, ev.Type)
			}
		}
	}
	labels, msgs := readHex(t, "endpoints.hex")
	for _, l := range labels {
		if _, err := parseEndpointMsg(msgs[l].Data); err != nil {
			t.Errorf("endpoints.hex %s: %v", l, err)
		}
	}
}

// attrs encodes attributes for the hand-made cases below, which cover
// what no capture shows: malformed messages and attributes the kernel only
// sends after a peer's MP_TCPRST or MP_CAPABLE "C" bit.
func attrs(t testing.TB, as ...netlink.Attribute) []byte {
	t.Helper()
	b, err := netlink.MarshalAttributes(as)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func nest(t testing.TB, typ uint16, as ...netlink.Attribute) netlink.Attribute {
	t.Helper()
	return netlink.Attribute{Type: typ | netlink.Nested, Data: attrs(t, as...)}
}

func ne16(v uint16) []byte { return binary.NativeEndian.AppendUint16(nil, v) }
func ne32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

func TestParseEndpointMalformed(t *testing.T) {
	var (
		fam4  = netlink.Attribute{Type: addrAttrFamily, Data: ne16(linuxAFInet)}
		fam6  = netlink.Attribute{Type: addrAttrFamily, Data: ne16(linuxAFInet6)}
		addr4 = netlink.Attribute{Type: addrAttrAddr4, Data: []byte{10, 0, 0, 1}}
		addr6 = netlink.Attribute{Type: addrAttrAddr6, Data: netip.MustParseAddr("fd00::1").AsSlice()}
		id7   = netlink.Attribute{Type: addrAttrID, Data: []byte{7}}
	)
	for _, tt := range []struct {
		name    string
		b       []byte
		want    Endpoint
		wantErr string
	}{
		{
			name: "unknown attributes ignored",
			b: attrs(t,
				netlink.Attribute{Type: 9, Data: []byte{1, 2, 3}},
				nest(t, pmAttrAddr, fam4, id7, addr4, netlink.Attribute{Type: 42, Data: []byte{1}}),
			),
			want: Endpoint{ID: 7, Addr: netip.MustParseAddr("10.0.0.1")},
		},
		{
			name:    "no address attribute",
			b:       attrs(t, netlink.Attribute{Type: pmAttrSubflows, Data: ne32(1)}),
			wantErr: "no MPTCP_PM_ATTR_ADDR",
		},
		{
			name:    "two address attributes",
			b:       attrs(t, nest(t, pmAttrAddr, fam4, addr4), nest(t, pmAttrAddr, fam4, addr4)),
			wantErr: "more than one MPTCP_PM_ATTR_ADDR",
		},
		{
			name:    "short addr4",
			b:       attrs(t, nest(t, pmAttrAddr, fam4, netlink.Attribute{Type: addrAttrAddr4, Data: []byte{10, 0, 0}})),
			wantErr: "MPTCP_PM_ADDR_ATTR_ADDR4 has 3 bytes, want 4",
		},
		{
			name:    "long addr6",
			b:       attrs(t, nest(t, pmAttrAddr, fam6, netlink.Attribute{Type: addrAttrAddr6, Data: make([]byte, 17)})),
			wantErr: "MPTCP_PM_ADDR_ATTR_ADDR6 has 17 bytes, want 16",
		},
		{
			name:    "long id",
			b:       attrs(t, nest(t, pmAttrAddr, addr4, netlink.Attribute{Type: addrAttrID, Data: []byte{1, 0}})),
			wantErr: "MPTCP_PM_ADDR_ATTR_ID has 2 bytes, want 1",
		},
		{
			name:    "short port",
			b:       attrs(t, nest(t, pmAttrAddr, addr4, netlink.Attribute{Type: addrAttrPort, Data: []byte{1}})),
			wantErr: "MPTCP_PM_ADDR_ATTR_PORT has 1 bytes, want 2",
		},
		{
			name:    "short flags",
			b:       attrs(t, nest(t, pmAttrAddr, addr4, netlink.Attribute{Type: addrAttrFlags, Data: ne16(1)})),
			wantErr: "MPTCP_PM_ADDR_ATTR_FLAGS has 2 bytes, want 4",
		},
		{
			name:    "short family",
			b:       attrs(t, nest(t, pmAttrAddr, addr4, netlink.Attribute{Type: addrAttrFamily, Data: []byte{2}})),
			wantErr: "MPTCP_PM_ADDR_ATTR_FAMILY has 1 bytes, want 2",
		},
		{
			name:    "negative interface",
			b:       attrs(t, nest(t, pmAttrAddr, addr4, netlink.Attribute{Type: addrAttrIfIdx, Data: ne32(0xffffffff)})),
			wantErr: "MPTCP_PM_ADDR_ATTR_IF_IDX is negative",
		},
		{
			name:    "no address",
			b:       attrs(t, nest(t, pmAttrAddr, fam4, id7)),
			wantErr: "endpoint has no address",
		},
		{
			name:    "family does not match",
			b:       attrs(t, nest(t, pmAttrAddr, fam6, addr4)),
			wantErr: "MPTCP_PM_ADDR_ATTR_FAMILY is 10, but the address is 10.0.0.1",
		},
		{
			name:    "two addresses",
			b:       attrs(t, nest(t, pmAttrAddr, addr4, addr6)),
			wantErr: "MPTCP_PM_ADDR_ATTR_ADDR6 repeats an address",
		},
		{
			name:    "truncated attribute header",
			b:       []byte{8, 0, 1},
			wantErr: "decode endpoint",
		},
		{
			name:    "nested length beyond data",
			b:       attrs(t, netlink.Attribute{Type: pmAttrAddr, Data: []byte{200, 0, 3, 0, 10, 0, 0, 1}}),
			wantErr: "decode endpoint",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseEndpointMsg(tt.b)
			checkErr(t, err, tt.wantErr)
			if diff := cmp.Diff(tt.want, got, cmpAddr); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseLimitsMalformed(t *testing.T) {
	for _, tt := range []struct {
		name    string
		b       []byte
		wantErr string
	}{
		{"missing subflows", attrs(t, netlink.Attribute{Type: pmAttrRcvAddAddrs, Data: ne32(1)}), "lacks"},
		{"short subflows", attrs(t,
			netlink.Attribute{Type: pmAttrRcvAddAddrs, Data: ne32(1)},
			netlink.Attribute{Type: pmAttrSubflows, Data: ne16(1)},
		), "MPTCP_PM_ATTR_SUBFLOWS has 2 bytes, want 4"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseLimits(tt.b)
			checkErr(t, err, tt.wantErr)
		})
	}
}

func TestParseEventHandMade(t *testing.T) {
	var (
		token = netlink.Attribute{Type: evAttrToken, Data: ne32(0x01020304)}
		fam4  = netlink.Attribute{Type: evAttrFamily, Data: ne16(linuxAFInet)}
		sa4   = netlink.Attribute{Type: evAttrSaddr4, Data: []byte{10, 0, 0, 1}}
		sa6   = netlink.Attribute{Type: evAttrSaddr6, Data: netip.MustParseAddr("fd00::1").AsSlice()}
	)
	for _, tt := range []struct {
		name    string
		cmd     uint8
		b       []byte
		want    Event
		wantErr string
	}{
		{
			name: "reset reason and flags",
			cmd:  uint8(EventSubClosed),
			b: attrs(t, token,
				netlink.Attribute{Type: evAttrResetReason, Data: ne32(5)},
				netlink.Attribute{Type: evAttrResetFlags, Data: ne32(1)},
			),
			want: Event{Type: EventSubClosed, Token: 0x01020304, ResetReason: 5, ResetFlags: 1},
		},
		{
			name: "deny join id0 and server side flag without the old attribute",
			cmd:  uint8(EventCreated),
			b: attrs(t, token,
				netlink.Attribute{Type: evAttrFlags, Data: ne16(uint16(EventFlagDenyJoinID0 | EventFlagServerSide))},
				netlink.Attribute{Type: evAttrServerSide, Data: []byte{0}},
			),
			want: Event{Type: EventCreated, Token: 0x01020304, Flags: EventFlagDenyJoinID0 | EventFlagServerSide, ServerSide: true},
		},
		{
			name: "server side attribute of kernels before 6.18",
			cmd:  uint8(EventEstablished),
			b:    attrs(t, token, netlink.Attribute{Type: evAttrServerSide, Data: []byte{1}}),
			want: Event{Type: EventEstablished, Token: 0x01020304, ServerSide: true},
		},
		{
			name: "unknown event type and attributes",
			cmd:  42,
			b: attrs(t, token,
				netlink.Attribute{Type: evAttrTimeout, Data: ne32(3)},
				netlink.Attribute{Type: 99, Data: []byte{1, 2, 3}},
			),
			want: Event{Type: 42, Token: 0x01020304},
		},
		{
			name:    "short sport",
			cmd:     uint8(EventCreated),
			b:       attrs(t, token, netlink.Attribute{Type: evAttrSport, Data: []byte{1}}),
			wantErr: "MPTCP_ATTR_SPORT has 1 bytes, want 2",
		},
		{
			name:    "long token",
			cmd:     uint8(EventClosed),
			b:       attrs(t, netlink.Attribute{Type: evAttrToken, Data: make([]byte, 8)}),
			wantErr: "MPTCP_ATTR_TOKEN has 8 bytes, want 4",
		},
		{
			name:    "short daddr6",
			cmd:     uint8(EventAnnounced),
			b:       attrs(t, token, netlink.Attribute{Type: evAttrDaddr6, Data: make([]byte, 15)}),
			wantErr: "MPTCP_ATTR_DADDR6 has 15 bytes, want 16",
		},
		{
			name:    "long backup",
			cmd:     uint8(EventSubPriority),
			b:       attrs(t, token, netlink.Attribute{Type: evAttrBackup, Data: ne16(1)}),
			wantErr: "MPTCP_ATTR_BACKUP has 2 bytes, want 1",
		},
		{
			name:    "long flags",
			cmd:     uint8(EventCreated),
			b:       attrs(t, token, netlink.Attribute{Type: evAttrFlags, Data: ne32(1)}),
			wantErr: "MPTCP_ATTR_FLAGS has 4 bytes, want 2",
		},
		{
			name:    "negative interface",
			cmd:     uint8(EventSubEstablished),
			b:       attrs(t, token, netlink.Attribute{Type: evAttrIfIdx, Data: ne32(0x80000000)}),
			wantErr: "MPTCP_ATTR_IF_IDX is negative",
		},
		{
			name:    "family does not match",
			cmd:     uint8(EventCreated),
			b:       attrs(t, token, fam4, sa6),
			wantErr: "MPTCP_ATTR_FAMILY is 2, but the address is fd00::1",
		},
		{
			name:    "two source addresses",
			cmd:     uint8(EventCreated),
			b:       attrs(t, token, sa4, sa6),
			wantErr: "MPTCP_ATTR_SADDR6 repeats an address already set to 10.0.0.1",
		},
		{
			name:    "truncated",
			cmd:     uint8(EventClosed),
			b:       []byte{8, 0, 1, 0, 1},
			wantErr: "decode closed event",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseEvent(genetlink.Message{Header: genetlink.Header{Command: tt.cmd, Version: familyVersion}, Data: tt.b})
			checkErr(t, err, tt.wantErr)
			if diff := cmp.Diff(tt.want, got, cmpAddr); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// checkErr fails t unless err contains want, or is nil when want is "".
func checkErr(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Fatalf("unexpected error: %v", err)
	case want != "" && err == nil:
		t.Fatalf("no error, want one containing %q", want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Fatalf("error %q does not contain %q", err, want)
	}
}
