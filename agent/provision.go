package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"

	"github.com/mcpagent/mcpagent/config"
	"github.com/mcpagent/mcpagent/control"
	"github.com/mcpagent/mcpagent/dhcpopt"
	"github.com/mcpagent/mcpagent/policy"
)

// provisioner keeps the MCP list that each uplink learned over DHCP, per
// address family, and hands the policy their merge: uplinks in
// configuration order (the primary first), on each the DHCPv4 list before
// the DHCPv6 one, every MCP once. Only uplinks' options count: an event
// from a LAN interface or any other is refused. A rejected option leaves
// the list in force; an event saying the client lost its lease, or a
// reply without the option, clears that uplink's list for that family.
// It is safe for concurrent use.
type provisioner struct {
	uplinks []config.Uplink
	lan     []string
	port    uint16
	v4Code  uint8
	v6Code  uint16
	set     func([]netip.AddrPort) bool // policy.SetMCPs
	log     *slog.Logger

	mu    sync.Mutex
	lists [][2][]netip.Addr // per uplink: DHCPv4 list, DHCPv6 list
	// informErrs is, per uplink and family, the last failed inform
	// exchange's error, logged as a warning when it first appears.
	informErrs [][2]string
}

func newProvisioner(cfg *config.Config, set func([]netip.AddrPort) bool, log *slog.Logger) *provisioner {
	return &provisioner{
		uplinks: cfg.Uplinks,
		lan:     cfg.LANInterfaces,
		port:    cfg.MCP.Port,
		v4Code:  cfg.MCP.DHCP.V4Option,
		v6Code:  cfg.MCP.DHCP.V6Option,
		set:     set,
		log:     log,
		lists:   make([][2][]netip.Addr, len(cfg.Uplinks)),

		informErrs: make([][2]string, len(cfg.Uplinks)),
	}
}

// famIndex maps an address family, 4 or 6, to its slot in lists.
func famIndex(family int) int {
	if family == 6 {
		return 1
	}
	return 0
}

// uplinkOf returns the index of the uplink on device ifname, or an error
// saying why options from it are not taken.
func (p *provisioner) uplinkOf(ifname string) (int, error) {
	for i, u := range p.uplinks {
		if u.Interface == ifname {
			return i, nil
		}
	}
	if slices.Contains(p.lan, ifname) {
		return -1, fmt.Errorf("%s is a LAN interface: MCP options are taken from uplinks only", ifname)
	}
	return -1, fmt.Errorf("%s is not an uplink's interface", ifname)
}

// event takes a DHCP client's hook event (mcp.dhcp.source netifd).
func (p *provisioner) event(ev control.DHCPEvent) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.eventLocked(ev)
}

// replay takes the events that load returns, read under the lock so that
// an event arriving meanwhile is applied after them.
func (p *provisioner) replay(load func() ([]control.DHCPEvent, error)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	evs, err := load()
	if err != nil {
		p.log.Warn("saved dhcp events skipped", "err", err)
	}
	for _, ev := range evs {
		// eventLocked logs its refusals.
		p.eventLocked(ev)
	}
}

func (p *provisioner) eventLocked(ev control.DHCPEvent) error {
	i, err := p.uplinkOf(ev.Interface)
	if err != nil {
		p.log.Warn("dhcp event refused", "interface", ev.Interface, "family", ev.Family, "event", ev.Event, "reason", err)
		return err
	}
	log := p.log.With("uplink", p.uplinks[i].Name, "interface", ev.Interface, "family", ev.Family, "event", ev.Event)
	if ev.Lost() {
		p.updateLocked(i, ev.Family, nil, log)
		return nil
	}
	code := p.v6Code
	if ev.Family == 4 {
		code = uint16(p.v4Code)
	}
	hex, ok := ev.Options[code]
	if !ok {
		log.Debug("dhcp event without the mcp option", "code", code)
		p.updateLocked(i, ev.Family, nil, log)
		return nil
	}
	addrs, err := parseOption(ev.Family, hex)
	if err != nil {
		return p.rejectLocked(fmt.Errorf("option %d: %w", code, err), log)
	}
	p.updateLocked(i, ev.Family, addrs, log)
	return nil
}

// parseOption decodes an option value as a DHCP client hands it to its
// hook.
func parseOption(family int, hex string) ([]netip.Addr, error) {
	b, err := dhcpopt.FromHex(hex)
	if err != nil {
		return nil, err
	}
	if family == 4 {
		return dhcpopt.ParseV4(b)
	}
	return dhcpopt.ParseV6(b)
}

// informed takes the result of an inform exchange on uplink i
// (mcp.dhcp.source inform).
func (p *provisioner) informed(i, family int, addrs []netip.Addr, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	log := p.log.With("uplink", p.uplinks[i].Name, "interface", p.uplinks[i].Interface, "family", family, "event", "inform")
	lastErr := &p.informErrs[i][famIndex(family)]
	if err == nil || errors.Is(err, dhcpopt.ErrAbsent) {
		*lastErr = ""
	}
	var optErr *dhcpopt.Error
	switch {
	case err == nil:
		p.updateLocked(i, family, addrs, log)
	case errors.Is(err, dhcpopt.ErrAbsent):
		log.Debug("dhcp reply without the mcp option")
		p.updateLocked(i, family, nil, log)
	case errors.As(err, &optErr):
		p.rejectLocked(err, log)
	case errors.Is(err, context.Canceled):
	default:
		// No server, no address yet: nothing learned, nothing lost. A new
		// error is a warning, as it may not pass (no permission for the
		// raw socket, an interface without a hardware address); the same
		// again is not.
		if err.Error() != *lastErr {
			*lastErr = err.Error()
			log.Warn("dhcp inform got no mcp list", "err", err)
		} else {
			log.Debug("dhcp inform got no mcp list", "err", err)
		}
	}
}

// uplinkDown withdraws what uplink i learned (mcp.dhcp.source inform): its
// MCPs may not be reachable from elsewhere, and while it is down no
// exchange would ever clear its lists, as a DHCP client's deconfig event
// does for the hooks.
func (p *provisioner) uplinkDown(i int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	log := p.log.With("uplink", p.uplinks[i].Name, "interface", p.uplinks[i].Interface, "event", "down")
	for _, family := range []int{4, 6} {
		p.updateLocked(i, family, nil, log.With("family", family))
	}
}

// rejectLocked logs a rejected option and returns err.
func (p *provisioner) rejectLocked(err error, log *slog.Logger) error {
	reason := "malformed"
	var optErr *dhcpopt.Error
	if errors.As(err, &optErr) {
		reason = optErr.Reason
	}
	log.Warn("dhcp mcp option rejected; the previous list stays", "reason", reason, "err", err)
	return fmt.Errorf("mcp option rejected (%s): %w", reason, err)
}

// updateLocked sets the list of uplink i for family and hands the policy
// the merged list when it changed.
func (p *provisioner) updateLocked(i, family int, addrs []netip.Addr, log *slog.Logger) {
	slot := &p.lists[i][famIndex(family)]
	if slices.Equal(*slot, addrs) {
		return
	}
	*slot = addrs
	merged := p.mergedLocked()
	p.set(merged)
	log.Info("mcp list from dhcp", "learned", addrs, "mcps", merged)
}

// mergedLocked returns the uplinks' lists merged, with the MCP port.
func (p *provisioner) mergedLocked() []netip.AddrPort {
	var out []netip.AddrPort
	for _, fams := range p.lists {
		for _, l := range fams {
			for _, a := range l {
				ap := netip.AddrPortFrom(a, p.port)
				if !slices.Contains(out, ap) {
					out = append(out, ap)
				}
			}
		}
	}
	return out
}

// startDHCP returns the provisioner that feeds pol when the MCP list is
// learned over DHCP, else nil, and the informer that asks for it when the
// source is inform, else nil.
func startDHCP(cfg *config.Config, pol *policy.Policy, log *slog.Logger) (*provisioner, *informer) {
	if !cfg.MCP.Learn() {
		return nil, nil
	}
	prov := newProvisioner(cfg, pol.SetMCPs, log)
	if cfg.MCP.DHCP.Source != config.DHCPSourceInform {
		return prov, nil
	}
	return prov, startInformer(cfg, prov, log)
}

// dhcpHandler returns the control socket's DHCP handler: the
// provisioner's when the DHCP clients' hooks are the source, else one
// that says why events are not taken.
func dhcpHandler(cfg *config.Config, prov *provisioner) func(control.DHCPEvent) error {
	if prov != nil && cfg.MCP.DHCP.Source == config.DHCPSourceNetifd {
		return prov.event
	}
	why := fmt.Errorf("dhcp events are not taken: mcp.dhcp.source is %s", cfg.MCP.DHCP.Source)
	if !cfg.MCP.Learn() {
		why = errors.New("dhcp events are not taken: mcp.servers is set")
	}
	return func(control.DHCPEvent) error { return why }
}

// replayDHCP takes the events that the hooks saved while the agent was
// not running, when they are the source.
func replayDHCP(cfg *config.Config, prov *provisioner) {
	if prov == nil || cfg.MCP.DHCP.Source != config.DHCPSourceNetifd {
		return
	}
	dir := control.DHCPStateDir(cfg.ControlSocket)
	prov.replay(func() ([]control.DHCPEvent, error) { return control.LoadDHCP(dir) })
}

// mcpSource names where the MCP list comes from, for the log.
func mcpSource(cfg *config.Config) string {
	if !cfg.MCP.Learn() {
		return "static"
	}
	return "dhcp-" + string(cfg.MCP.DHCP.Source)
}
