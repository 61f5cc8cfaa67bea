package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
)

// Figure is one measured quantity of one system over the repeated runs.
type Figure struct {
	Key     string    `json:"key"` // scenario and metric, one of the fig* constants
	System  string    `json:"system"`
	Unit    string    `json:"unit"`
	Runs    []float64 `json:"runs"`
	Median  *float64  `json:"median"` // nil when no run produced a value
	Min     *float64  `json:"min"`
	Max     *float64  `json:"max"`
	Target  string    `json:"target,omitempty"`
	Met     *bool     `json:"met,omitempty"`
	Command string    `json:"command"`
	Errors  []string  `json:"errors,omitempty"` // runs that produced no value
}

// The figures, in the order of the report.
const (
	figGoodput1      = "bulk goodput, 1 flow"
	figGoodput8      = "bulk goodput, 8 flows"
	figTTFB50        = "TTFB of a 10 KB GET, p50"
	figTTFB95        = "TTFB of a 10 KB GET, p95"
	figCPUPerGB      = "CPU-seconds per GB relayed"
	figRSSIdle       = "RSS idle"
	figRSS1k         = "RSS with 1,000 idle relayed connections"
	figRSSMany       = "RSS with 10,000 idle relayed connections (or as many as the open-file limit allows: see setup)"
	figRSSGrowth1k   = "RSS growth per 1,000 connections, at 1,000"
	figRSSGrowthMany = "RSS growth per 1,000 connections, at 10,000 (or as many as allowed)"
	figConnRate      = "new connections per second sustained"
	figConnP99       = "setup latency p99 at that load (connect + 1-byte echo)"
	figConnAddedP99  = "added setup latency p99 at that load"
	figConnCapacity  = "highest rate with every connection set up and setup p99 ≤ 5 ms (stepped)"
	figConnCPU       = "router CPU-seconds per 1,000 new connections, at 500/s"
)

var figureOrder = []string{figGoodput1, figGoodput8, figTTFB50, figTTFB95, figCPUPerGB,
	figRSSIdle, figRSS1k, figRSSMany, figRSSGrowth1k, figRSSGrowthMany,
	figConnRate, figConnP99, figConnAddedP99, figConnCapacity, figConnCPU}

// System is one of the compared systems.
type System struct {
	ID       string   `json:"id"`
	Name     string   `json:"name"`
	Commands []string `json:"commands"` // how it was started, in order
}

// Results is everything a run of bench found.
type Results struct {
	Command  string            `json:"command"`
	Date     string            `json:"date"`
	Machine  string            `json:"machine"`
	Kernel   string            `json:"kernel"`
	Go       string            `json:"go"`
	Revision string            `json:"revision"`
	Duration string            `json:"duration"`
	Reps     int               `json:"reps"`
	Links    map[string]string `json:"links"`
	Setup    []string          `json:"setup"` // testbed settings common to every system
	Systems  []System          `json:"systems"`
	Figures  []*Figure         `json:"figures"`
}

// add records value v (or, when err is not nil, the failed run) of figure
// key for system sys.
func (r *Results) add(key, sys, unit, command string, v float64, err error) {
	f := r.figure(key, sys)
	if f == nil {
		f = &Figure{Key: key, System: sys, Unit: unit, Command: command}
		r.Figures = append(r.Figures, f)
	}
	if err != nil {
		f.Errors = append(f.Errors, err.Error())
		return
	}
	f.Runs = append(f.Runs, v)
}

// errors returns the number of failed runs so far.
func (r *Results) errors() int {
	n := 0
	for _, f := range r.Figures {
		n += len(f.Errors)
	}
	return n
}

func (r *Results) figure(key, sys string) *Figure {
	for _, f := range r.Figures {
		if f.Key == key && f.System == sys {
			return f
		}
	}
	return nil
}

// summarize computes each figure's median and range, then the targets.
func (r *Results) summarize() {
	for _, f := range r.Figures {
		if len(f.Runs) > 0 {
			med, lo, hi := summary(f.Runs)
			f.Median, f.Min, f.Max = &med, &lo, &hi
		}
	}
	r.evaluate()
	slices.SortStableFunc(r.Figures, func(a, b *Figure) int {
		if c := slices.Index(figureOrder, a.Key) - slices.Index(figureOrder, b.Key); c != 0 {
			return c
		}
		return strings.Compare(a.System, b.System)
	})
}

// summary returns the median, minimum and maximum of v, which must not be
// empty.
func summary(v []float64) (median, lo, hi float64) {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	median = s[n/2]
	if n%2 == 0 {
		median = (s[n/2-1] + s[n/2]) / 2
	}
	return median, s[0], s[n-1]
}

// evaluate sets the targets of mcpagent's (system b) figures and whether
// their medians meet them. A target relative to another system is left
// unjudged when that system's figure is missing.
func (r *Results) evaluate() {
	judge := func(key, target string, ok func(v float64) (bool, bool)) {
		f := r.figure(key, "b")
		if f == nil {
			return
		}
		f.Target = target
		if f.Median == nil {
			return
		}
		if met, known := ok(*f.Median); known {
			f.Met = &met
		}
	}
	abs := func(pass func(float64) bool) func(float64) (bool, bool) {
		return func(v float64) (bool, bool) { return pass(v), true }
	}
	rel := func(key, sys string, pass func(v, other float64) bool) func(float64) (bool, bool) {
		return func(v float64) (bool, bool) {
			o := r.figure(key, sys)
			if o == nil || o.Median == nil {
				return false, false
			}
			return pass(v, *o.Median), true
		}
	}
	judge(figGoodput1, "≥ 0.95 of the link sum", abs(func(v float64) bool { return v >= 0.95 }))
	judge(figTTFB50, "≤ 1.05 × direct (a)", rel(figTTFB50, "a", func(v, o float64) bool { return v <= 1.05*o }))
	judge(figTTFB95, "≤ 1.05 × direct (a)", rel(figTTFB95, "a", func(v, o float64) bool { return v <= 1.05*o }))
	judge(figCPUPerGB, "≤ 0.3 × shadowsocks (c)", rel(figCPUPerGB, "c", func(v, o float64) bool { return v <= 0.3*o }))
	judge(figRSSGrowth1k, "≤ 6 MB", abs(func(v float64) bool { return v <= 6 }))
	judge(figRSSGrowthMany, "≤ 6 MB", abs(func(v float64) bool { return v <= 6 }))
	judge(figConnRate, "≥ 5,000/s", abs(func(v float64) bool { return v >= 5000 }))
	judge(figConnAddedP99, "≤ 5 ms", abs(func(v float64) bool { return v <= 5 }))
}

// writeJSON writes r as indented JSON.
func (r *Results) writeJSON(w io.Writer) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	_, err = w.Write(b)
	return err
}

// writeMarkdown writes r as the results table with its context.
func (r *Results) writeMarkdown(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# Benchmark results\n\n")
	fmt.Fprintf(&b, "Produced by `%s` on %s in %s.\n\n", r.Command, r.Date, r.Duration)
	fmt.Fprintf(&b, "- Machine: %s\n- Kernel: %s\n- Go: %s\n- Revision: %s\n", r.Machine, r.Kernel, r.Go, r.Revision)
	fmt.Fprintf(&b, "- Links: DSL %s, LTE %s (rate with tbf, one-way delay with the link emulator, each direction)\n", r.Links["dsl"], r.Links["lte"])
	fmt.Fprintf(&b, "- Each figure: the median over %d runs, and the range (min–max) of the runs.\n", r.Reps)
	fmt.Fprintf(&b, "- Targets apply to mcpagent (b) and are judged on the median.\n\n")
	b.WriteString("## Systems\n\n")
	for _, s := range r.Systems {
		fmt.Fprintf(&b, "- **(%s) %s**", s.ID, s.Name)
		if len(s.Commands) == 0 {
			b.WriteString("\n")
			continue
		}
		b.WriteString(":\n")
		for _, c := range s.Commands {
			fmt.Fprintf(&b, "  - `%s`\n", c)
		}
	}
	b.WriteString("\nCommon setup:\n\n")
	for _, s := range r.Setup {
		fmt.Fprintf(&b, "- %s\n", s)
	}
	b.WriteString("\n## Figures\n\n")
	b.WriteString("| figure | system | median | range | runs | target | met |\n|---|---|---|---|---|---|---|\n")
	for _, f := range r.Figures {
		met := ""
		if f.Met != nil {
			met = "missed"
			if *f.Met {
				met = "met"
			}
		} else if f.Target != "" {
			met = "not judged"
		}
		runs := fmt.Sprintf("%d", len(f.Runs))
		if len(f.Errors) > 0 {
			runs += fmt.Sprintf(" (%d failed)", len(f.Errors))
		}
		fmt.Fprintf(&b, "| %s | %s | %s %s | %s–%s | %s | %s | %s |\n",
			f.Key, f.System, num(f.Median), f.Unit, num(f.Min), num(f.Max), runs, f.Target, met)
	}
	b.WriteString("\n## Commands\n\n")
	seen := map[string]bool{}
	for _, f := range r.Figures {
		k := f.Key + f.Command
		if seen[k] || f.Command == "" {
			continue
		}
		seen[k] = true
		fmt.Fprintf(&b, "- %s (%s): `%s`\n", f.Key, f.System, f.Command)
	}
	var errs []string
	for _, f := range r.Figures {
		for _, e := range f.Errors {
			errs = append(errs, fmt.Sprintf("- %s (%s): %s", f.Key, f.System, e))
		}
	}
	if len(errs) > 0 {
		b.WriteString("\n## Failed runs\n\n" + strings.Join(errs, "\n") + "\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// num formats v with about three significant digits, or "–" for nil.
func num(p *float64) string {
	if p == nil {
		return "–"
	}
	v := *p
	switch a := math.Abs(v); {
	case a >= 1000:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}
