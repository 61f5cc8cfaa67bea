package config

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseExampleFillsDefaults(t *testing.T) {
	c, err := Load("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		LANInterfaces: []string{"lan0"},
		Uplinks:       []Uplink{{Name: "dsl", Interface: "wan0", Role: "active"}, {Name: "lte", Interface: "wan1", Role: "active"}},
		MCP: MCP{
			Mode:    MCPModeOffPath,
			Servers: []string{"198.51.100.1:5124"},
			Port:    DefaultMCPPort,
			DHCP:    DHCP{Source: DHCPSourceNetifd, V4Option: 224, V6Option: 65001, InformInterval: Duration(DefaultInformInterval)},
			Addrs:   []netip.AddrPort{netip.MustParseAddrPort("198.51.100.1:5124")},
		},
		LegTimeout:    Duration(1500 * time.Millisecond),
		IdleTimeout:   Duration(DefaultIdleTimeout),
		Fallback:      FallbackDirect,
		Firewall:      FirewallAuto,
		Netfilter:     Netfilter{Queue: DefaultQueue, TProxyPort: DefaultTProxyPort, MarkMask: DefaultMarkMask},
		Routing:       Routing{TableBase: DefaultTableBase, RulePref: DefaultRulePref},
		LogLevel:      "info",
		ControlSocket: DefaultControlSocket,
		MaxSubflows:   2,
		Probe:         Probe{Interval: Duration(DefaultProbeInterval), Timeout: Duration(DefaultProbeTimeout), Failures: DefaultProbeFailures},
	}
	if diff := cmp.Diff(want, c, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Errorf("Parse (-want +got):\n%s", diff)
	}
}

func TestParse(t *testing.T) {
	const base = "lan_interfaces: [lan0]\nuplinks: [{name: dsl, interface: wan0}]\n"
	tests := []struct {
		name    string
		in      string
		wantErr string // substring; "" means success
		check   func(t *testing.T, c *Config)
	}{
		{name: "server without port uses mcp.port", in: base + "mcp: {servers: [198.51.100.1], port: 7000}",
			check: func(t *testing.T, c *Config) {
				if got := c.MCP.Addrs[0].String(); got != "198.51.100.1:7000" {
					t.Errorf("addr = %s", got)
				}
			}},
		{name: "ipv6 server", in: base + "mcp: {servers: ['[2001:db8:4::1]:5124', '2001:db8:4::2']}",
			check: func(t *testing.T, c *Config) {
				if got := c.MCP.Addrs[1].String(); got != "[2001:db8:4::2]:5124" {
					t.Errorf("addr = %s", got)
				}
			}},
		{name: "on path needs no MCP list", in: base + "mcp: {mode: on-path, dhcp: {source: off}, source_address: '::ffff:10.0.1.2'}",
			check: func(t *testing.T, c *Config) {
				if c.MCP.Mode != MCPModeOnPath || len(c.MCP.Addrs) != 0 || c.MCP.Source() != netip.MustParseAddr("10.0.1.2") {
					t.Errorf("mcp = %+v, source %v", c.MCP, c.MCP.Source())
				}
			}},
		{name: "off path without MCP list and dhcp off", in: base + "mcp: {mode: off-path, dhcp: {source: off}}", wantErr: "mcp.servers: at least one downstream MCP"},
		{name: "unknown mode", in: base + "mcp: {mode: inline, servers: [198.51.100.1]}", wantErr: `mcp.mode: "inline" is not off-path or on-path`},
		{name: "source address not unicast", in: base + "mcp: {servers: [198.51.100.1], source_address: 224.0.0.1}", wantErr: `mcp.source_address: "224.0.0.1" is not a unicast IP address`},
		{name: "source address not an address", in: base + "mcp: {servers: [198.51.100.1], source_address: dsl}", wantErr: `mcp.source_address: "dsl" is not a unicast IP address`},
		{name: "reject fallback and custom mask", in: base + "mcp: {servers: [198.51.100.1]}\nfallback: reject\nnetfilter: {mark_mask: 0x30}",
			check: func(t *testing.T, c *Config) {
				cv, rj, tp := c.Netfilter.Marks()
				if c.Fallback != FallbackReject || cv != 0x10 || rj != 0x20 || tp != 0x30 {
					t.Errorf("fallback %q marks %#x %#x %#x", c.Fallback, cv, rj, tp)
				}
			}},
		{name: "unknown key", in: base + "mcp: {servers: [198.51.100.1]}\nfalback: direct", wantErr: "field falback not found"},
		{name: "unknown nested key", in: base + "mcp: {server: [198.51.100.1]}", wantErr: "field server not found"},
		{name: "empty", in: "", wantErr: "empty"},
		{name: "two documents", in: base + "mcp: {servers: [198.51.100.1]}\n---\nx: 1", wantErr: "more than one"},
		{name: "no lan", in: "uplinks: [{name: dsl, interface: wan0}]\nmcp: {servers: [198.51.100.1]}", wantErr: "lan_interfaces"},
		{name: "no uplinks", in: "lan_interfaces: [lan0]\nmcp: {servers: [198.51.100.1]}", wantErr: "uplinks: between 1 and 8"},
		{name: "uplink on lan interface", in: "lan_interfaces: [lan0]\nuplinks: [{name: a, interface: lan0}]\nmcp: {servers: [198.51.100.1]}", wantErr: "already in lan_interfaces"},
		{name: "duplicate uplink name", in: "lan_interfaces: [lan0]\nuplinks: [{name: a, interface: wan0}, {name: a, interface: wan1}]\nmcp: {servers: [198.51.100.1]}", wantErr: "used twice"},
		{name: "bad interface name", in: "lan_interfaces: [lan0]\nuplinks: [{name: a, interface: 'wan/0'}]\nmcp: {servers: [198.51.100.1]}", wantErr: "not an interface name"},
		{name: "no mcp: learned over dhcp from netifd", in: base,
			check: func(t *testing.T, c *Config) {
				if !c.MCP.Learn() || c.MCP.DHCP.Source != DHCPSourceNetifd || len(c.MCP.Addrs) != 0 {
					t.Errorf("mcp = %+v, want learning from netifd", c.MCP)
				}
			}},
		{name: "static servers win over dhcp", in: base + "mcp: {servers: [198.51.100.1], dhcp: {source: inform}}",
			check: func(t *testing.T, c *Config) {
				if c.MCP.Learn() {
					t.Errorf("mcp = %+v: learns over dhcp despite servers", c.MCP)
				}
			}},
		{name: "dhcp keys", in: base + "mcp: {dhcp: {source: inform, v4_option: 250, v6_option: 1234, inform_interval: 1m}}\ncontrol_socket: /tmp/a.sock",
			check: func(t *testing.T, c *Config) {
				want := DHCP{Source: DHCPSourceInform, V4Option: 250, V6Option: 1234, InformInterval: Duration(time.Minute)}
				if c.MCP.DHCP != want || c.ControlSocket != "/tmp/a.sock" {
					t.Errorf("dhcp = %+v, socket %q", c.MCP.DHCP, c.ControlSocket)
				}
			}},
		{name: "no mcp and dhcp off", in: base + "mcp: {dhcp: {source: off}}", wantErr: "mcp.servers: at least one downstream MCP is needed when mcp.dhcp.source is off"},
		{name: "bad dhcp source", in: base + "mcp: {dhcp: {source: dhcpcd}}", wantErr: "mcp.dhcp.source"},
		{name: "v4 option end", in: base + "mcp: {dhcp: {v4_option: 255}}", wantErr: "mcp.dhcp.v4_option"},
		{name: "v4 option too large", in: base + "mcp: {dhcp: {v4_option: 256}}", wantErr: "uint8"},
		{name: "inform interval too short", in: base + "mcp: {dhcp: {inform_interval: 1s}}", wantErr: "mcp.dhcp.inform_interval"},
		{name: "relative control socket", in: base + "control_socket: mcpagent.sock", wantErr: "control_socket"},
		{name: "mcp not an address", in: base + "mcp: {servers: [mcp.example]}", wantErr: "not an address"},
		{name: "mcp loopback", in: base + "mcp: {servers: [127.0.0.1]}", wantErr: "not a unicast"},
		{name: "mcp multicast", in: base + "mcp: {servers: ['[ff02::1]:1']}", wantErr: "not a unicast"},
		{name: "mcp port 0", in: base + "mcp: {servers: ['198.51.100.1:0']}", wantErr: "port 0"},
		{name: "bad duration", in: base + "mcp: {servers: [198.51.100.1]}\nleg_timeout: 3", wantErr: "not a duration"},
		{name: "duration too long", in: base + "mcp: {servers: [198.51.100.1]}\nleg_timeout: 2m", wantErr: "outside"},
		{name: "bad fallback", in: base + "mcp: {servers: [198.51.100.1]}\nfallback: maybe", wantErr: "fallback"},
		{name: "bad firewall", in: base + "mcp: {servers: [198.51.100.1]}\nfirewall: nft", wantErr: `firewall: "nft" is not auto, nftables or iptables`},
		{name: "mask one bit", in: base + "mcp: {servers: [198.51.100.1]}\nnetfilter: {mark_mask: 0x100}", wantErr: "mark_mask"},
		{name: "mask not contiguous", in: base + "mcp: {servers: [198.51.100.1]}\nnetfilter: {mark_mask: 0x101}", wantErr: "mark_mask"},
		{name: "reserved table", in: base + "mcp: {servers: [198.51.100.1]}\nrouting: {table_base: 250}", wantErr: "table_base"},
		{name: "log level", in: base + "mcp: {servers: [198.51.100.1]}\nlog_level: loud", wantErr: "log_level"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}

// FuzzParse checks that no input panics and that every accepted config is
// fully resolved: one MCP address per server, defaults filled.
func FuzzParse(f *testing.F) {
	f.Add([]byte("lan_interfaces: [lan0]\nuplinks: [{name: dsl, interface: wan0}]\nmcp: {servers: [198.51.100.1]}"))
	f.Add([]byte("lan_interfaces: [lan0]\nuplinks: [{name: a, interface: b}]\nmcp: {servers: ['[2001:db8::1]:1']}\nleg_timeout: 1ms\nnetfilter: {mark_mask: 0xc0000000}"))
	f.Add([]byte("a: &x [*x]")) // an alias loop
	f.Add([]byte("leg_timeout: !!binary AAAA"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b)
		if err != nil {
			return
		}
		if len(c.MCP.Addrs) != len(c.MCP.Servers) || c.LegTimeout <= 0 || c.Netfilter.MarkMask == 0 {
			t.Fatalf("accepted an incomplete config: %+v", c)
		}
		cv, rj, tp := c.Netfilter.Marks()
		m := uint32(c.Netfilter.MarkMask)
		if cv&m != cv || rj&m != rj || tp&m != tp || cv == rj || rj == tp {
			t.Fatalf("marks %#x %#x %#x do not fit mask %#x", cv, rj, tp, m)
		}
	})
}
