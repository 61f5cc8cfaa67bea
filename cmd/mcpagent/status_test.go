package main

import (
	"strings"
	"testing"

	"github.com/mcpagent/mcpagent/control"
)

func TestPrintStatus(t *testing.T) {
	st := control.Status{
		Uplinks: []control.UplinkStatus{
			{Name: "dsl", Interface: "wan0", Role: "active", Priority: 100, Community: "copper", State: "up", Healthy: true, Use: "active", Addrs: []string{"10.0.1.2/24"}, Subflows: 1, RxBytes: 2000, TxBytes: 100},
			{Name: "lte", Interface: "wan1", Role: "backup", Priority: 50, State: "up", Healthy: false, Use: "none", Addrs: []string{"100.64.0.2/24"}},
		},
		Connections: []control.ConnStatus{{Client: "192.168.1.2:40000", Destination: "203.0.113.10:80", MCP: "198.51.100.1:5124", MPTCP: true,
			Subflows: []control.SubflowStatus{{Local: "10.0.1.2:41000", Remote: "198.51.100.1:5124", Uplink: "dsl", State: "fin-wait-1"}, {Local: "100.64.0.2:41001", Remote: "198.51.100.1:5124", Uplink: "lte", Backup: true, State: "established"}}}},
		Counters: map[string]uint64{"fallback": 1, "converted": 7},
	}
	var b strings.Builder
	printStatus(&b, st)
	out := b.String()
	for _, want := range []string{
		"UPLINK",
		"dsl (copper)  wan0       active  100       up     healthy  active  1         2000  100  10.0.1.2/24",
		"lte           wan1       backup  50        up     failing  none    0         0     0    100.64.0.2/24",
		"1 relayed connections; converted 7 fallback 1",
		"192.168.1.2:40000 -> 203.0.113.10:80 via 198.51.100.1:5124, mptcp",
		"    dsl 10.0.1.2:41000 -> 198.51.100.1:5124 fin-wait-1\n",
		"    lte 100.64.0.2:41001 -> 198.51.100.1:5124 backup\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
}
