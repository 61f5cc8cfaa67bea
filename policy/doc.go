// Package policy decides what happens to each new LAN connection: pass it
// untouched, convert it over a Multipath TCP leg toward which downstream
// MCP, or apply the fallback. It also keeps the health of each MCP, so that
// while an MCP is known to be down new connections go straight to the
// fallback instead of waiting for a leg that will not come up; and it plans
// the uplinks (PlanUplinks): which carry subflows, as backup or not, and
// which a leg's initial subflow tries first, from their roles, priorities,
// communities, states and probe health (UplinkHealth).
//
// Package policy is pure: it is a function of flow metadata, MCP health
// and the clock the caller passes in. It opens no socket and imports
// nothing OS-specific, so every decision is unit-tested without root.
package policy
