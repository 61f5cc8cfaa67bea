package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/mcpagent/mcpagent/dhcpopt"
	"github.com/mcpagent/mcpagent/policy"
)

// Fallback says what happens to a LAN connection that cannot be converted
// (no usable MCP, or the leg was not up within LegTimeout).
type Fallback string

const (
	// FallbackDirect lets the SYN through unconverted: plain routing over
	// the primary uplink. The household's Internet keeps working.
	FallbackDirect Fallback = "direct"
	// FallbackReject answers the SYN with a TCP reset.
	FallbackReject Fallback = "reject"
)

// FirewallBackend says which netfilter front end loads the agent's rules
// (package firewall).
type FirewallBackend string

const (
	// FirewallAuto uses nftables when the nft program exists and the
	// kernel accepts the agent's nftables rules, and iptables otherwise.
	FirewallAuto FirewallBackend = "auto"
	// FirewallNFTables uses a table of the agent's own, beside OpenWrt's
	// fw4 (22.03 and later).
	FirewallNFTables FirewallBackend = "nftables"
	// FirewallIPTables uses iptables-restore (legacy or nf_tables based).
	FirewallIPTables FirewallBackend = "iptables"
)

// Defaults for the settings a file may leave out.
const (
	DefaultMCPPort     = 5124
	DefaultLegTimeout  = 1500 * time.Millisecond
	DefaultIdleTimeout = 2 * time.Hour
	DefaultQueue       = 5124
	DefaultTProxyPort  = 5124
	DefaultMarkMask    = 0x0f000000
	DefaultTableBase   = 5124
	DefaultRulePref    = 900
	// DefaultControlSocket is where the agent listens for its local
	// clients (the DHCP hooks).
	DefaultControlSocket = "/var/run/mcpagent.sock"
	// DefaultDHCPV4Option and DefaultDHCPV6Option are the option codes of
	// the MCP list.
	DefaultDHCPV4Option = dhcpopt.DefaultV4Code
	DefaultDHCPV6Option = dhcpopt.DefaultV6Code
	// DefaultInformInterval is how often DHCPSourceInform asks again.
	DefaultInformInterval = 10 * time.Minute
	// DefaultProbeInterval, DefaultProbeTimeout and DefaultProbeFailures
	// configure the uplinks' health probes.
	DefaultProbeInterval = 2 * time.Second
	DefaultProbeTimeout  = time.Second
	DefaultProbeFailures = policy.DefaultProbeFailures
)

// DHCPSource says where the agent learns the MCP list when mcp.servers is
// empty.
type DHCPSource string

const (
	// DHCPSourceNetifd takes the options from the system's DHCP clients
	// (OpenWrt's netifd runs udhcpc and odhcp6c), whose hook scripts hand
	// them to the agent over its control socket.
	DHCPSourceNetifd DHCPSource = "netifd"
	// DHCPSourceInform makes the agent ask for the options itself, with
	// DHCPINFORM and Information-Request on each uplink.
	DHCPSourceInform DHCPSource = "inform"
	// DHCPSourceOff learns nothing: mcp.servers is required.
	DHCPSourceOff DHCPSource = "off"
)

// MaxUplinks bounds the uplink list: the kernel allows at most 8 subflows
// per MPTCP connection.
const MaxUplinks = 8

// Config is the agent's configuration. Parse and ParseUCI fill every field.
type Config struct {
	LANInterfaces []string `yaml:"lan_interfaces"`
	Uplinks       []Uplink `yaml:"uplinks"`
	MCP           MCP      `yaml:"mcp"`
	LegTimeout    Duration `yaml:"leg_timeout"`
	// LegFastOpen puts MP_CONVERT in the SYN payload of each leg (TCP
	// Fast Open), as the plain-mode draft describes, instead of in the
	// first segment after the handshake. Off by default: Linux (seen on
	// 6.18) stalls Multipath TCP connections opened with SYN data once a
	// second subflow joins, which defeats aggregation.
	LegFastOpen bool            `yaml:"leg_fast_open"`
	IdleTimeout Duration        `yaml:"idle_timeout"`
	Fallback    Fallback        `yaml:"fallback"`
	Firewall    FirewallBackend `yaml:"firewall"`
	Netfilter   Netfilter       `yaml:"netfilter"`
	Routing     Routing         `yaml:"routing"`
	LogLevel    string          `yaml:"log_level"`
	// ControlSocket is the path of the agent's unix socket for local
	// clients (mcpagent dhcp-event).
	ControlSocket string `yaml:"control_socket"`
	// MaxSubflows bounds the subflows of one leg, the initial one
	// included (RFC 8041 section 3.4); zero means one per uplink.
	MaxSubflows int `yaml:"max_subflows"`
	// CongestionControl is the congestion control of every leg's subflows
	// (TCP_CONGESTION), e.g. "cubic" or "bbr"; empty keeps the system's.
	CongestionControl string `yaml:"congestion_control"`
	// Probe configures the uplinks' health probes toward the MCP.
	Probe Probe `yaml:"probe"`
}

// Probe configures the health probe of each uplink: a TCP handshake from
// the uplink's address to the first MCP in use, every Interval, which must
// complete within Timeout. Failures probes in a row that fail, with no
// leg's initial subflow coming up over the uplink in between, make the
// uplink unhealthy: it carries no subflow until a probe succeeds again.
type Probe struct {
	Interval Duration `yaml:"interval"`
	Timeout  Duration `yaml:"timeout"`
	Failures int      `yaml:"failures"`
}

// Uplink is one WAN interface the agent may open subflows over.
type Uplink struct {
	Name      string `yaml:"name"`
	Interface string `yaml:"interface"`
	// Role is active (the default), backup or on-demand (policy.Role).
	Role string `yaml:"role"`
	// Priority orders the uplinks, higher first, for the initial subflow
	// and for failover; ties keep file order.
	Priority int `yaml:"priority"`
	// Community names a physical path shared with other uplinks: of those,
	// at most one carries subflows. Empty: none.
	Community string `yaml:"community"`
}

// PolicyRole returns Role as the policy package spells it; Parse accepts
// only valid roles.
func (u Uplink) PolicyRole() policy.Role {
	r, _ := policy.ParseRole(u.Role)
	return r
}

// MCPMode says where the downstream MCP sits.
type MCPMode string

const (
	// MCPModeOffPath addresses each leg to an MCP of the list, with the
	// real destination in MP_CONVERT (draft-boucadair-mptcp-plain-mode
	// section 6.2.2).
	MCPModeOffPath MCPMode = "off-path"
	// MCPModeOnPath addresses each leg to the real destination with an
	// empty MP_CONVERT in its SYN (always TCP Fast Open); an MCP on the
	// forwarding path terminates it (sections 6.2.1 and 7). No MCP list
	// is needed.
	MCPModeOnPath MCPMode = "on-path"
)

// MCP lists the downstream MCPs.
type MCP struct {
	// Mode is MCPModeOffPath (the default) or MCPModeOnPath.
	Mode MCPMode `yaml:"mode"`
	// Servers are tried in order; a server written without a port uses
	// Port. Unused on path.
	Servers []string `yaml:"servers"`
	Port    uint16   `yaml:"port"`
	// SourceAddress, if set, goes in a source MP_CONVERT option (D bit
	// set) of every leg, for an MCP that connects to the server from that
	// address, e.g. the customer's public DSL address. Unset, the legs
	// say nothing about the customer's network (section 9.1).
	SourceAddress string `yaml:"source_address"`
	// DHCP says how the list is learned when Servers is empty.
	DHCP DHCP `yaml:"dhcp"`
	// Addrs is Servers resolved against Port; it is filled by Parse and is
	// not a key of the file.
	Addrs []netip.AddrPort `yaml:"-"`
}

// DHCP configures learning the MCP list from the ISP's DHCP servers.
type DHCP struct {
	Source DHCPSource `yaml:"source"`
	// V4Option and V6Option are the option codes of the MCP list.
	V4Option uint8  `yaml:"v4_option"`
	V6Option uint16 `yaml:"v6_option"`
	// InformInterval is how often DHCPSourceInform asks on each uplink,
	// besides at start and when an uplink comes up.
	InformInterval Duration `yaml:"inform_interval"`
}

// Source returns SourceAddress parsed and unmapped, or the zero Addr if it
// is unset or invalid (Parse accepts only a valid one).
func (m MCP) Source() netip.Addr {
	a, err := netip.ParseAddr(m.SourceAddress)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}
	}
	return a.Unmap()
}

// Learn reports whether the agent learns its MCP list over DHCP: no
// static server is configured and the source is not off.
func (m MCP) Learn() bool { return len(m.Servers) == 0 && m.DHCP.Source != DHCPSourceOff }

// Netfilter holds the numbers the agent's firewall rules use. The defaults
// suit OpenWrt: the mark bits avoid fw4's and mwan3's (0x3f00).
type Netfilter struct {
	Queue      uint16 `yaml:"queue"`
	TProxyPort uint16 `yaml:"tproxy_port"`
	MarkMask   Hex32  `yaml:"mark_mask"`
}

// Routing holds the routing table and rule preference bases of the agent.
type Routing struct {
	// TableBase is the TPROXY table; uplink i uses TableBase+1+i.
	TableBase int `yaml:"table_base"`
	// RulePref is the preference of the agent's first rule; its rules use
	// RulePref..RulePref+99, before the main table (32766).
	RulePref int `yaml:"rule_pref"`
}

// Duration is a time.Duration written as "1.5s" or "200ms".
type Duration time.Duration

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if n.Kind != yaml.ScalarNode || err != nil {
		return fmt.Errorf("line %d: %q is not a duration such as 1.5s", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// Hex32 is a 32-bit value that may be written in hex (0x0f000000).
type Hex32 uint32

// UnmarshalYAML implements yaml.Unmarshaler.
func (h *Hex32) UnmarshalYAML(n *yaml.Node) error {
	v, err := strconv.ParseUint(n.Value, 0, 32)
	if n.Kind != yaml.ScalarNode || err != nil {
		return fmt.Errorf("line %d: %q is not a 32-bit number", n.Line, n.Value)
	}
	*h = Hex32(v)
	return nil
}

// maxFileSize bounds what Parse reads: a real configuration is a few
// hundred bytes.
const maxFileSize = 1 << 20

// Load reads and parses the YAML file at path.
func Load(path string) (*Config, error) { return load(path, Parse) }

// LoadUCI reads and parses the OpenWrt UCI file at path (see ParseUCI).
func LoadUCI(path string) (*Config, error) { return load(path, ParseUCI) }

func load(path string, parse func([]byte) (*Config, error)) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", path, err)
	}
	c, err := parse(b)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes a YAML document, fills defaults and checks every setting.
func Parse(b []byte) (*Config, error) {
	if len(b) > maxFileSize {
		return nil, fmt.Errorf("larger than %d bytes", maxFileSize)
	}
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty")
		}
		return nil, err
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one YAML document")
	}
	c.fillDefaults()
	if err := c.check(yamlKey); err != nil {
		return nil, err
	}
	return &c, nil
}

// keyNamer spells a setting, given by its YAML path ("mcp.servers",
// "uplinks[1].interface"), the way the file being checked names it, so that
// an error names what the user wrote.
type keyNamer func(yamlPath string) string

func yamlKey(path string) string { return path }

func (c *Config) fillDefaults() {
	if c.MCP.Mode == "" {
		c.MCP.Mode = MCPModeOffPath
	}
	if c.MCP.Port == 0 {
		c.MCP.Port = DefaultMCPPort
	}
	if c.MCP.DHCP.Source == "" {
		c.MCP.DHCP.Source = DHCPSourceNetifd
	}
	if c.MCP.DHCP.V4Option == 0 {
		c.MCP.DHCP.V4Option = DefaultDHCPV4Option
	}
	if c.MCP.DHCP.V6Option == 0 {
		c.MCP.DHCP.V6Option = DefaultDHCPV6Option
	}
	if c.MCP.DHCP.InformInterval == 0 {
		c.MCP.DHCP.InformInterval = Duration(DefaultInformInterval)
	}
	if c.ControlSocket == "" {
		c.ControlSocket = DefaultControlSocket
	}
	if c.LegTimeout == 0 {
		c.LegTimeout = Duration(DefaultLegTimeout)
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = Duration(DefaultIdleTimeout)
	}
	if c.Fallback == "" {
		c.Fallback = FallbackDirect
	}
	if c.Firewall == "" {
		c.Firewall = FirewallAuto
	}
	if c.Netfilter.Queue == 0 {
		c.Netfilter.Queue = DefaultQueue
	}
	if c.Netfilter.TProxyPort == 0 {
		c.Netfilter.TProxyPort = DefaultTProxyPort
	}
	if c.Netfilter.MarkMask == 0 {
		c.Netfilter.MarkMask = DefaultMarkMask
	}
	if c.Routing.TableBase == 0 {
		c.Routing.TableBase = DefaultTableBase
	}
	if c.Routing.RulePref == 0 {
		c.Routing.RulePref = DefaultRulePref
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	for i := range c.Uplinks {
		if c.Uplinks[i].Role == "" {
			c.Uplinks[i].Role = policy.RoleActive.String()
		}
	}
	if c.MaxSubflows == 0 {
		c.MaxSubflows = len(c.Uplinks)
	}
	if c.Probe.Interval == 0 {
		c.Probe.Interval = Duration(DefaultProbeInterval)
	}
	if c.Probe.Timeout == 0 {
		c.Probe.Timeout = Duration(DefaultProbeTimeout)
	}
	if c.Probe.Failures == 0 {
		c.Probe.Failures = DefaultProbeFailures
	}
}

// ifNameRE matches a Linux interface name (IFNAMSIZ-1 characters, no '/',
// whitespace or ':').
var ifNameRE = regexp.MustCompile(`^[A-Za-z0-9_.@-]{1,15}$`)

// communityRE matches a community name; congestionRE a congestion control
// algorithm's name (TCP_CA_NAME_MAX is 16 with the NUL).
var (
	communityRE  = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)
	congestionRE = regexp.MustCompile(`^[a-z0-9_]{1,15}$`)
)

func (c *Config) check(key keyNamer) error {
	if len(c.LANInterfaces) == 0 {
		return fmt.Errorf("%s: at least one interface is needed", key("lan_interfaces"))
	}
	seenIf := map[string]string{}
	for _, name := range c.LANInterfaces {
		if !ifNameRE.MatchString(name) {
			return fmt.Errorf("%s: %q is not an interface name", key("lan_interfaces"), name)
		}
		if seenIf[name] != "" {
			return fmt.Errorf("%s: %q listed twice", key("lan_interfaces"), name)
		}
		seenIf[name] = key("lan_interfaces")
	}
	if len(c.Uplinks) == 0 || len(c.Uplinks) > MaxUplinks {
		return fmt.Errorf("%s: between 1 and %d are needed, got %d", key("uplinks"), MaxUplinks, len(c.Uplinks))
	}
	names := map[string]bool{}
	for i, u := range c.Uplinks {
		path := fmt.Sprintf("uplinks[%d]", i)
		if u.Name == "" || strings.ContainsAny(u.Name, " \t\n") {
			return fmt.Errorf("%s: %q is not a name", key(path+".name"), u.Name)
		}
		if names[u.Name] {
			return fmt.Errorf("%s: %q used twice", key(path+".name"), u.Name)
		}
		names[u.Name] = true
		if !ifNameRE.MatchString(u.Interface) {
			return fmt.Errorf("%s: %q is not an interface name", key(path+".interface"), u.Interface)
		}
		if prev := seenIf[u.Interface]; prev != "" {
			return fmt.Errorf("%s: %q is already in %s", key(path+".interface"), u.Interface, prev)
		}
		seenIf[u.Interface] = key(path)
		if _, err := policy.ParseRole(u.Role); err != nil {
			return fmt.Errorf("%s: %w", key(path+".role"), err)
		}
		if u.Community != "" && !communityRE.MatchString(u.Community) {
			return fmt.Errorf("%s: %q is not a name of letters, digits, '_' and '-'", key(path+".community"), u.Community)
		}
	}
	if c.MaxSubflows < 1 || c.MaxSubflows > MaxUplinks {
		return fmt.Errorf("%s: %d is outside 1..%d", key("max_subflows"), c.MaxSubflows, MaxUplinks)
	}
	if cc := c.CongestionControl; cc != "" && !congestionRE.MatchString(cc) {
		return fmt.Errorf("%s: %q is not a congestion control name", key("congestion_control"), cc)
	}
	if d := time.Duration(c.Probe.Interval); d < 100*time.Millisecond || d > time.Hour {
		return fmt.Errorf("%s: %v is outside [100ms, 1h]", key("probe.interval"), d)
	}
	if d := time.Duration(c.Probe.Timeout); d < 10*time.Millisecond || d > time.Duration(c.Probe.Interval) {
		return fmt.Errorf("%s: %v is outside [10ms, %s]", key("probe.timeout"), d, key("probe.interval"))
	}
	if n := c.Probe.Failures; n < 1 || n > 100 {
		return fmt.Errorf("%s: %d is outside 1..100", key("probe.failures"), n)
	}
	switch c.MCP.DHCP.Source {
	case DHCPSourceNetifd, DHCPSourceInform, DHCPSourceOff:
	default:
		return fmt.Errorf("%s: %q is not %s, %s or %s", key("mcp.dhcp.source"), c.MCP.DHCP.Source, DHCPSourceNetifd, DHCPSourceInform, DHCPSourceOff)
	}
	switch c.MCP.Mode {
	case MCPModeOffPath, MCPModeOnPath:
	default:
		return fmt.Errorf("%s: %q is not %s or %s", key("mcp.mode"), c.MCP.Mode, MCPModeOffPath, MCPModeOnPath)
	}
	if c.MCP.SourceAddress != "" {
		if a := c.MCP.Source(); !a.IsGlobalUnicast() {
			return fmt.Errorf("%s: %q is not a unicast IP address", key("mcp.source_address"), c.MCP.SourceAddress)
		}
	}
	if len(c.MCP.Servers) == 0 && c.MCP.DHCP.Source == DHCPSourceOff && c.MCP.Mode == MCPModeOffPath {
		return fmt.Errorf("%s: at least one downstream MCP is needed when %s is %s", key("mcp.servers"), key("mcp.dhcp.source"), DHCPSourceOff)
	}
	// Pad and End are no options (RFC 2132 §3.1, §3.2); DHCPv6 code 0 is
	// reserved (zero means the default, filled in above).
	if c.MCP.DHCP.V4Option == 255 {
		return fmt.Errorf("%s: 255 is the end option, not a code", key("mcp.dhcp.v4_option"))
	}
	if d := time.Duration(c.MCP.DHCP.InformInterval); d < 10*time.Second {
		return fmt.Errorf("%s: %v is shorter than 10s", key("mcp.dhcp.inform_interval"), d)
	}
	if !filepath.IsAbs(c.ControlSocket) || len(c.ControlSocket) > maxSocketPath {
		return fmt.Errorf("%s: %q is not an absolute path of at most %d bytes", key("control_socket"), c.ControlSocket, maxSocketPath)
	}
	for _, s := range c.MCP.Servers {
		ap, err := parseServer(s, c.MCP.Port)
		if err != nil {
			return fmt.Errorf("%s: %w", key("mcp.servers"), err)
		}
		c.MCP.Addrs = append(c.MCP.Addrs, ap)
	}
	if d := time.Duration(c.LegTimeout); d < 0 || d > time.Minute {
		return fmt.Errorf("%s: %v is outside (0, 1m]", key("leg_timeout"), d)
	}
	if d := time.Duration(c.IdleTimeout); d < 0 {
		return fmt.Errorf("%s: %v is negative", key("idle_timeout"), d)
	}
	switch c.Fallback {
	case FallbackDirect, FallbackReject:
	default:
		return fmt.Errorf("%s: %q is neither %q nor %q", key("fallback"), c.Fallback, FallbackDirect, FallbackReject)
	}
	switch c.Firewall {
	case FirewallAuto, FirewallNFTables, FirewallIPTables:
	default:
		return fmt.Errorf("%s: %q is not %s, %s or %s", key("firewall"), c.Firewall, FirewallAuto, FirewallNFTables, FirewallIPTables)
	}
	if m := uint32(c.Netfilter.MarkMask); m == 0 || (m>>bits.TrailingZeros32(m))&(m>>bits.TrailingZeros32(m)+1) != 0 || bits.OnesCount32(m) < 2 {
		return fmt.Errorf("%s: %#x must be one run of at least two bits", key("netfilter.mark_mask"), m)
	}
	if t := c.Routing.TableBase; t < 1 || t <= 255 && t+MaxUplinks >= 252 {
		return fmt.Errorf("%s: %d: tables %d..%d must avoid the kernel's reserved tables (0, 252-255)", key("routing.table_base"), t, t, t+MaxUplinks)
	}
	if c.Routing.RulePref < 1 || c.Routing.RulePref+100 > 32766 {
		return fmt.Errorf("%s: %d must leave room for 100 rules before the main table (32766)", key("routing.rule_pref"), c.Routing.RulePref)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("%s: %q is not debug, info, warn or error", key("log_level"), c.LogLevel)
	}
	return nil
}

// maxSocketPath is the longest unix socket path Linux accepts: sun_path
// holds 108 bytes with the terminating NUL.
const maxSocketPath = 107

// Marks returns the packet mark values the agent uses, each within
// MarkMask: convert (TPROXY a released SYN), reject (answer a released SYN
// with a reset) and tproxy (route packets of converted connections to the
// local listener).
func (n Netfilter) Marks() (convert, reject, tproxy uint32) {
	shift := bits.TrailingZeros32(uint32(n.MarkMask))
	return 1 << shift, 2 << shift, 3 << shift
}

// parseServer reads "ADDR", "ADDR:PORT" or "[V6]:PORT".
func parseServer(s string, port uint16) (netip.AddrPort, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return checkServer(netip.AddrPortFrom(a, port), s)
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not an address or address:port", s)
	}
	return checkServer(ap, s)
}

func checkServer(ap netip.AddrPort, s string) (netip.AddrPort, error) {
	a := ap.Addr()
	if a.Zone() != "" || !a.Unmap().IsGlobalUnicast() {
		return netip.AddrPort{}, fmt.Errorf("%q is not a unicast address", s)
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("%q: port 0", s)
	}
	return netip.AddrPortFrom(a.Unmap(), ap.Port()), nil
}
