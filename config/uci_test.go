package config

import (
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/mcpagent/mcpagent/policy"
)

var addrPortEqual = cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })

// TestParseUCIMatchesYAML is the one-to-one mapping: a UCI file and a YAML
// file that set every key to a non-default value decode to the same Config.
func TestParseUCIMatchesYAML(t *testing.T) {
	fromYAML, err := Load("testdata/uci-full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	fromUCI, err := LoadUCI("testdata/uci-full")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(fromYAML, fromUCI, addrPortEqual); diff != "" {
		t.Errorf("ParseUCI differs from Parse (-yaml +uci):\n%s", diff)
	}
	// Not one default may hide in the fixture, or the test would prove
	// nothing about that key.
	var defaults Config
	defaults.fillDefaults()
	if fromUCI.MCP.Port == defaults.MCP.Port || fromUCI.LegTimeout == defaults.LegTimeout ||
		fromUCI.IdleTimeout == defaults.IdleTimeout || fromUCI.Fallback == defaults.Fallback ||
		fromUCI.Firewall == defaults.Firewall ||
		fromUCI.LogLevel == defaults.LogLevel || fromUCI.Netfilter == defaults.Netfilter ||
		fromUCI.Routing.TableBase == defaults.Routing.TableBase || fromUCI.Routing.RulePref == defaults.Routing.RulePref ||
		fromUCI.ControlSocket == defaults.ControlSocket || fromUCI.MCP.DHCP.Source == defaults.MCP.DHCP.Source ||
		fromUCI.MCP.DHCP.V4Option == defaults.MCP.DHCP.V4Option || fromUCI.MCP.DHCP.V6Option == defaults.MCP.DHCP.V6Option ||
		fromUCI.MCP.DHCP.InformInterval == defaults.MCP.DHCP.InformInterval ||
		fromUCI.MaxSubflows == len(fromUCI.Uplinks) || fromUCI.CongestionControl == defaults.CongestionControl ||
		fromUCI.Probe == defaults.Probe || fromUCI.Uplinks[1].Role == policy.RoleActive.String() {
		t.Errorf("testdata/uci-full leaves a setting at its default: %+v", fromUCI)
	}
}

// TestUCIOptionsCoverYAML fails when a YAML key has no UCI option, or an
// option names a key that does not exist.
func TestUCIOptionsCoverYAML(t *testing.T) {
	var main, uplink []string
	for _, k := range yamlPaths(reflect.TypeOf(Config{}), "") {
		if k != "uplinks" {
			main = append(main, k)
		}
	}
	uplink = yamlPaths(reflect.TypeOf(Uplink{}), "")
	if diff := cmp.Diff(main, carried(mainOptions)); diff != "" {
		t.Errorf("config mcpagent options vs YAML keys (-yaml +uci):\n%s", diff)
	}
	if diff := cmp.Diff(uplink, carried(uplinkOptions)); diff != "" {
		t.Errorf("config uplink options vs YAML keys (-yaml +uci):\n%s", diff)
	}
}

// TestUCIOptionsDocumented keeps the option tables of openwrt/README.md in
// step with the parser: every option, and whether it is a list.
func TestUCIOptionsDocumented(t *testing.T) {
	b, err := os.ReadFile("../openwrt/README.md")
	if err != nil {
		t.Fatal(err)
	}
	var documented []string
	for _, m := range regexp.MustCompile("(?m)^\\| `((?:option|list) [a-z0-9_]+)`").FindAllStringSubmatch(string(b), -1) {
		documented = append(documented, m[1])
	}
	sort.Strings(documented)
	parsed := append(spelled(mainOptions), spelled(uplinkOptions)...)
	sort.Strings(parsed)
	if diff := cmp.Diff(parsed, documented); diff != "" {
		t.Errorf("openwrt/README.md option tables (-parser +readme):\n%s", diff)
	}
}

// spelled lists a table's options as a UCI file writes them.
func spelled[T any](opts map[string]uciOption[T]) []string {
	var s []string
	for name, o := range opts {
		if o.list {
			s = append(s, "list "+name)
		} else {
			s = append(s, "option "+name)
		}
	}
	return s
}

// yamlPaths lists the leaf keys of a struct type's yaml tags, sorted.
func yamlPaths(t reflect.Type, prefix string) []string {
	var paths []string
	for i := 0; i < t.NumField(); i++ {
		tag := t.Field(i).Tag.Get("yaml")
		if tag == "-" {
			continue
		}
		if ft := t.Field(i).Type; ft.Kind() == reflect.Struct {
			paths = append(paths, yamlPaths(ft, prefix+tag+".")...)
			continue
		}
		paths = append(paths, prefix+tag)
	}
	sort.Strings(paths)
	return paths
}

// carried lists the YAML keys a table of options sets, sorted.
func carried[T any](opts map[string]uciOption[T]) []string {
	var keys []string
	for _, o := range opts {
		if o.yaml != "" {
			keys = append(keys, o.yaml)
		}
	}
	sort.Strings(keys)
	return keys
}

func TestParseUCI(t *testing.T) {
	const (
		head   = "config mcpagent 'main'\n\tlist lan_interface 'br-lan'\n\tlist mcp_server '198.51.100.1'\n"
		uplink = "config uplink 'dsl'\n\toption interface 'wan'\n"
	)
	tests := []struct {
		name    string
		in      string
		wantErr string // substring; "" means success
		check   func(t *testing.T, c *Config)
	}{
		{name: "minimal file fills defaults", in: head + uplink,
			check: func(t *testing.T, c *Config) {
				want := &Config{
					LANInterfaces: []string{"br-lan"},
					Uplinks:       []Uplink{{Name: "dsl", Interface: "wan", Role: "active"}},
					MCP: MCP{Mode: MCPModeOffPath, Servers: []string{"198.51.100.1"}, Port: DefaultMCPPort,
						DHCP:  DHCP{Source: DHCPSourceNetifd, V4Option: DefaultDHCPV4Option, V6Option: DefaultDHCPV6Option, InformInterval: Duration(DefaultInformInterval)},
						Addrs: []netip.AddrPort{netip.MustParseAddrPort("198.51.100.1:5124")}},
					LegTimeout:    Duration(DefaultLegTimeout),
					IdleTimeout:   Duration(DefaultIdleTimeout),
					Fallback:      FallbackDirect,
					Firewall:      FirewallAuto,
					Netfilter:     Netfilter{Queue: DefaultQueue, TProxyPort: DefaultTProxyPort, MarkMask: DefaultMarkMask},
					Routing:       Routing{TableBase: DefaultTableBase, RulePref: DefaultRulePref},
					LogLevel:      "info",
					ControlSocket: DefaultControlSocket,
					MaxSubflows:   1,
					Probe:         Probe{Interval: Duration(DefaultProbeInterval), Timeout: Duration(DefaultProbeTimeout), Failures: DefaultProbeFailures},
				}
				if diff := cmp.Diff(want, c, addrPortEqual); diff != "" {
					t.Errorf("(-want +got):\n%s", diff)
				}
			}},
		{name: "sections in any order, anonymous main section", in: uplink + strings.Replace(head, " 'main'", "", 1),
			check: wantUplinks(Uplink{Name: "dsl", Interface: "wan"})},
		{name: "option name overrides the section name", in: head + uplink + "\toption name 'dsl-2'\n",
			check: wantUplinks(Uplink{Name: "dsl-2", Interface: "wan"})},
		{name: "uplinks keep file order", in: head + "config uplink 'b'\n\toption interface 'wan1'\nconfig uplink 'a'\n\toption interface 'wan0'\n",
			check: wantUplinks(Uplink{Name: "b", Interface: "wan1"}, Uplink{Name: "a", Interface: "wan0"})},
		{name: "quoting the way uci export and people write it",
			in: "config mcpagent\n  list lan_interface br-lan # a comment\n\tlist mcp_server \"198.51.100.1\"\n" +
				"config uplink\n\toption name 'it'\\''s'\n\toption interface w'a'\"n\"\\0\n\toption network \"w\\an\"\n",
			check: wantUplinks(Uplink{Name: "it's", Interface: "wan0"})},
		{name: "comments and blank lines", in: "# head\n\n" + head + "   # indented\n\n" + uplink + "#",
			check: wantUplinks(Uplink{Name: "dsl", Interface: "wan"})},
		{name: "quoted hash and semicolon", in: head + "config uplink\n\toption name 'a#b;c'\n\toption interface wan\n",
			check: wantUplinks(Uplink{Name: "a#b;c", Interface: "wan"})},
		{name: "enabled is checked and ignored", in: head + "\toption enabled 'no'\n" + uplink,
			check: wantUplinks(Uplink{Name: "dsl", Interface: "wan"})},
		{name: "hex mark mask, durations", in: head + "\toption netfilter_mark_mask '0x30'\n\toption leg_timeout '200ms'\n" + uplink,
			check: func(t *testing.T, c *Config) {
				if c.Netfilter.MarkMask != 0x30 || time.Duration(c.LegTimeout) != 200*time.Millisecond {
					t.Errorf("mask %#x, leg_timeout %v", c.Netfilter.MarkMask, time.Duration(c.LegTimeout))
				}
			}},

		// Syntax.
		{name: "empty file", in: "", wantErr: "no config mcpagent section"},
		{name: "unterminated single quote", in: "config mcpagent 'main\n", wantErr: "line 1: unterminated ' quote"},
		{name: "unterminated double quote", in: "config mcpagent \"main\\\"\n", wantErr: `line 1: unterminated " quote`},
		{name: "line continuation", in: head + "\tlist lan_interface br-guest \\\n", wantErr: "line 4: backslash at the end"},
		{name: "hash inside a word", in: head + "\toption fallback direct#x\n", wantErr: `line 4: '#' inside a word`},
		{name: "semicolon inside a word", in: head + "\toption fallback direct;\n", wantErr: `line 4: ';' inside a word`},
		{name: "DOS line ending", in: "config mcpagent\r\n", wantErr: "line 1: carriage return"},
		{name: "control character", in: "config mcpagent 'ma\x00in'\n", wantErr: "line 1: control character 0x00"},
		{name: "package statement", in: "package mcpagent\n" + head, wantErr: `line 1: "package" is not config, option or list`},
		{name: "option before a section", in: "option fallback direct\n", wantErr: "line 1: option before the first config section"},
		{name: "option without value", in: head + "\toption fallback\n", wantErr: "line 4: want option NAME 'VALUE'"},
		{name: "option with two values", in: head + "\toption fallback direct reject\n", wantErr: "line 4: want option NAME 'VALUE'"},
		{name: "config with too many words", in: "config mcpagent a b\n", wantErr: "line 1: want config TYPE"},
		{name: "bad section name", in: "config uplink 'lte-1'\n", wantErr: `line 1: "lte-1" is not a section name`},
		{name: "bad option name", in: head + "\toption 'fall-back' direct\n", wantErr: `line 4: "fall-back" is not an option name`},
		{name: "section name twice", in: head + uplink + uplink, wantErr: `line 6: section "dsl" is already defined on line 4`},

		// Mapping.
		{name: "unknown option names it", in: head + "\toption fallbak direct\n", wantErr: `line 4: config mcpagent: unknown option "fallbak"`},
		{name: "unknown uplink option", in: head + "config uplink 'dsl'\n\toption ifname wan\n", wantErr: `line 5: config uplink: unknown option "ifname"`},
		{name: "YAML spelling is not an option", in: head + "\tlist lan_interfaces lan0\n", wantErr: `unknown option "lan_interfaces"`},
		{name: "unknown section type", in: head + "config upstream 'x'\n", wantErr: `line 4: unknown section type "upstream"`},
		{name: "two mcpagent sections", in: head + "config mcpagent\n", wantErr: "line 4: a second config mcpagent section (the first is on line 1)"},
		{name: "list written as option", in: head + "\toption lan_interface br-guest\n", wantErr: "line 4: lan_interface is a list"},
		{name: "option written as list", in: head + "\tlist fallback direct\n", wantErr: "line 4: fallback takes one value"},
		{name: "option set twice", in: head + "\toption fallback direct\n\toption fallback reject\n", wantErr: "line 5: option fallback is already set on line 4"},
		{name: "empty value", in: head + "\toption log_level ''\n", wantErr: "line 4: log_level: empty value"},
		{name: "bad boolean", in: head + "\toption enabled 'maybe'\n", wantErr: `line 4: enabled: "maybe" is not a boolean`},
		{name: "bad duration", in: head + "\toption leg_timeout '3'\n", wantErr: `line 4: leg_timeout: "3" is not a duration`},
		{name: "bad port", in: head + "\toption mcp_port '65536'\n", wantErr: `line 4: mcp_port: "65536" is not a number from 0 to 65535`},
		{name: "bad mask", in: head + "\toption netfilter_mark_mask 'ff'\n", wantErr: `line 4: netfilter_mark_mask: "ff" is not a 32-bit number`},
		{name: "bad table", in: head + "\toption routing_table_base '1e3'\n", wantErr: `line 4: routing_table_base: "1e3" is not a whole number`},
		{name: "bad network", in: head + "config uplink 'dsl'\n\toption network 'wan-1'\n", wantErr: `line 5: network: "wan-1" is not a netifd interface name`},

		// Parse's checks, naming what the UCI file wrote.
		{name: "no uplinks", in: head, wantErr: "config uplink: between 1 and 8 are needed, got 0"},
		{name: "anonymous uplink without a name", in: head + "config uplink\n\toption interface wan\n",
			wantErr: `config uplink (line 4) option name: "" is not a name`},
		{name: "uplink on a LAN interface", in: head + uplink + "config uplink 'lte'\n\toption interface 'br-lan'\n",
			wantErr: `config uplink 'lte' (line 6) option interface: "br-lan" is already in list lan_interface`},
		{name: "two uplinks on one interface", in: head + uplink + "config uplink 'lte'\n\toption interface 'wan'\n",
			wantErr: `config uplink 'lte' (line 6) option interface: "wan" is already in config uplink 'dsl' (line 4)`},
		{name: "no MCP and dhcp off", in: "config mcpagent\n\tlist lan_interface br-lan\n\toption mcp_dhcp_source off\n" + uplink,
			wantErr: "list mcp_server: at least one downstream MCP is needed when option mcp_dhcp_source is off"},
		{name: "v4 option out of range", in: head + "\toption mcp_dhcp_v4_option 256\n" + uplink, wantErr: "line 4: mcp_dhcp_v4_option"},
		{name: "MCP not an address", in: "config mcpagent\n\tlist lan_interface br-lan\n\tlist mcp_server mcp.example\n" + uplink,
			wantErr: `list mcp_server: "mcp.example" is not an address`},
		{name: "mask not a run", in: head + "\toption netfilter_mark_mask '0x101'\n" + uplink, wantErr: "option netfilter_mark_mask: 0x101 must be one run"},
		{name: "reserved table", in: head + "\toption routing_table_base '250'\n" + uplink, wantErr: "option routing_table_base: 250"},
		{name: "leg timeout too long", in: head + "\toption leg_timeout '2m'\n" + uplink, wantErr: "option leg_timeout: 2m0s is outside"},
		{name: "bad fallback", in: head + "\toption fallback 'maybe'\n" + uplink, wantErr: `option fallback: "maybe" is neither`},
		{name: "bad log level", in: head + "\toption log_level 'loud'\n" + uplink, wantErr: `option log_level: "loud" is not debug`},
		{name: "bad role", in: head + uplink + "\toption role 'primary'\n",
			wantErr: `config uplink 'dsl' (line 4) option role: "primary" is not active, backup or on-demand`},
		{name: "bad community", in: head + uplink + "\toption community 'a b'\n", wantErr: `option community: "a b" is not a name`},
		{name: "too many subflows", in: head + "\toption max_subflows '9'\n" + uplink, wantErr: "option max_subflows: 9 is outside 1..8"},
		{name: "probe timeout past the interval", in: head + "\toption probe_interval '1s'\n\toption probe_timeout '2s'\n" + uplink,
			wantErr: "option probe_timeout: 2s is outside [10ms, option probe_interval]"},
		{name: "bad congestion control", in: head + "\toption congestion_control 'BBR!'\n" + uplink, wantErr: `option congestion_control: "BBR!" is not`},
		{name: "bad interface name", in: head + "config uplink 'dsl'\n\toption interface 'a-very-long-interface'\n",
			wantErr: `config uplink 'dsl' (line 4) option interface: "a-very-long-interface" is not an interface name`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseUCI([]byte(tt.in))
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

func wantUplinks(want ...Uplink) func(t *testing.T, c *Config) {
	for i := range want {
		if want[i].Role == "" {
			want[i].Role = "active"
		}
	}
	return func(t *testing.T, c *Config) {
		t.Helper()
		if diff := cmp.Diff(want, c.Uplinks); diff != "" {
			t.Errorf("uplinks (-want +got):\n%s", diff)
		}
	}
}

func TestParseUCITooLarge(t *testing.T) {
	b := []byte("config mcpagent\n" + strings.Repeat("#", maxFileSize))
	if _, err := ParseUCI(b); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("err = %v, want a size error", err)
	}
}

// formatUCI writes c as a UCI file, every setting explicit and every value
// quoted the way uci export does.
func formatUCI(c *Config) string {
	q := func(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
	var b strings.Builder
	b.WriteString("config mcpagent\n")
	for _, v := range c.LANInterfaces {
		fmt.Fprintf(&b, "\tlist lan_interface %s\n", q(v))
	}
	for _, v := range c.MCP.Servers {
		fmt.Fprintf(&b, "\tlist mcp_server %s\n", q(v))
	}
	fmt.Fprintf(&b, "\toption mcp_port '%d'\n", c.MCP.Port)
	fmt.Fprintf(&b, "\toption mcp_mode %s\n", q(string(c.MCP.Mode)))
	if c.MCP.SourceAddress != "" {
		fmt.Fprintf(&b, "\toption mcp_source_address %s\n", q(c.MCP.SourceAddress))
	}
	fmt.Fprintf(&b, "\toption leg_timeout '%s'\n", time.Duration(c.LegTimeout))
	fmt.Fprintf(&b, "\toption idle_timeout '%s'\n", time.Duration(c.IdleTimeout))
	fmt.Fprintf(&b, "\toption fallback %s\n", q(string(c.Fallback)))
	fmt.Fprintf(&b, "\toption log_level %s\n", q(c.LogLevel))
	fmt.Fprintf(&b, "\toption netfilter_queue '%d'\n", c.Netfilter.Queue)
	fmt.Fprintf(&b, "\toption netfilter_tproxy_port '%d'\n", c.Netfilter.TProxyPort)
	fmt.Fprintf(&b, "\toption netfilter_mark_mask '%#x'\n", uint32(c.Netfilter.MarkMask))
	fmt.Fprintf(&b, "\toption routing_table_base '%d'\n", c.Routing.TableBase)
	fmt.Fprintf(&b, "\toption routing_rule_pref '%d'\n", c.Routing.RulePref)
	for _, u := range c.Uplinks {
		fmt.Fprintf(&b, "\nconfig uplink\n\toption name %s\n\toption interface %s\n", q(u.Name), q(u.Interface))
	}
	return b.String()
}

// FuzzParseUCI checks that no input panics, that every accepted file is
// fully resolved, and that an accepted Config written back as UCI reads
// back the same (decode → encode → decode).
func FuzzParseUCI(f *testing.F) {
	// The smallest file the agent accepts.
	f.Add([]byte("config mcpagent\n\tlist lan_interface lan0\n\tlist mcp_server 198.51.100.1\nconfig uplink dsl\n\toption interface wan0\n"))
	// Every option, as uci export writes it.
	f.Add([]byte("config mcpagent 'main'\n\toption enabled '1'\n\tlist lan_interface 'br-lan'\n\tlist mcp_server '[2001:db8::1]:1'\n" +
		"\toption mcp_port '7000'\n\toption leg_timeout '1ms'\n\toption idle_timeout '1h'\n\toption fallback 'reject'\n" +
		"\toption log_level 'warn'\n\toption netfilter_queue '1'\n\toption netfilter_tproxy_port '2'\n" +
		"\toption netfilter_mark_mask '0xc0000000'\n\toption routing_table_base '1000'\n\toption routing_rule_pref '100'\n\n" +
		"config uplink\n\toption name 'it'\\''s'\n\toption interface 'wwan0'\n\toption network 'lte'\n"))
	// Word splitting: concatenated quotes, escapes, a comment.
	f.Add([]byte("config mcpagent\n\tlist lan_interface \"l\\a\"'n'0 # c\n"))
	// Broken: an open quote, a continuation, a stray statement.
	f.Add([]byte("config mcpagent 'x\n\\\npackage p\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseUCI(b)
		if err != nil {
			return
		}
		if len(c.MCP.Addrs) != len(c.MCP.Servers) || c.LegTimeout <= 0 || c.Netfilter.MarkMask == 0 || len(c.Uplinks) == 0 {
			t.Fatalf("accepted an incomplete config: %+v", c)
		}
		text := formatUCI(c)
		again, err := ParseUCI([]byte(text))
		if err != nil {
			t.Fatalf("re-reading an accepted config: %v\n%s", err, text)
		}
		if diff := cmp.Diff(c, again, addrPortEqual); diff != "" {
			t.Fatalf("round trip (-first +second):\n%s\n%s", diff, text)
		}
	})
}

// TestShippedUCIHasTheDefaults: the UCI file the OpenWrt package installs
// says that its values, but for enabled and the uplinks, are the defaults;
// without its options it must decode to the same Config.
func TestShippedUCIHasTheDefaults(t *testing.T) {
	shipped, err := os.ReadFile("../openwrt/mcpagent/files/mcpagent.config")
	if err != nil {
		t.Fatal(err)
	}
	withValues, err := ParseUCI(shipped)
	if err != nil {
		t.Fatal(err)
	}
	// The options of the main section, which comes first, up to the
	// uplinks' sections; lists stay.
	main, uplinks, ok := strings.Cut(string(shipped), "\nconfig uplink")
	if !ok {
		t.Fatal("the shipped file has no uplink section")
	}
	option := regexp.MustCompile(`(?m)^\toption .*\n`)
	if n := len(option.FindAllString(main, -1)); n < 10 {
		t.Fatalf("only %d options in the main section", n)
	}
	defaults, err := ParseUCI([]byte(option.ReplaceAllString(main, "") + "\nconfig uplink" + uplinks))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(defaults, withValues, addrPortEqual); diff != "" {
		t.Errorf("the shipped file's values differ from the defaults (-defaults +shipped):\n%s", diff)
	}
}
