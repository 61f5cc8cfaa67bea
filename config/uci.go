package config

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// ParseUCI decodes an OpenWrt UCI file (/etc/config/mcpagent), fills
// defaults and checks every setting exactly as Parse does.
//
// The file holds one `config mcpagent` section, whose options carry the
// top-level YAML keys (a nested key a.b is written a_b, a list takes the
// singular: list lan_interface, list mcp_server), and one `config uplink`
// section per uplink, in order, named by its section name or by option
// name. Two options exist for the init script only and are checked but
// otherwise ignored: enabled (mcpagent) and network (uplink, the netifd
// interface whose events reload the service).
//
// The syntax is the subset of libuci's that `uci export` and `uci commit`
// write: one statement per line (config TYPE ['NAME'], option NAME VALUE,
// list NAME VALUE), blank lines, and comments from a '#' at the start of a
// word. A word is unquoted text, '…' (taken literally) and "…" (backslash
// escapes the next character) written back to back, the way uci export
// quotes a value holding a single quote:
//
//	option name 'it'\''s'
//
// Anything else — an unknown section type or option, an option given
// twice, a list written as an option, an empty value, a line continuation,
// a control character — is an error that names the line.
func ParseUCI(b []byte) (*Config, error) {
	if len(b) > maxFileSize {
		return nil, fmt.Errorf("larger than %d bytes", maxFileSize)
	}
	sections, err := parseUCISections(string(b))
	if err != nil {
		return nil, err
	}
	var (
		c       Config
		top     *uciSection
		uplinks []*uciSection
	)
	for _, s := range sections {
		switch s.typ {
		case "mcpagent":
			if top != nil {
				return nil, fmt.Errorf("line %d: a second config mcpagent section (the first is on line %d)", s.line, top.line)
			}
			top = s
			if err := applyUCIOptions(s, mainOptions, &c); err != nil {
				return nil, err
			}
		case "uplink":
			u := Uplink{Name: s.name}
			if err := applyUCIOptions(s, uplinkOptions, &u); err != nil {
				return nil, err
			}
			c.Uplinks = append(c.Uplinks, u)
			uplinks = append(uplinks, s)
		default:
			return nil, fmt.Errorf("line %d: unknown section type %q (want mcpagent or uplink)", s.line, s.typ)
		}
	}
	if top == nil {
		return nil, errors.New("no config mcpagent section")
	}
	c.fillDefaults()
	if err := c.check(uciKey(uplinks)); err != nil {
		return nil, err
	}
	return &c, nil
}

// uciOption is one option of a section type.
type uciOption[T any] struct {
	// yaml is the YAML key the option carries (relative to the uplink for
	// uplink options); "" marks an option only the init script reads.
	yaml string
	// list says the option is written `list NAME VALUE`, once per value.
	list bool
	// set stores a non-empty value in the section's destination.
	set func(dst *T, v string) error
}

// mainOptions are the options of the config mcpagent section; openwrt/
// README.md documents them as a table.
var mainOptions = map[string]uciOption[Config]{
	"enabled": {set: func(_ *Config, v string) error { return checkBool(v) }},
	"lan_interface": {yaml: "lan_interfaces", list: true, set: func(c *Config, v string) error {
		c.LANInterfaces = append(c.LANInterfaces, v)
		return nil
	}},
	"mcp_server": {yaml: "mcp.servers", list: true, set: func(c *Config, v string) error {
		c.MCP.Servers = append(c.MCP.Servers, v)
		return nil
	}},
	"mcp_port": {yaml: "mcp.port", set: func(c *Config, v string) error { return setUint16(&c.MCP.Port, v) }},
	"mcp_mode": {yaml: "mcp.mode", set: func(c *Config, v string) error {
		c.MCP.Mode = MCPMode(v)
		return nil
	}},
	"mcp_source_address": {yaml: "mcp.source_address", set: func(c *Config, v string) error {
		c.MCP.SourceAddress = v
		return nil
	}},
	"mcp_dhcp_source": {yaml: "mcp.dhcp.source", set: func(c *Config, v string) error {
		c.MCP.DHCP.Source = DHCPSource(v)
		return nil
	}},
	"mcp_dhcp_v4_option": {yaml: "mcp.dhcp.v4_option", set: func(c *Config, v string) error {
		n, err := strconv.ParseUint(v, 10, 8)
		if err != nil {
			return fmt.Errorf("%q is not a number from 0 to 255", v)
		}
		c.MCP.DHCP.V4Option = uint8(n)
		return nil
	}},
	"mcp_dhcp_v6_option":       {yaml: "mcp.dhcp.v6_option", set: func(c *Config, v string) error { return setUint16(&c.MCP.DHCP.V6Option, v) }},
	"mcp_dhcp_inform_interval": {yaml: "mcp.dhcp.inform_interval", set: func(c *Config, v string) error { return setDuration(&c.MCP.DHCP.InformInterval, v) }},
	"control_socket": {yaml: "control_socket", set: func(c *Config, v string) error {
		c.ControlSocket = v
		return nil
	}},
	"leg_timeout": {yaml: "leg_timeout", set: func(c *Config, v string) error { return setDuration(&c.LegTimeout, v) }},
	"leg_fast_open": {yaml: "leg_fast_open", set: func(c *Config, v string) (err error) {
		c.LegFastOpen, err = parseBool(v)
		return err
	}},
	"idle_timeout": {yaml: "idle_timeout", set: func(c *Config, v string) error { return setDuration(&c.IdleTimeout, v) }},
	"fallback": {yaml: "fallback", set: func(c *Config, v string) error {
		c.Fallback = Fallback(v)
		return nil
	}},
	"firewall": {yaml: "firewall", set: func(c *Config, v string) error {
		c.Firewall = FirewallBackend(v)
		return nil
	}},
	"log_level": {yaml: "log_level", set: func(c *Config, v string) error {
		c.LogLevel = v
		return nil
	}},
	"netfilter_queue":       {yaml: "netfilter.queue", set: func(c *Config, v string) error { return setUint16(&c.Netfilter.Queue, v) }},
	"netfilter_tproxy_port": {yaml: "netfilter.tproxy_port", set: func(c *Config, v string) error { return setUint16(&c.Netfilter.TProxyPort, v) }},
	"netfilter_mark_mask": {yaml: "netfilter.mark_mask", set: func(c *Config, v string) error {
		m, err := strconv.ParseUint(v, 0, 32)
		if err != nil {
			return fmt.Errorf("%q is not a 32-bit number", v)
		}
		c.Netfilter.MarkMask = Hex32(m)
		return nil
	}},
	"routing_table_base": {yaml: "routing.table_base", set: func(c *Config, v string) error { return setInt(&c.Routing.TableBase, v) }},
	"routing_rule_pref":  {yaml: "routing.rule_pref", set: func(c *Config, v string) error { return setInt(&c.Routing.RulePref, v) }},
	"max_subflows":       {yaml: "max_subflows", set: func(c *Config, v string) error { return setInt(&c.MaxSubflows, v) }},
	"congestion_control": {yaml: "congestion_control", set: func(c *Config, v string) error {
		c.CongestionControl = v
		return nil
	}},
	"probe_interval": {yaml: "probe.interval", set: func(c *Config, v string) error { return setDuration(&c.Probe.Interval, v) }},
	"probe_timeout":  {yaml: "probe.timeout", set: func(c *Config, v string) error { return setDuration(&c.Probe.Timeout, v) }},
	"probe_failures": {yaml: "probe.failures", set: func(c *Config, v string) error { return setInt(&c.Probe.Failures, v) }},
}

// uplinkOptions are the options of a config uplink section.
var uplinkOptions = map[string]uciOption[Uplink]{
	"name": {yaml: "name", set: func(u *Uplink, v string) error {
		u.Name = v
		return nil
	}},
	"interface": {yaml: "interface", set: func(u *Uplink, v string) error {
		u.Interface = v
		return nil
	}},
	"role": {yaml: "role", set: func(u *Uplink, v string) error {
		u.Role = v
		return nil
	}},
	"priority": {yaml: "priority", set: func(u *Uplink, v string) error { return setInt(&u.Priority, v) }},
	"community": {yaml: "community", set: func(u *Uplink, v string) error {
		u.Community = v
		return nil
	}},
	"network": {set: func(_ *Uplink, v string) error {
		if !uciNameRE.MatchString(v) {
			return fmt.Errorf("%q is not a netifd interface name (letters, digits and _)", v)
		}
		return nil
	}},
}

// uciSection is one config statement and the options that follow it.
type uciSection struct {
	typ, name string // name is "" for an anonymous section
	line      int
	values    []uciValue
}

// label names the section in messages: 'dsl' (line 12), or (line 12).
func (s *uciSection) label() string {
	if s.name == "" {
		return fmt.Sprintf("(line %d)", s.line)
	}
	return fmt.Sprintf("'%s' (line %d)", s.name, s.line)
}

// uciValue is one option or list statement.
type uciValue struct {
	name, value string
	list        bool
	line        int
}

// uciNameRE matches what libuci accepts as a section type, section name or
// option name.
var uciNameRE = regexp.MustCompile(`^[A-Za-z0-9_]+$`)

// parseUCISections reads the statements of a UCI file.
func parseUCISections(text string) ([]*uciSection, error) {
	var (
		sections []*uciSection
		cur      *uciSection
		named    = map[string]int{} // section name → line
	)
	for i, line := range strings.Split(text, "\n") {
		n := i + 1
		w, err := uciWords(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if len(w) == 0 {
			continue
		}
		switch w[0] {
		case "config":
			if len(w) != 2 && len(w) != 3 {
				return nil, fmt.Errorf("line %d: want config TYPE ['NAME']", n)
			}
			if !uciNameRE.MatchString(w[1]) {
				return nil, fmt.Errorf("line %d: %q is not a section type", n, w[1])
			}
			cur = &uciSection{typ: w[1], line: n}
			if len(w) == 3 {
				if !uciNameRE.MatchString(w[2]) {
					return nil, fmt.Errorf("line %d: %q is not a section name (letters, digits and _)", n, w[2])
				}
				if first, dup := named[w[2]]; dup {
					return nil, fmt.Errorf("line %d: section %q is already defined on line %d", n, w[2], first)
				}
				named[w[2]] = n
				cur.name = w[2]
			}
			sections = append(sections, cur)
		case "option", "list":
			if cur == nil {
				return nil, fmt.Errorf("line %d: %s before the first config section", n, w[0])
			}
			if len(w) != 3 {
				return nil, fmt.Errorf("line %d: want %s NAME 'VALUE'", n, w[0])
			}
			if !uciNameRE.MatchString(w[1]) {
				return nil, fmt.Errorf("line %d: %q is not an option name", n, w[1])
			}
			cur.values = append(cur.values, uciValue{name: w[1], value: w[2], list: w[0] == "list", line: n})
		default:
			return nil, fmt.Errorf("line %d: %q is not config, option or list", n, w[0])
		}
	}
	return sections, nil
}

// uciWords splits one line into words, dropping a trailing comment.
func uciWords(line string) ([]string, error) {
	for i := 0; i < len(line); i++ {
		switch c := line[i]; {
		case c == '\r':
			return nil, errors.New("carriage return (a DOS line ending?)")
		case c < 0x20 && c != '\t' || c == 0x7f:
			return nil, fmt.Errorf("control character %#02x", c)
		}
	}
	var words []string
	i := 0
	for {
		for i < len(line) && (line[i] == ' ' || line[i] == '\t') {
			i++
		}
		if i == len(line) || line[i] == '#' {
			return words, nil
		}
		var w strings.Builder
		for i < len(line) && line[i] != ' ' && line[i] != '\t' {
			switch c := line[i]; c {
			case '\'':
				end := strings.IndexByte(line[i+1:], '\'')
				if end < 0 {
					return nil, errors.New("unterminated ' quote")
				}
				w.WriteString(line[i+1 : i+1+end])
				i += end + 2
			case '"':
				i++
				for ; ; i++ {
					if i == len(line) {
						return nil, errors.New(`unterminated " quote`)
					}
					if line[i] == '"' {
						i++
						break
					}
					if line[i] == '\\' {
						i++
						if i == len(line) {
							return nil, errors.New(`unterminated " quote`)
						}
					}
					w.WriteByte(line[i])
				}
			case '\\':
				if i+1 == len(line) {
					return nil, errors.New("backslash at the end of the line: line continuations are not supported")
				}
				w.WriteByte(line[i+1])
				i += 2
			case '#', ';':
				// libuci would end the word here; a value that means it
				// must be quoted, so nothing is read two ways.
				return nil, fmt.Errorf("%q inside a word: quote the value, or put a blank before a comment", c)
			default:
				w.WriteByte(c)
				i++
			}
		}
		words = append(words, w.String())
	}
}

// applyUCIOptions stores the values of section s in dst.
func applyUCIOptions[T any](s *uciSection, opts map[string]uciOption[T], dst *T) error {
	first := map[string]int{} // option name → line
	for _, v := range s.values {
		o, ok := opts[v.name]
		switch {
		case !ok:
			return fmt.Errorf("line %d: config %s: unknown option %q", v.line, s.typ, v.name)
		case o.list && !v.list:
			return fmt.Errorf("line %d: %s is a list: write list %s, once per value", v.line, v.name, v.name)
		case !o.list && v.list:
			return fmt.Errorf("line %d: %s takes one value: write option %s", v.line, v.name, v.name)
		case v.value == "":
			return fmt.Errorf("line %d: %s: empty value (leave the option out for the default)", v.line, v.name)
		}
		if !o.list {
			if l, dup := first[v.name]; dup {
				return fmt.Errorf("line %d: option %s is already set on line %d", v.line, v.name, l)
			}
			first[v.name] = v.line
		}
		if err := o.set(dst, v.value); err != nil {
			return fmt.Errorf("line %d: %s: %w", v.line, v.name, err)
		}
	}
	return nil
}

// uciKey names settings the way a UCI file spells them, for check's
// errors; uplinks are the config uplink sections in order.
func uciKey(uplinks []*uciSection) keyNamer {
	return func(path string) string {
		if path == "uplinks" {
			return "config uplink"
		}
		if rest, ok := strings.CutPrefix(path, "uplinks["); ok {
			idx, field, _ := strings.Cut(rest, "]")
			i, err := strconv.Atoi(idx)
			if err != nil || i < 0 || i >= len(uplinks) {
				return path
			}
			name := "config uplink " + uplinks[i].label()
			if field = strings.TrimPrefix(field, "."); field != "" {
				name += " " + uciOptionName(uplinkOptions, field)
			}
			return name
		}
		return uciOptionName(mainOptions, path)
	}
}

// uciOptionName returns "option NAME" or "list NAME" for the option that
// carries YAML key path, or path itself when none does.
func uciOptionName[T any](opts map[string]uciOption[T], path string) string {
	for name, o := range opts {
		if o.yaml != path {
			continue
		}
		if o.list {
			return "list " + name
		}
		return "option " + name
	}
	return path
}

// checkBool accepts what OpenWrt's config_get_bool understands.
func checkBool(v string) error {
	_, err := parseBool(v)
	return err
}

// parseBool reads a UCI boolean the way OpenWrt's config_get_bool does.
func parseBool(v string) (bool, error) {
	switch v {
	case "1", "on", "true", "yes", "enabled":
		return true, nil
	case "0", "off", "false", "no", "disabled":
		return false, nil
	}
	return false, fmt.Errorf("%q is not a boolean (1, yes, on, true, enabled or 0, no, off, false, disabled)", v)
}

func setUint16(dst *uint16, v string) error {
	n, err := strconv.ParseUint(v, 10, 16)
	if err != nil {
		return fmt.Errorf("%q is not a number from 0 to 65535", v)
	}
	*dst = uint16(n)
	return nil
}

func setInt(dst *int, v string) error {
	n, err := strconv.Atoi(v)
	if err != nil {
		return fmt.Errorf("%q is not a whole number", v)
	}
	*dst = n
	return nil
}

func setDuration(dst *Duration, v string) error {
	d, err := time.ParseDuration(v)
	if err != nil {
		return fmt.Errorf("%q is not a duration such as 1.5s", v)
	}
	*dst = Duration(d)
	return nil
}
