package agent

import (
	"cmp"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/mcpagent/mcpagent/control"
	"github.com/mcpagent/mcpagent/mptcpleg"
	"github.com/mcpagent/mcpagent/policy"
)

// legRegistry remembers the relayed connections and their legs, for the
// status. It is safe for concurrent use.
type legRegistry struct {
	mu   sync.Mutex
	legs map[*net.TCPConn]legEntry // by the leg's connection
}

type legEntry struct {
	client, dst netip.AddrPort
	mptcp       bool
}

func newLegRegistry() *legRegistry { return &legRegistry{legs: map[*net.TCPConn]legEntry{}} }

func (r *legRegistry) add(leg *mptcpleg.Leg, client, dst netip.AddrPort) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.legs[leg.Conn] = legEntry{client: client, dst: dst, mptcp: leg.MPTCP}
}

func (r *legRegistry) remove(leg *mptcpleg.Leg) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.legs, leg.Conn)
}

// snapshot returns the legs registered now.
func (r *legRegistry) snapshot() map[*net.TCPConn]legEntry {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[*net.TCPConn]legEntry, len(r.legs))
	for c, e := range r.legs {
		out[c] = e
	}
	return out
}

// uplinkSnapshot is the uplink manager's view at one moment.
type uplinkSnapshot struct {
	addrs   [][]netip.Prefix // per uplink
	up      []bool
	healthy []bool
	use     []policy.Use
}

func (m *uplinkManager) snapshot() uplinkSnapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := uplinkSnapshot{
		addrs:   make([][]netip.Prefix, len(m.cfg)),
		up:      make([]bool, len(m.cfg)),
		healthy: make([]bool, len(m.cfg)),
		use:     make([]policy.Use, len(m.cfg)),
	}
	for i := range m.cfg {
		if i < len(m.states) {
			s.addrs[i] = slices.Clone(m.states[i].Addrs)
			s.up[i] = hasLink(m.states[i])
		}
		if i < len(m.plan.Use) {
			s.use[i] = m.plan.Use[i]
		}
		s.healthy[i] = m.health[i].Healthy()
	}
	return s
}

// status builds the agent's control.Status: the uplinks, every relayed
// connection with its subflows (read from the kernel), and the counters.
func status(m *uplinkManager, legs *legRegistry, conv *converter) control.Status {
	snap := m.snapshot()
	st := control.Status{Uplinks: make([]control.UplinkStatus, len(m.cfg)), Connections: []control.ConnStatus{}}
	owner := map[netip.Addr]int{} // local address → uplink
	for i, u := range m.cfg {
		us := control.UplinkStatus{
			Name: u.Name, Interface: u.Interface, Role: u.Role, Priority: u.Priority, Community: u.Community,
			State: "down", Healthy: snap.healthy[i], Use: snap.use[i].String(), Addrs: []string{},
		}
		if snap.up[i] {
			us.State = "up"
		}
		for _, p := range snap.addrs[i] {
			us.Addrs = append(us.Addrs, p.String())
			owner[p.Addr()] = i
		}
		us.RxBytes, us.TxBytes = linkCounters(u.Interface)
		st.Uplinks[i] = us
	}
	for c, e := range legs.snapshot() {
		cs := control.ConnStatus{Client: e.client.String(), Destination: e.dst.String(), MPTCP: e.mptcp, Subflows: []control.SubflowStatus{}}
		if ra, ok := c.RemoteAddr().(*net.TCPAddr); ok {
			cs.MCP = ra.AddrPort().String()
		}
		subflows, err := mptcpleg.Subflows(c)
		if err != nil {
			continue // closed meanwhile
		}
		for _, sf := range subflows {
			ss := control.SubflowStatus{Local: sf.Local.String(), Remote: sf.Remote.String(), State: sf.State.String()}
			if i, ok := owner[sf.Local.Addr()]; ok {
				ss.Uplink, ss.Backup = m.cfg[i].Name, snap.use[i] == policy.UseBackup
				if sf.State == mptcpleg.TCPEstablished {
					st.Uplinks[i].Subflows++
				}
			}
			cs.Subflows = append(cs.Subflows, ss)
		}
		st.Connections = append(st.Connections, cs)
	}
	slices.SortFunc(st.Connections, func(a, b control.ConnStatus) int {
		return cmp.Or(strings.Compare(a.Client, b.Client), strings.Compare(a.Destination, b.Destination))
	})
	s := &conv.stats
	st.Counters = map[string]uint64{
		"converted":         s.Converted.Load(),
		"fallback":          s.Fallback.Load(),
		"native":            s.Native.Load(),
		"rejected":          s.Rejected.Load(),
		"duplicate_syns":    s.Duplicates.Load(),
		"unclaimed_legs":    s.Unclaimed.Load(),
		"orphan_accepts":    s.Orphans.Load(),
		"late_legs":         s.LateLegs.Load(),
		"tcp_fallback_legs": s.TCPFallbackLegs.Load(),
	}
	return st
}
