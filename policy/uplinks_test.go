package policy

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestPlanUplinks(t *testing.T) {
	ok := func(r Role, prio int, community string) Uplink {
		return Uplink{Role: r, Priority: prio, Community: community, Up: true, Healthy: true}
	}
	down := func(u Uplink) Uplink { u.Up = false; return u }
	sick := func(u Uplink) Uplink { u.Healthy = false; return u }
	tests := []struct {
		name string
		ups  []Uplink
		max  int
		want UplinkPlan
	}{
		{name: "none", want: UplinkPlan{Use: []Use{}}},
		{name: "two active, file order breaks the tie",
			ups:  []Uplink{ok(RoleActive, 0, ""), ok(RoleActive, 0, "")},
			want: UplinkPlan{Use: []Use{UseActive, UseActive}, Initial: []int{0, 1}}},
		{name: "priority orders the initial subflow",
			ups:  []Uplink{ok(RoleActive, 50, ""), ok(RoleActive, 100, "")},
			want: UplinkPlan{Use: []Use{UseActive, UseActive}, Initial: []int{1, 0}}},
		{name: "backup gets a backup subflow and comes last",
			ups:  []Uplink{ok(RoleBackup, 100, ""), ok(RoleActive, 50, "")},
			want: UplinkPlan{Use: []Use{UseBackup, UseActive}, Initial: []int{1, 0}}},
		{name: "backup alone still carries as backup",
			ups:  []Uplink{ok(RoleBackup, 0, ""), down(ok(RoleActive, 100, ""))},
			want: UplinkPlan{Use: []Use{UseBackup, UseNone}, Initial: []int{0}}},
		{name: "on-demand idle while an active uplink works",
			ups:  []Uplink{ok(RoleActive, 100, ""), ok(RoleOnDemand, 50, "")},
			want: UplinkPlan{Use: []Use{UseActive, UseNone}, Initial: []int{0}}},
		{name: "on-demand takes over when the active uplink is down",
			ups:  []Uplink{down(ok(RoleActive, 100, "")), ok(RoleOnDemand, 50, "")},
			want: UplinkPlan{Use: []Use{UseNone, UseActive}, Initial: []int{1}}},
		{name: "on-demand takes over when the active uplink fails its probes",
			ups:  []Uplink{sick(ok(RoleActive, 100, "")), ok(RoleOnDemand, 50, ""), ok(RoleBackup, 10, "")},
			want: UplinkPlan{Use: []Use{UseNone, UseActive, UseBackup}, Initial: []int{1, 2}}},
		{name: "with no active uplink, on-demand carries data beside the backup",
			ups:  []Uplink{ok(RoleBackup, 0, ""), ok(RoleOnDemand, 0, "")},
			want: UplinkPlan{Use: []Use{UseBackup, UseActive}, Initial: []int{1, 0}}},
		{name: "unhealthy uplink carries nothing",
			ups:  []Uplink{sick(ok(RoleActive, 100, "")), ok(RoleActive, 50, "")},
			want: UplinkPlan{Use: []Use{UseNone, UseActive}, Initial: []int{1}}},
		{name: "one subflow per community, the best",
			ups:  []Uplink{ok(RoleActive, 10, "copper"), ok(RoleActive, 20, "copper"), ok(RoleActive, 5, "")},
			want: UplinkPlan{Use: []Use{UseNone, UseActive, UseActive}, Initial: []int{1, 2}}},
		{name: "community: the member that works takes over",
			ups:  []Uplink{ok(RoleActive, 10, "copper"), down(ok(RoleActive, 20, "copper"))},
			want: UplinkPlan{Use: []Use{UseActive, UseNone}, Initial: []int{0}}},
		{name: "community: an active member wins over a backup one",
			ups:  []Uplink{ok(RoleBackup, 100, "copper"), ok(RoleActive, 1, "copper")},
			want: UplinkPlan{Use: []Use{UseNone, UseActive}, Initial: []int{1}}},
		{name: "max subflows keeps the best uplinks",
			ups: []Uplink{ok(RoleBackup, 100, ""), ok(RoleActive, 1, ""), ok(RoleActive, 2, "")}, max: 2,
			want: UplinkPlan{Use: []Use{UseNone, UseActive, UseActive}, Initial: []int{2, 1}}},
		{name: "max subflows 1: single path over the best, the others wait",
			ups: []Uplink{ok(RoleActive, 1, ""), ok(RoleActive, 2, "")}, max: 1,
			want: UplinkPlan{Use: []Use{UseNone, UseActive}, Initial: []int{1}}},
		{name: "nothing up",
			ups:  []Uplink{down(ok(RoleActive, 0, "")), down(ok(RoleBackup, 0, ""))},
			want: UplinkPlan{Use: []Use{UseNone, UseNone}}},
		{name: "every uplink that is up fails its probes: the MCP is blamed, not them",
			ups:  []Uplink{sick(ok(RoleActive, 0, "")), sick(ok(RoleBackup, 0, "")), down(sick(ok(RoleActive, 9, "")))},
			want: UplinkPlan{Use: []Use{UseActive, UseBackup, UseNone}, Initial: []int{0, 1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := PlanUplinks(tt.ups, tt.max)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("PlanUplinks (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseRole(t *testing.T) {
	for _, r := range []Role{RoleActive, RoleBackup, RoleOnDemand} {
		got, err := ParseRole(r.String())
		if err != nil || got != r {
			t.Errorf("ParseRole(%q) = %v, %v; want %v", r.String(), got, err, r)
		}
	}
	for _, s := range []string{"", "Active", "ondemand", "primary"} {
		if _, err := ParseRole(s); err == nil {
			t.Errorf("ParseRole(%q) succeeded", s)
		}
	}
}

func TestUplinkHealth(t *testing.T) {
	steps := []struct {
		ok          bool
		wantHealthy bool
		wantChanged bool
	}{
		{ok: false, wantHealthy: true},                     // one failure is tolerated
		{ok: true, wantHealthy: true},                      // and forgotten by a success
		{ok: false, wantHealthy: true},                     //
		{ok: false, wantHealthy: false, wantChanged: true}, // the second in a row counts
		{ok: false, wantHealthy: false},                    //
		{ok: true, wantHealthy: true, wantChanged: true},   // one success brings it back
	}
	var h UplinkHealth
	if !h.Healthy() {
		t.Fatal("a new uplink must start healthy")
	}
	for i, s := range steps {
		changed := h.Record(s.ok)
		if changed != s.wantChanged || h.Healthy() != s.wantHealthy {
			t.Errorf("step %d (ok %v): changed %v healthy %v; want %v %v", i, s.ok, changed, h.Healthy(), s.wantChanged, s.wantHealthy)
		}
	}
	h = UplinkHealth{Failures: 1}
	if !h.Record(false) || h.Healthy() {
		t.Error("Failures 1: one failed probe must make the uplink unhealthy")
	}
}
