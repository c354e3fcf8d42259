package bench

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

// Results is everything one invocation measured: the raw figure of every
// run (docs/benchmarks.json) and what the markdown report is made from.
type Results struct {
	Date          string            `json:"date"`
	Host          string            `json:"host"`
	Cores         int               `json:"cores"`
	GoVersion     string            `json:"go_version"`
	NATSServer    string            `json:"nats_server"`
	NATSGo        string            `json:"nats_go"`
	Storage       string            `json:"storage"`
	Sync          string            `json:"sync"`
	Postgres      string            `json:"postgres"`
	Quick         bool              `json:"quick"`
	Runs          int               `json:"runs"`
	LoadAtStart   string            `json:"load_at_start"`
	LoadAtEnd     string            `json:"load_at_end"`
	Scenarios     []*Scenario       `json:"scenarios"`
	Profile       *ProfileReport    `json:"profile,omitempty"`
	Extra         map[string]string `json:"extra,omitempty"`
	TotalSeconds  float64           `json:"total_seconds"`
	CommandLine   string            `json:"command_line"`
	ServicesBuilt string            `json:"services_built,omitempty"`
}

// Scenario is one scenario's figures.
type Scenario struct {
	Name     string    `json:"name"`
	Title    string    `json:"title"`
	Settings []string  `json:"settings"`
	Figures  []*Figure `json:"figures"`
	Notes    []string  `json:"notes,omitempty"`
	Error    string    `json:"error,omitempty"`
	Seconds  float64   `json:"seconds"`
	// Date is when the scenario ran (UTC); with -merge, scenarios of one
	// report may come from different invocations.
	Date string `json:"date"`
	Load string `json:"load_at_start"`
	// Commit is the repository's HEAD when the scenario started, with
	// "+dirty" when services/ or streams/ had uncommitted changes.
	Commit string `json:"commit,omitempty"`

	mu sync.Mutex
}

// Figure is one measured quantity, its value in every run, and the
// baseline figure (of the same scenario, measured in the same runs) it is
// compared to.
type Figure struct {
	Name     string    `json:"name"`
	Unit     string    `json:"unit"`
	Runs     []float64 `json:"runs"`
	Baseline string    `json:"baseline,omitempty"`
	// Ratios are Runs[i] / baseline's Runs[i].
	Ratios []float64 `json:"ratios,omitempty"`
	Median float64   `json:"median"`
	// RatioMedian is the median of Ratios.
	RatioMedian float64 `json:"ratio_median,omitempty"`
	Target      *Target `json:"target,omitempty"`
	Met         *bool   `json:"met,omitempty"`
	Note        string  `json:"note,omitempty"`
}

// Target is a goal on a figure's median ratio (OnRatio) or median value.
type Target struct {
	OnRatio bool    `json:"on_ratio"`
	AtLeast bool    `json:"at_least"` // else at most
	Value   float64 `json:"value"`
	Text    string  `json:"text"`
}

// RatioAtLeast is a target "ratio ≥ v".
func RatioAtLeast(v float64) *Target {
	return &Target{OnRatio: true, AtLeast: true, Value: v, Text: fmt.Sprintf("≥ %.2f", v)}
}

// RatioAtMost is a target "ratio ≤ v".
func RatioAtMost(v float64) *Target {
	return &Target{OnRatio: true, Value: v, Text: fmt.Sprintf("≤ %.2f×", v)}
}

// ValueAtMost is a target "value ≤ v unit".
func ValueAtMost(v float64, unit string) *Target {
	return &Target{Value: v, Text: fmt.Sprintf("≤ %g %s", v, unit)}
}

// ValueAtLeast is a target "value ≥ v unit".
func ValueAtLeast(v float64, unit string) *Target {
	return &Target{AtLeast: true, Value: v, Text: fmt.Sprintf("≥ %g %s", v, unit)}
}

// Declare adds a figure. baseline names another figure of the scenario
// ("" for none).
func (s *Scenario) Declare(name, unit, baseline string, t *Target) *Figure {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := &Figure{Name: name, Unit: unit, Baseline: baseline, Target: t}
	s.Figures = append(s.Figures, f)
	return f
}

// Fig returns a declared figure.
func (s *Scenario) Fig(name string) *Figure {
	for _, f := range s.Figures {
		if f.Name == name {
			return f
		}
	}
	return nil
}

// Add records one run's value of a figure; run is the 0-based run index.
func (s *Scenario) Add(name string, run int, v float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.Fig(name)
	if f == nil {
		f = &Figure{Name: name}
		s.Figures = append(s.Figures, f)
	}
	for len(f.Runs) <= run {
		f.Runs = append(f.Runs, math.NaN())
	}
	f.Runs[run] = v
}

// Set is a setting or fact the scenario used, printed under its table.
func (s *Scenario) Set(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	line := fmt.Sprintf(format, args...)
	if !slices.Contains(s.Settings, line) {
		s.Settings = append(s.Settings, line)
	}
}

// Note adds a finding.
func (s *Scenario) Note(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	line := fmt.Sprintf(format, args...)
	if !slices.Contains(s.Notes, line) {
		s.Notes = append(s.Notes, line)
	}
}

func median(vs []float64) float64 {
	var c []float64
	for _, v := range vs {
		if !math.IsNaN(v) && !math.IsInf(v, 0) {
			c = append(c, v)
		}
	}
	if len(c) == 0 {
		return math.NaN()
	}
	slices.Sort(c)
	if len(c)%2 == 1 {
		return c[len(c)/2]
	}
	return (c[len(c)/2-1] + c[len(c)/2]) / 2
}

// Finish computes medians, ratios and targets.
func (s *Scenario) Finish() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.Figures {
		f.Median = median(f.Runs)
		f.Ratios, f.RatioMedian = nil, 0
		if b := s.Fig(f.Baseline); b != nil {
			for i, v := range f.Runs {
				r := math.NaN()
				if i < len(b.Runs) && b.Runs[i] != 0 {
					r = v / b.Runs[i]
				}
				f.Ratios = append(f.Ratios, r)
			}
			f.RatioMedian = median(f.Ratios)
		}
		if t := f.Target; t != nil {
			v := f.Median
			if t.OnRatio {
				v = f.RatioMedian
			}
			if !math.IsNaN(v) {
				met := v <= t.Value
				if t.AtLeast {
					met = v >= t.Value
				}
				f.Met = &met
			}
		}
	}
}

// jsonFloat writes NaN as null.
func (r *Results) MarshalJSONFile(path string) error {
	clean(r)
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// clean replaces NaN (a run that produced no figure) by -1, which JSON can
// carry; the report prints it as "–".
func clean(r *Results) {
	fix := func(v *float64) {
		if math.IsNaN(*v) || math.IsInf(*v, 0) {
			*v = -1
		}
	}
	for _, s := range r.Scenarios {
		for _, f := range s.Figures {
			for i := range f.Runs {
				fix(&f.Runs[i])
			}
			for i := range f.Ratios {
				fix(&f.Ratios[i])
			}
			fix(&f.Median)
			fix(&f.RatioMedian)
		}
	}
}

func fmtNum(v float64) string {
	switch {
	case math.IsNaN(v) || v < 0:
		return "–"
	case v >= 100_000:
		return fmt.Sprintf("%.0f k", v/1000)
	case v >= 10_000:
		return fmt.Sprintf("%.1f k", v/1000)
	case v >= 1000:
		return fmt.Sprintf("%.2f k", v/1000)
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func fmtRuns(vs []float64) string {
	var out []string
	for _, v := range vs {
		out = append(out, fmtNum(v))
	}
	return strings.Join(out, " / ")
}

// Merge returns r with the scenarios of older (an earlier report read from
// benchmarks.json) that r did not run, in the suite's order.
func (r *Results) Merge(older *Results) {
	if older == nil {
		return
	}
	ranProfile := r.Scenario("profile") != nil
	have := map[string]*Scenario{}
	for _, s := range older.Scenarios {
		if s.Date == "" {
			s.Date = "in the invocation of " + older.Date
		}
		if s.Load == "" {
			s.Load = "not recorded"
		}
		have[s.Name] = s
	}
	for _, s := range r.Scenarios {
		have[s.Name] = s
	}
	var out []*Scenario
	for _, d := range defs {
		if s, ok := have[d.name]; ok {
			out = append(out, s)
		}
	}
	r.Scenarios = out
	if !ranProfile {
		r.Profile = older.Profile
	}
	r.TotalSeconds = 0
	for _, s := range out {
		r.TotalSeconds += s.Seconds
	}
}

// ReadResults reads a benchmarks.json.
func ReadResults(path string) (*Results, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Results
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	for _, s := range r.Scenarios {
		for _, f := range s.Figures {
			for i, v := range f.Runs {
				if v == -1 {
					f.Runs[i] = math.NaN()
				}
			}
		}
		s.Finish()
	}
	return &r, nil
}
