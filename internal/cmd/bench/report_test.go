package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestSummary(t *testing.T) {
	tests := []struct {
		name          string
		in            []float64
		med, lo, high float64
	}{
		{name: "one", in: []float64{3}, med: 3, lo: 3, high: 3},
		{name: "odd", in: []float64{5, 1, 3}, med: 3, lo: 1, high: 5},
		{name: "even", in: []float64{4, 1, 2, 10}, med: 3, lo: 1, high: 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			med, lo, hi := summary(tt.in)
			if diff := cmp.Diff([]float64{tt.med, tt.lo, tt.high}, []float64{med, lo, hi}); diff != "" {
				t.Errorf("summary(%v) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestPercentile(t *testing.T) {
	v := make([]float64, 200)
	for i := range v {
		v[i] = float64(i + 1)
	}
	tests := []struct {
		p    float64
		want float64
	}{{0.5, 100}, {0.95, 190}, {0.99, 198}, {1, 200}, {0, 1}}
	for _, tt := range tests {
		if got := percentile(v, tt.p); got != tt.want {
			t.Errorf("percentile(1..200, %v) = %v, want %v", tt.p, got, tt.want)
		}
	}
	if got := percentile(nil, 0.5); !math.IsNaN(got) {
		t.Errorf("percentile(nil) = %v, want NaN", got)
	}
}

// TestEvaluate checks that targets are set on mcpagent's figures only and
// judged on medians, relative ones against the other system's median.
func TestEvaluate(t *testing.T) {
	var r Results
	for _, v := range []float64{0.96, 0.94, 0.97} {
		r.add(figGoodput1, "b", "", "", v, nil)
	}
	r.add(figGoodput1, "a", "", "", 0.3, nil)
	r.add(figTTFB50, "a", "ms", "", 40, nil)
	r.add(figTTFB50, "b", "ms", "", 42.5, nil) // 1.0625 × direct
	r.add(figCPUPerGB, "b", "s/GB", "", 0.5, nil)
	r.add(figCPUPerGB, "c", "s/GB", "", 1.5, errors.New("failed")) // no value: not judged
	r.add(figConnRate, "b", "/s", "", 0, errors.New("failed"))
	r.summarize()
	met := func(key, sys string) string {
		f := r.figure(key, sys)
		switch {
		case f.Target == "":
			return "no target"
		case f.Met == nil:
			return "not judged"
		case *f.Met:
			return "met"
		}
		return "missed"
	}
	got := map[string]string{
		"goodput b": met(figGoodput1, "b"),
		"goodput a": met(figGoodput1, "a"),
		"ttfb b":    met(figTTFB50, "b"),
		"cpu b":     met(figCPUPerGB, "b"),
		"conn b":    met(figConnRate, "b"),
	}
	want := map[string]string{
		"goodput b": "met", // median 0.96
		"goodput a": "no target",
		"ttfb b":    "missed",
		"cpu b":     "not judged",
		"conn b":    "not judged",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("targets (-want +got):\n%s", diff)
	}
	// Figures come out in report order whatever the order of the runs.
	var keys []string
	for _, f := range r.Figures {
		keys = append(keys, f.Key+"/"+f.System)
	}
	wantKeys := []string{figGoodput1 + "/a", figGoodput1 + "/b", figTTFB50 + "/a", figTTFB50 + "/b",
		figCPUPerGB + "/b", figCPUPerGB + "/c", figConnRate + "/b"}
	if diff := cmp.Diff(wantKeys, keys); diff != "" {
		t.Errorf("figure order (-want +got):\n%s", diff)
	}
	// Both files are written; a figure without runs has a null median.
	var js, md bytes.Buffer
	if err := r.writeJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back struct{ Figures []map[string]any }
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if m := back.Figures[5]["median"]; m != nil {
		t.Errorf("median of a figure without runs = %v, want null", m)
	}
	if err := r.writeMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	if line := "| " + figGoodput1 + " | b | 0.96  | 0.94–0.97 | 3 | ≥ 0.95 of the link sum | met |"; !strings.Contains(md.String(), line) {
		t.Errorf("markdown lacks %q:\n%s", line, md.String())
	}
}

func TestLinkFlag(t *testing.T) {
	tests := []struct {
		in      string
		want    link
		wantErr bool
	}{
		{in: "20mbit,10ms", want: link{rate: "20mbit", bps: 20e6, delay: 10 * time.Millisecond}},
		{in: "100mbit,0s", want: link{rate: "100mbit", bps: 100e6}},
		{in: "7.5mbit,0s", wantErr: true},
		{in: "20mbit", wantErr: true},
		{in: "20kbit,10ms", wantErr: true},
		{in: "20mbit,-1ms", wantErr: true},
	}
	for _, tt := range tests {
		var l link
		err := l.Set(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("Set(%q) error = %v, want error %t", tt.in, err, tt.wantErr)
			continue
		}
		if diff := cmp.Diff(tt.want, l, cmp.AllowUnexported(link{})); diff != "" {
			t.Errorf("Set(%q) (-want +got):\n%s", tt.in, diff)
		}
	}
}

func TestParseCPULine(t *testing.T) {
	c, err := parseCPULine("cpu  100 5 50 1000 20 3 7 0 0 0")
	if err != nil {
		t.Fatal(err)
	}
	if c != (cpuTimes{busy: 165, total: 1185}) {
		t.Errorf("parsed %+v, want busy 165 of 1185", c)
	}
	if got := (cpuTimes{busy: 175, total: 1285}).busyShare(c); got != 0.1 {
		t.Errorf("busy share %v, want 0.1", got)
	}
	for _, bad := range []string{"", "cpu0 1 2 3 4", "cpu 1 2 x 4", "cpu 1 2"} {
		if _, err := parseCPULine(bad); err == nil {
			t.Errorf("parseCPULine(%q) took it", bad)
		}
	}
}
