package agent

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mcpagent/mcpagent/config"
	"github.com/mcpagent/mcpagent/control"
	"github.com/mcpagent/mcpagent/dhcpopt"
)

// provStep is one input to a provisioner: a hook event, or an inform
// result when ev is nil.
type provStep struct {
	ev      *control.DHCPEvent
	uplink  int // inform: the uplink index
	family  int // inform
	addrs   []string
	err     error
	wantErr string   // substring; "" means no error
	want    []string // the policy's list after the step
}

func v4ev(ifname, event, hex string) *control.DHCPEvent {
	e := &control.DHCPEvent{Interface: ifname, Family: 4, Event: event}
	if hex != "" {
		e.Options = map[uint16]string{224: hex, 1: "ffffff00"}
	}
	return e
}

func v6ev(ifname, event, hex string) *control.DHCPEvent {
	e := &control.DHCPEvent{Interface: ifname, Family: 6, Event: event}
	if hex != "" {
		e.Options = map[uint16]string{65001: hex}
	}
	return e
}

// The MCP addresses of the tests, and their option payloads.
const (
	hexA  = "C6336401"                         // 198.51.100.1
	hexB  = "c6336402"                         // 198.51.100.2
	hexAB = "c6336401c6336402"                 // both
	hex6  = "20010db8000400000000000000000001" // 2001:db8:4::1
)

func TestProvisioner(t *testing.T) {
	a, b, c6 := "198.51.100.1:5124", "198.51.100.2:5124", "[2001:db8:4::1]:5124"
	tests := []struct {
		name  string
		steps []provStep
	}{
		{name: "udhcpc bound, renew with another mcp, deconfig", steps: []provStep{
			{ev: v4ev("wan0", "bound", hexA), want: []string{a}},
			{ev: v4ev("wan0", "renew", hexB), want: []string{b}},
			{ev: v4ev("wan0", "deconfig", ""), want: nil},
		}},
		{name: "uplinks in order, dhcpv4 before dhcpv6, each mcp once", steps: []provStep{
			{ev: v4ev("wan1", "bound", hexAB), want: []string{a, b}},
			{ev: v6ev("wan0", "informed", hex6), want: []string{c6, a, b}},
			{ev: v4ev("wan0", "bound", hexB), want: []string{b, c6, a}},
			{ev: v6ev("wan0", "unbound", ""), want: []string{b, a}},
		}},
		{name: "malformed options leave the list in force", steps: []provStep{
			{ev: v4ev("wan0", "bound", hexA), want: []string{a}},
			{ev: v4ev("wan0", "renew", "c63364"), wantErr: "length", want: []string{a}},
			{ev: v4ev("wan0", "renew", "7f000001"), wantErr: "loopback address 127.0.0.1", want: []string{a}},
			{ev: v4ev("wan0", "renew", "c633640"), wantErr: "hex", want: []string{a}},
			{ev: v6ev("wan0", "updated", "fe800000000000000000000000000001"), wantErr: "link-local", want: []string{a}},
		}},
		{name: "an event without the option clears that uplink's list", steps: []provStep{
			{ev: v4ev("wan0", "bound", hexA), want: []string{a}},
			{ev: v4ev("wan1", "bound", hexB), want: []string{a, b}},
			{ev: &control.DHCPEvent{Interface: "wan0", Family: 4, Event: "renew", Options: map[uint16]string{225: hexA}}, want: []string{b}},
		}},
		{name: "lan and unknown interfaces are refused", steps: []provStep{
			{ev: v4ev("wan0", "bound", hexA), want: []string{a}},
			{ev: v4ev("lan0", "bound", hexB), wantErr: "lan0 is a LAN interface", want: []string{a}},
			{ev: v4ev("wan7", "bound", hexB), wantErr: "wan7 is not an uplink's interface", want: []string{a}},
			{ev: v4ev("lan0", "deconfig", ""), wantErr: "LAN interface", want: []string{a}},
		}},
		{name: "inform results", steps: []provStep{
			{uplink: 1, family: 4, addrs: []string{"198.51.100.2"}, want: []string{b}},
			{uplink: 0, family: 6, addrs: []string{"2001:db8:4::1"}, want: []string{c6, b}},
			{uplink: 1, family: 4, err: fmt.Errorf("inform: %w", dhcpopt.ErrNoReply), want: []string{c6, b}},
			{uplink: 1, family: 4, err: fmt.Errorf("inform: %w", &dhcpopt.Error{Reason: dhcpopt.ReasonLoopback}), want: []string{c6, b}},
			{uplink: 1, family: 4, err: errors.New("interface wan1 has no IPv4 address to inform from"), want: []string{c6, b}},
			{uplink: 1, family: 4, err: fmt.Errorf("inform: %w", dhcpopt.ErrAbsent), want: []string{c6}},
		}},
	}
	cfg := &config.Config{
		LANInterfaces: []string{"lan0"},
		Uplinks:       []config.Uplink{{Name: "dsl", Interface: "wan0"}, {Name: "lte", Interface: "wan1"}},
		MCP:           config.MCP{Port: 5124, DHCP: config.DHCP{V4Option: 224, V6Option: 65001}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []netip.AddrPort
			sets := 0
			p := newProvisioner(cfg, func(l []netip.AddrPort) bool { got = l; sets++; return true }, discardLog())
			for i, s := range tt.steps {
				setsBefore := sets
				var err error
				if s.ev != nil {
					err = p.event(*s.ev)
				} else {
					var addrs []netip.Addr
					for _, a := range s.addrs {
						addrs = append(addrs, netip.MustParseAddr(a))
					}
					p.informed(s.uplink, s.family, addrs, s.err)
				}
				if s.wantErr == "" && err != nil || s.wantErr != "" && (err == nil || !strings.Contains(err.Error(), s.wantErr)) {
					t.Errorf("step %d: err = %v, want %q", i, err, s.wantErr)
				}
				if diff := cmp.Diff(s.want, apStrings(got)); diff != "" {
					t.Errorf("step %d: policy list (-want +got):\n%s", i, diff)
				}
				if s.wantErr != "" && sets != setsBefore {
					t.Errorf("step %d: a refused step changed the policy's list", i)
				}
			}
		})
	}
}

// TestProvisionerReplay: saved events are taken in file order, and
// refused ones are skipped.
func TestProvisionerReplay(t *testing.T) {
	cfg := &config.Config{
		LANInterfaces: []string{"lan0"},
		Uplinks:       []config.Uplink{{Name: "dsl", Interface: "wan0"}},
		MCP:           config.MCP{Port: 5124, DHCP: config.DHCP{V4Option: 224, V6Option: 65001}},
	}
	var got []netip.AddrPort
	p := newProvisioner(cfg, func(l []netip.AddrPort) bool { got = l; return true }, discardLog())
	p.replay(func() ([]control.DHCPEvent, error) {
		return []control.DHCPEvent{*v4ev("lan0", "bound", hexB), *v4ev("wan0", "bound", hexA), *v6ev("wan0", "bound", "00")},
			errors.New("dhcp event junk: bad")
	})
	if diff := cmp.Diff([]string{"198.51.100.1:5124"}, apStrings(got)); diff != "" {
		t.Errorf("policy list after replay (-want +got):\n%s", diff)
	}
}

func apStrings(l []netip.AddrPort) []string {
	var s []string
	for _, ap := range l {
		s = append(s, ap.String())
	}
	return s
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
