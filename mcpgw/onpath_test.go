package mcpgw

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/mcpagent/mcpagent/intercept"
	"github.com/mcpagent/mcpagent/internal/golden"
)

func TestOnPathRules(t *testing.T) {
	custom := OnPath{Queue: 7, MarkMask: 0xf0, ConvertMark: 0x10, RejectMark: 0x20, TProxyMark: 0x30, Table: 70, RulePriority: 80, Interfaces: []string{"up0", "up1"}, MaxPorts: 9, PortIdle: time.Second}
	tests := []struct {
		name string
		o    OnPath
		v6   bool
	}{
		{"onpath_ipv4.golden", OnPath{}.withDefaults(), false},
		{"onpath_ipv6.golden", OnPath{}.withDefaults(), true},
		{"onpath_custom_ipv4.golden", custom, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.o.validate(); err != nil {
				t.Fatal(err)
			}
			golden.Check(t, tt.name, onPathRules(tt.o, tt.v6))
		})
	}
	// Removal names every chain the rules declare, and both jumps.
	for _, v6 := range []bool{false, true} {
		rm := removeOnPathRules(v6)
		for _, c := range []string{chainOnPath, chainOnPathDivert, chainOnPathReject} {
			if !strings.Contains(rm, "-X "+c+"\n") || !strings.Contains(onPathRules(OnPath{}.withDefaults(), v6), ":"+c+" ") {
				t.Errorf("chain %s is not both installed and removed (v6 %v):\n%s", c, v6, rm)
			}
		}
		if !strings.Contains(rm, "-D PREROUTING -p tcp -j "+chainOnPath+"\n") || !strings.Contains(rm, "-D FORWARD -p tcp -j "+chainOnPathReject+"\n") {
			t.Errorf("removal does not delete the jumps:\n%s", rm)
		}
	}
}

func TestOnPathValidate(t *testing.T) {
	ok := OnPath{}.withDefaults()
	tests := []struct {
		name    string
		edit    func(o *OnPath)
		wantErr string
	}{
		{"defaults", func(*OnPath) {}, ""},
		{"mark outside mask", func(o *OnPath) { o.ConvertMark = 0x10 }, "on-path convert mark 0x10 is outside mark mask 0xf000000"},
		{"same marks", func(o *OnPath) { o.TProxyMark = o.RejectMark }, "on-path reject and tproxy marks are both 0x2000000"},
		{"local table", func(o *OnPath) { o.Table = 255 }, "on-path routing table 255"},
		{"rule after main", func(o *OnPath) { o.RulePriority = 32766 }, "on-path rule priority 32766"},
		{"one port", func(o *OnPath) { o.MaxPorts = 1 }, ""},
		{"no ports", func(o *OnPath) { o.MaxPorts = -1 }, "on-path port limit -1"},
		{"more ports than exist", func(o *OnPath) { o.MaxPorts = 2*65535 + 1 }, "on-path port limit 131071"},
		{"negative idle time", func(o *OnPath) { o.PortIdle = -time.Second }, "on-path port idle time -1s"},
		{"interfaces", func(o *OnPath) { o.Interfaces = []string{"up0", "br-lan.10"} }, ""},
		{"interface twice", func(o *OnPath) { o.Interfaces = []string{"up0", "up0"} }, `on-path interface "up0" listed twice`},
		{"interface wildcard", func(o *OnPath) { o.Interfaces = []string{"up+"} }, `on-path invalid character in interface name "up+"`},
		{"empty interface", func(o *OnPath) { o.Interfaces = []string{""} }, "on-path interface name is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := ok
			tt.edit(&o)
			err := o.validate()
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("validate = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestDecideOnPath(t *testing.T) {
	src, dst := netip.MustParseAddrPort("10.0.1.2:40000"), netip.MustParseAddrPort("203.0.113.10:80")
	tests := []struct {
		name string
		syn  intercept.SYN
		want onPathAction
	}{
		{"plain TCP", intercept.SYN{}, forward},
		{"native MPTCP (no MP_CONVERT) is forwarded (section 7)", intercept.SYN{MPTCP: intercept.NativeCapable}, forward},
		{"MP_CAPABLE and empty MP_CONVERT: terminate (section 6.2.1)", intercept.SYN{MPTCP: intercept.NativeCapable, MPConvert: intercept.MPConvertEmpty}, terminate},
		{"MP_CONVERT with an address is for an off-path MCP", intercept.SYN{MPTCP: intercept.NativeCapable, MPConvert: intercept.MPConvertAddr}, forward},
		{"MP_JOIN: its token decides", intercept.SYN{MPTCP: intercept.NativeJoin, Token: 7}, checkJoin},
		{"MP_CONVERT without MP_CAPABLE is ignored (section 4)", intercept.SYN{MPConvert: intercept.MPConvertEmpty}, ignoreConvert},
		{"MP_CONVERT with an address without MP_CAPABLE is ignored", intercept.SYN{MPConvert: intercept.MPConvertAddr}, ignoreConvert},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.syn.Src, tt.syn.Dst = src, dst
			if got := decideOnPath(tt.syn); got != tt.want {
				t.Errorf("decideOnPath = %d, want %d", got, tt.want)
			}
		})
	}
}

// FuzzDecideOnPath: whatever SYN arrives, the on-path MCP takes over only
// an MP_CAPABLE SYN with an empty MP_CONVERT, checks only MP_JOINs, and
// never panics.
func FuzzDecideOnPath(f *testing.F) {
	f.Add([]byte{0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 1, 2, 203, 0, 113, 10, 0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 2, 0xff, 0xff, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		s, err := intercept.ParseSYN(pkt)
		if err != nil {
			return
		}
		switch a := decideOnPath(s); {
		case a == terminate && (s.MPTCP != intercept.NativeCapable || s.MPConvert != intercept.MPConvertEmpty):
			t.Fatalf("took over %+v", s)
		case a == checkJoin && s.MPTCP != intercept.NativeJoin:
			t.Fatalf("checked a join token of %+v", s)
		case a == ignoreConvert && s.MPTCP == intercept.NativeCapable:
			t.Fatalf("ignored the MP_CONVERT of an MP_CAPABLE SYN %+v", s)
		}
	})
}
