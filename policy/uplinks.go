package policy

import (
	"cmp"
	"fmt"
	"slices"
)

// Role says when an uplink carries subflows (RFC 8041 section 3.3).
type Role uint8

const (
	// RoleActive uplinks always carry a subflow of every leg and share the
	// data.
	RoleActive Role = iota
	// RoleBackup uplinks carry a subflow of every leg flagged backup: it
	// carries data only while no active subflow works ("backup mode").
	RoleBackup
	// RoleOnDemand uplinks carry nothing, not even a subflow handshake,
	// while an active uplink works; they get subflows once every active
	// uplink failed ("single-path mode", break-before-make).
	RoleOnDemand
)

// ParseRole reads a role as the configuration writes it.
func ParseRole(s string) (Role, error) {
	for r := RoleActive; r <= RoleOnDemand; r++ {
		if r.String() == s {
			return r, nil
		}
	}
	return 0, fmt.Errorf("%q is not active, backup or on-demand", s)
}

func (r Role) String() string {
	switch r {
	case RoleActive:
		return "active"
	case RoleBackup:
		return "backup"
	case RoleOnDemand:
		return "on-demand"
	}
	return fmt.Sprintf("role(%d)", uint8(r))
}

// Uplink is what the uplink plan needs to know of one uplink: its
// configuration and its state now.
type Uplink struct {
	Role Role
	// Priority orders the uplinks, higher first: the initial subflow of a
	// leg goes over the first usable one, and failover follows the order
	// (draft-duchene-mptcp-add-addr section 2.3). Ties keep file order.
	Priority int
	// Community names the physical path the uplink shares with others
	// (section 2.4): of the uplinks of one community, at most one carries
	// subflows. Empty means the uplink shares its path with nobody.
	Community string
	// Up reports whether the uplink is up with an address to send from.
	Up bool
	// Healthy reports whether its probes toward the MCP succeed.
	Healthy bool
}

// usable reports whether the uplink can carry a subflow now.
func (u Uplink) usable() bool { return u.Up && u.Healthy }

// Use says how the kernel's path manager may use an uplink.
type Use uint8

const (
	// UseNone: no subflow over the uplink; those it has are closed.
	UseNone Use = iota
	// UseActive: a subflow over the uplink that carries data.
	UseActive
	// UseBackup: a subflow over the uplink flagged backup.
	UseBackup
)

func (u Use) String() string {
	switch u {
	case UseNone:
		return "none"
	case UseActive:
		return "active"
	case UseBackup:
		return "backup"
	}
	return fmt.Sprintf("use(%d)", uint8(u))
}

// UplinkPlan is how the uplinks are used at one moment.
type UplinkPlan struct {
	// Use has one entry per uplink, in the order given to PlanUplinks.
	Use []Use
	// Initial lists the uplinks (indexes) to try, in order, for the
	// initial subflow of a new leg: active ones first, then backup ones,
	// each by priority. Empty when no uplink is usable.
	Initial []int
}

// PlanUplinks decides which uplinks carry subflows and how, from their
// roles, priorities, communities and states. An uplink that is down or
// failed its probes carries nothing. On-demand uplinks are used, as active
// ones, only while no active uplink is usable. At most maxSubflows uplinks
// are used, the best ones (zero or less: no bound).
//
// When every uplink that is up fails its probes, the fault is taken to be
// the MCP's, not the uplinks': they are planned as if healthy, and the
// MCP's own health (Policy.Failed) sends new flows to the fallback.
func PlanUplinks(ups []Uplink, maxSubflows int) UplinkPlan {
	p := UplinkPlan{Use: make([]Use, len(ups))}
	if !slices.ContainsFunc(ups, Uplink.usable) {
		ups = slices.Clone(ups)
		for i := range ups {
			ups[i].Healthy = true
		}
	}
	anyActive := slices.ContainsFunc(ups, func(u Uplink) bool { return u.usable() && u.Role == RoleActive })
	for i, u := range ups {
		switch {
		case !u.usable():
		case u.Role == RoleActive, u.Role == RoleOnDemand && !anyActive:
			p.Use[i] = UseActive
		case u.Role == RoleBackup:
			p.Use[i] = UseBackup
		}
	}
	order := make([]int, 0, len(ups))
	for i := range ups {
		if p.Use[i] != UseNone {
			order = append(order, i)
		}
	}
	// Best first: data-carrying before backup, then priority, then file
	// order (the sort is stable).
	slices.SortStableFunc(order, func(a, b int) int {
		if c := cmp.Compare(p.Use[a], p.Use[b]); c != 0 {
			return c
		}
		return cmp.Compare(ups[b].Priority, ups[a].Priority)
	})
	// One uplink per community, the best one, and no more than
	// maxSubflows uplinks in all.
	taken := map[string]bool{}
	for _, i := range order {
		c := ups[i].Community
		if c != "" && taken[c] || maxSubflows > 0 && len(p.Initial) == maxSubflows {
			p.Use[i] = UseNone
			continue
		}
		if c != "" {
			taken[c] = true
		}
		p.Initial = append(p.Initial, i)
	}
	return p
}

// DefaultProbeFailures is how many probes in a row must fail before an
// uplink counts as unhealthy, when UplinkHealth.Failures is zero.
const DefaultProbeFailures = 2

// UplinkHealth follows the probes of one uplink. An uplink starts healthy
// (a new uplink is tried rather than ignored); Failures probes in a row
// that fail make it unhealthy, and one probe that succeeds makes it
// healthy again. The zero value uses DefaultProbeFailures. It is not safe
// for concurrent use.
type UplinkHealth struct {
	Failures int

	failed    int
	unhealthy bool
}

// Healthy reports whether the uplink counts as healthy.
func (h *UplinkHealth) Healthy() bool { return !h.unhealthy }

// Record takes the outcome of one probe and reports whether Healthy changed.
func (h *UplinkHealth) Record(ok bool) bool {
	was := h.unhealthy
	if ok {
		h.failed, h.unhealthy = 0, false
	} else {
		h.failed++
		limit := h.Failures
		if limit <= 0 {
			limit = DefaultProbeFailures
		}
		h.unhealthy = h.failed >= limit
	}
	return was != h.unhealthy
}
