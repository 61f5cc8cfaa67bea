package dhcpopt

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv6"
)

// readCapture reads a testdata file of hex lines after '#' comments.
func readCapture(t *testing.T, name string) []byte {
	t.Helper()
	text, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	var digits strings.Builder
	for _, line := range strings.Split(string(text), "\n") {
		if !strings.HasPrefix(line, "#") {
			digits.WriteString(strings.TrimSpace(line))
		}
	}
	b, err := hex.DecodeString(digits.String())
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return b
}

func captureV4(t *testing.T, name string) *dhcpv4.DHCPv4 {
	t.Helper()
	m, err := dhcpv4.FromBytes(readCapture(t, name))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return m
}

func captureV6(t *testing.T, name string) *dhcpv6.Message {
	t.Helper()
	m, err := dhcpv6.MessageFromBytes(readCapture(t, name))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return m
}

// ackV4 returns a DHCPACK carrying opts, serialized and parsed again as a
// client would receive it.
func ackV4(t *testing.T, opts ...dhcpv4.Option) *dhcpv4.DHCPv4 {
	t.Helper()
	mods := []dhcpv4.Modifier{dhcpv4.WithMessageType(dhcpv4.MessageTypeAck)}
	for _, o := range opts {
		mods = append(mods, dhcpv4.WithOption(o))
	}
	m, err := dhcpv4.New(mods...)
	if err != nil {
		t.Fatal(err)
	}
	m, err = dhcpv4.FromBytes(m.ToBytes())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestFromDHCPv4(t *testing.T) {
	addrs64, payload64 := repeatV4(64)
	mcp := dhcpv4.GenericOptionCode(224)
	tests := []struct {
		name    string
		m       *dhcpv4.DHCPv4
		code    uint8
		want    []netip.Addr
		reject  rejection
		wantErr error
	}{
		{name: "captured", m: captureV4(t, "dnsmasq-ack-224.hex"), code: 224, want: addrs("198.51.100.1", "198.51.100.2")},
		{name: "captured loopback", m: captureV4(t, "dnsmasq-ack-224-loopback.hex"), code: 224,
			reject: rejection{ReasonLoopback, netip.MustParseAddr("127.0.0.1")}},
		{name: "captured odd length", m: captureV4(t, "dnsmasq-ack-224-odd.hex"), code: 224, reject: rejection{Reason: ReasonLength}},
		{name: "captured, other code", m: captureV4(t, "dnsmasq-ack-224.hex"), code: 225, wantErr: ErrAbsent},
		// 256 octets go out as two instances (RFC 3396); the decoder joins them.
		{name: "64 addresses split in two", m: ackV4(t, dhcpv4.OptGeneric(mcp, payload64)), code: 224, want: addrs64},
		{name: "zero length", m: ackV4(t, dhcpv4.OptGeneric(mcp, nil)), code: 224, reject: rejection{Reason: ReasonEmpty}},
		{name: "configured code", m: ackV4(t, dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(250), []byte{198, 51, 100, 9})), code: 250,
			want: addrs("198.51.100.9")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := FromDHCPv4(tt.m, tt.code)
			checkResult(t, got, err, tt.want, tt.reject, tt.wantErr)
		})
	}
	for _, code := range []uint8{0, 255} {
		if _, err := FromDHCPv4(ackV4(t), code); err == nil || errors.As(err, new(*Error)) || errors.Is(err, ErrAbsent) {
			t.Errorf("FromDHCPv4 with code %d: %v, want an error about the code", code, err)
		}
	}
}

func TestFromDHCPv6(t *testing.T) {
	mcp := dhcpv6.OptionCode(65001)
	reply := func(opts ...dhcpv6.Option) *dhcpv6.Message {
		m, err := dhcpv6.NewMessage()
		if err != nil {
			t.Fatal(err)
		}
		m.MessageType = dhcpv6.MessageTypeReply
		for _, o := range opts {
			m.AddOption(o)
		}
		return m
	}
	list := &dhcpv6.OptionGeneric{OptionCode: mcp, OptionData: netip.MustParseAddr("2001:db8:4::1").AsSlice()}
	relayed, err := dhcpv6.EncapsulateRelay(reply(list), dhcpv6.MessageTypeRelayReply, net.ParseIP("2001:db8:4::ff"), net.ParseIP("fe80::1"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		m       dhcpv6.DHCPv6
		code    uint16
		want    []netip.Addr
		reject  rejection
		wantErr error
	}{
		{name: "captured", m: captureV6(t, "dnsmasq-reply-65001.hex"), code: 65001, want: addrs("2001:db8:4::2", "2001:db8:4::1")},
		{name: "captured loopback", m: captureV6(t, "dnsmasq-reply-65001-loopback.hex"), code: 65001,
			reject: rejection{ReasonLoopback, netip.IPv6Loopback()}},
		{name: "captured absent", m: captureV6(t, "dnsmasq-reply-no-65001.hex"), code: 65001, wantErr: ErrAbsent},
		{name: "relayed", m: relayed, code: 65001, want: addrs("2001:db8:4::1")},
		{name: "repeated", m: reply(list, list), code: 65001, reject: rejection{Reason: ReasonRepeated}},
		{name: "empty", m: reply(&dhcpv6.OptionGeneric{OptionCode: mcp}), code: 65001, reject: rejection{Reason: ReasonEmpty}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := FromDHCPv6(tt.m, tt.code)
			checkResult(t, got, err, tt.want, tt.reject, tt.wantErr)
		})
	}
	if _, err := FromDHCPv6(reply(), 0); err == nil || errors.As(err, new(*Error)) || errors.Is(err, ErrAbsent) {
		t.Errorf("FromDHCPv6 with code 0: %v, want an error about the code", err)
	}
}

// TestReplies feeds captured and made-up replies to the judge of an
// exchange and checks what InformV4 and InformV6 would return.
func TestReplies(t *testing.T) {
	good4 := captureV4(t, "dnsmasq-ack-224.hex")
	bad4 := captureV4(t, "dnsmasq-ack-224-loopback.hex")
	absent4 := ackV4(t)
	nak4 := captureV4(t, "dnsmasq-ack-224.hex")
	nak4.UpdateOption(dhcpv4.OptMessageType(dhcpv4.MessageTypeNak))
	good6 := captureV6(t, "dnsmasq-reply-65001.hex")
	bad6 := captureV6(t, "dnsmasq-reply-65001-loopback.hex")
	absent6 := captureV6(t, "dnsmasq-reply-no-65001.hex")
	advertise6 := captureV6(t, "dnsmasq-reply-65001.hex")
	advertise6.MessageType = dhcpv6.MessageTypeAdvertise

	// exchange plays replies until one is accepted, as nclient's
	// SendAndRead does, and ends with end if none is.
	type reply struct {
		v4 *dhcpv4.DHCPv4
		v6 *dhcpv6.Message
	}
	exchange := func(end error, rs ...reply) ([]netip.Addr, error) {
		r := &replies{log: InformConfig{}.logger()}
		for _, m := range rs {
			if m.v4 != nil && r.acceptV4(224)(m.v4) || m.v6 != nil && r.acceptV6(65001)(m.v6) {
				end = nil
				break
			}
		}
		if err := r.result(end); err != nil {
			return nil, err
		}
		return r.addrs, nil
	}
	timeout := fmt.Errorf("read: %w", context.DeadlineExceeded)
	tests := []struct {
		name    string
		end     error
		replies []reply
		want    []netip.Addr
		reject  rejection
		wantErr error
	}{
		{name: "v4 first valid", end: timeout, replies: []reply{{v4: good4}}, want: addrs("198.51.100.1", "198.51.100.2")},
		{name: "v4 valid after rejected and absent", end: timeout, replies: []reply{{v4: bad4}, {v4: absent4}, {v4: good4}},
			want: addrs("198.51.100.1", "198.51.100.2")},
		{name: "v4 a NAK is no answer", end: timeout, replies: []reply{{v4: nak4}}, wantErr: ErrNoReply},
		{name: "v4 rejected wins over absent", end: timeout, replies: []reply{{v4: bad4}, {v4: absent4}},
			reject: rejection{ReasonLoopback, netip.MustParseAddr("127.0.0.1")}},
		{name: "v4 absent", end: timeout, replies: []reply{{v4: absent4}}, wantErr: ErrAbsent},
		{name: "no reply", end: timeout, wantErr: ErrNoReply},
		{name: "cancelled", end: context.Canceled, replies: []reply{{v4: bad4}}, wantErr: context.Canceled},
		{name: "send failed", end: net.ErrClosed, replies: []reply{{v4: bad4}}, wantErr: net.ErrClosed},
		{name: "v6 first valid", end: timeout, replies: []reply{{v6: bad6}, {v6: good6}}, want: addrs("2001:db8:4::2", "2001:db8:4::1")},
		{name: "v6 an Advertise is no answer", end: timeout, replies: []reply{{v6: advertise6}}, wantErr: ErrNoReply},
		{name: "v6 absent", end: timeout, replies: []reply{{v6: absent6}}, wantErr: ErrAbsent},
		{name: "v6 rejected", end: timeout, replies: []reply{{v6: absent6}, {v6: bad6}}, reject: rejection{ReasonLoopback, netip.IPv6Loopback()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := exchange(tt.end, tt.replies...)
			checkResult(t, got, err, tt.want, tt.reject, tt.wantErr)
		})
	}
}

// checkResult checks a list and an error against what a test expects: the
// list, or an error that is wantErr, or one that carries reject.
func checkResult(t *testing.T, got []netip.Addr, err error, want []netip.Addr, reject rejection, wantErr error) {
	t.Helper()
	if wantErr != nil {
		if !errors.Is(err, wantErr) {
			t.Fatalf("error %v, want %v", err, wantErr)
		}
	} else if diff := cmp.Diff(reject, rejectionOf(t, err), addrCmp); diff != "" {
		t.Fatalf("rejection (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want, got, addrCmp); diff != "" {
		t.Fatalf("addresses (-want +got):\n%s", diff)
	}
}
