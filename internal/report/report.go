// Package report writes DIR/report.html: a self-contained HTML page (no
// scripts, no requests: inline style and SVG) about a finished results
// directory, from its events.jsonl and summary.json.
package report

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/drover-hpc/drover/internal/results"
	"github.com/drover-hpc/drover/internal/web"
)

// File is the report's name inside the results directory.
const File = "report.html"

// Limits of the page.
const (
	slowest      = 10
	maxFailed    = 50
	tailBytes    = 4096
	tailLines    = 30
	maxBars      = 5000
	laneHeight   = 18
	labelWidth   = 150
	plotWidth    = 900
	timelineFont = 11
)

// Write reads dir's events.jsonl and summary.json and writes
// dir/report.html; it returns the report's path.
func Write(dir string) (string, error) {
	var buf bytes.Buffer
	if err := Render(dir, &buf); err != nil {
		return "", err
	}
	path := filepath.Join(dir, File)
	tmp, err := os.CreateTemp(dir, ".report-*.html")
	if err != nil {
		return "", fmt.Errorf("write report: %w", err)
	}
	_, err = tmp.Write(buf.Bytes())
	err = errors.Join(err, tmp.Chmod(0o644), tmp.Close())
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return "", fmt.Errorf("write report: %w", err)
	}
	return path, nil
}

// Render writes the report of dir to w.
func Render(dir string, w io.Writer) error {
	f, err := os.Open(filepath.Join(dir, results.EventsFile))
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	defer f.Close()
	m := web.NewModel("", "run")
	var first, last time.Time
	err = results.ReadEvents(f, func(e results.Event) {
		if first.IsZero() || e.Time.Before(first) {
			first = e.Time
		}
		if e.Time.After(last) {
			last = e.Time
		}
		m.Apply(0, e.Job, e)
	})
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	var sum results.Summary
	data, err := os.ReadFile(filepath.Join(dir, results.SummaryFile))
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &sum); err != nil {
			return fmt.Errorf("report: %s: %w", results.SummaryFile, err)
		}
		for _, in := range sum.Instances {
			m.Add(0, in.Name)
			m.SetState(in.Name, in.State, in.Outcome())
		}
	case errors.Is(err, os.ErrNotExist):
		// A run that did not end (yet): the events tell what there is.
	default:
		return fmt.Errorf("report: %w", err)
	}
	st := m.Snapshot()
	p := page{Dir: dir, Summary: sum, HasSummary: err == nil, Generated: time.Now().UTC().Truncate(time.Second)}
	abs, _ := filepath.Abs(dir)
	p.Dir = abs
	if !p.HasSummary {
		p.Summary.Total = len(st.Instances)
		for _, in := range st.Instances {
			switch in.State {
			case results.StateSucceeded:
				p.Summary.Succeeded++
			case results.StateFailed:
				p.Summary.Failed++
			case results.StateLost:
				p.Summary.Lost++
			case results.StateCancelled:
				p.Summary.Cancelled++
			}
		}
	}
	if p.Summary.Start.IsZero() {
		p.Summary.Start, p.Summary.End = first, last
	}
	p.Wall = fmtDur(p.Summary.End.Sub(p.Summary.Start))

	var ran []web.Instance
	for _, in := range st.Instances {
		if !in.Start.IsZero() && !in.End.IsZero() {
			ran = append(ran, in)
		}
		if (in.State == results.StateFailed || in.State == results.StateLost) && len(p.Failed) < maxFailed {
			p.Failed = append(p.Failed, failedRow{Instance: in, Stderr: tail(filepath.Join(dir, in.Name, "stderr"))})
		}
		if in.State == results.StateFailed || in.State == results.StateLost {
			p.FailedTotal++
		}
	}
	slices.SortStableFunc(ran, func(a, b web.Instance) int { return cmp.Compare(b.End.Sub(b.Start), a.End.Sub(a.Start)) })
	for _, in := range ran[:min(slowest, len(ran))] {
		p.Slowest = append(p.Slowest, row{Instance: in, Duration: fmtDur(in.End.Sub(in.Start))})
	}
	p.Timeline = timeline(st.Instances, p.Summary.Start, p.Summary.End)
	return pageTmpl.Execute(w, p)
}

type page struct {
	Dir         string
	Generated   time.Time
	Summary     results.Summary
	HasSummary  bool
	Wall        string
	Slowest     []row
	Failed      []failedRow
	FailedTotal int
	Timeline    svgTimeline
}

type row struct {
	web.Instance
	Duration string
}

type failedRow struct {
	web.Instance
	Stderr string
}

// tail is the end of a file: its last tailLines lines within tailBytes.
func tail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(fi.Size()-tailBytes, 0)
	buf := make([]byte, fi.Size()-off)
	n, _ := f.ReadAt(buf, off)
	s := string(buf[:n])
	if off > 0 {
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			s = s[i+1:]
		}
	}
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > tailLines {
		lines = lines[len(lines)-tailLines:]
	}
	return strings.Join(lines, "\n")
}

type svgTimeline struct {
	Width, Height int
	Lanes         []lane
	Bars          []bar
	Ticks         []tick
	Dropped       int
}

type lane struct {
	Y     int
	Label string
}

type bar struct {
	X, Y, W       float64
	Result, Title string
	Mark          string
	MarkX, TextY  float64
}

type tick struct {
	X     float64
	Label string
}

// timeline lays out one lane per node and hwthread, one bar per attempt.
func timeline(insts []web.Instance, start, end time.Time) svgTimeline {
	type att struct {
		name string
		r    web.Attempt
	}
	var all []att
	for _, in := range insts {
		for _, r := range in.Runs {
			all = append(all, att{in.Name, r})
		}
	}
	slices.SortFunc(all, func(a, b att) int { return a.r.Start.Compare(b.r.Start) })
	var tl svgTimeline
	if len(all) > maxBars {
		tl.Dropped = len(all) - maxBars
		all = all[len(all)-maxBars:]
	}
	type key struct {
		node string
		hw   int // -1: not bound
	}
	lanes := map[key]int{}
	var keys []key
	for _, a := range all {
		hws := a.r.HWThreads
		if len(hws) == 0 {
			hws = []int{-1}
		}
		for _, h := range hws {
			k := key{a.r.Node, h}
			if _, ok := lanes[k]; !ok {
				lanes[k] = 0
				keys = append(keys, k)
			}
		}
		if a.r.Start.Before(start) || start.IsZero() {
			start = a.r.Start
		}
		if a.r.End.After(end) {
			end = a.r.End
		}
	}
	slices.SortFunc(keys, func(a, b key) int {
		return cmp.Or(strings.Compare(a.node, b.node), cmp.Compare(uint(a.hw), uint(b.hw)))
	})
	for i, k := range keys {
		lanes[k] = i
		label := k.node + " cpu " + fmt.Sprint(k.hw)
		if k.hw < 0 {
			label = k.node + " (unbound)"
		}
		tl.Lanes = append(tl.Lanes, lane{Y: i * laneHeight, Label: label})
	}
	span := end.Sub(start)
	if span <= 0 {
		span = time.Second
	}
	x := func(t time.Time) float64 { return labelWidth + float64(t.Sub(start))/float64(span)*plotWidth }
	for _, a := range all {
		e := a.r.End
		if e.IsZero() {
			e = end
		}
		hws := a.r.HWThreads
		if len(hws) == 0 {
			hws = []int{-1}
		}
		for _, h := range hws {
			b := bar{X: x(a.r.Start), Y: float64(lanes[key{a.r.Node, h}]*laneHeight + 2), Result: a.r.Result}
			b.W = max(x(e)-b.X, 2)
			b.Title = fmt.Sprintf("%s attempt %d: %s, %s", a.name, a.r.Attempt, cmp.Or(a.r.Detail, a.r.Result), fmtDur(e.Sub(a.r.Start)))
			switch a.r.Result {
			case results.StateFailed:
				b.Mark = "✗ " + a.name
			case results.StateLost:
				b.Mark = "? " + a.name
			}
			b.MarkX, b.TextY = b.X+b.W+2, b.Y+11
			tl.Bars = append(tl.Bars, b)
		}
	}
	tl.Width = labelWidth + plotWidth + 160
	tl.Height = len(keys)*laneHeight + 24
	steps := []time.Duration{time.Millisecond, 10 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
		time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 30 * time.Second, time.Minute, 5 * time.Minute, 10 * time.Minute, 30 * time.Minute, time.Hour}
	step := 2 * time.Hour
	for _, s := range steps {
		if span/s <= 10 {
			step = s
			break
		}
	}
	for v := time.Duration(0); v <= span; v += step {
		tl.Ticks = append(tl.Ticks, tick{X: x(start.Add(v)), Label: fmtDur(v)})
	}
	return tl
}

func fmtDur(d time.Duration) string {
	switch {
	case d < 0:
		return ""
	case d < time.Second:
		return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond))
	case d < time.Minute:
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
	return d.Round(time.Second).String()
}

var pageTmpl = template.Must(template.New("report").Funcs(template.FuncMap{
	"cpus": func(ids []int) string {
		s := make([]string, len(ids))
		for i, v := range ids {
			s[i] = fmt.Sprint(v)
		}
		return strings.Join(s, ",")
	},
	"add": func(a, b int) int { return a + b },
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>drover report: {{.Dir}}</title>
<style>
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1b1f24;margin:1.5em;max-width:1300px}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse}th,td{text-align:left;padding:.25em .7em;border-bottom:1px solid #d0d7de;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.st{display:inline-block;padding:0 .45em;border-radius:3px;font-size:.85em;border:1px solid;white-space:nowrap}
.st-succeeded{color:#1a7f37}.st-succeeded::before{content:"✓ "}
.st-failed{color:#fff;background:#cf222e;border-color:#cf222e}.st-failed::before{content:"✗ "}
.st-lost{color:#bc4c00;border-style:dotted;border-width:2px}.st-lost::before{content:"? "}
.st-cancelled{color:#8c959f;text-decoration:line-through}.st-cancelled::before{content:"– "}
.counts td{font-size:1.1em}
pre{background:#0d1117;color:#e6edf3;padding:.6em;border-radius:4px;white-space:pre-wrap;word-break:break-all;max-height:20em;overflow:auto;margin:.3em 0 1em}
.tl{overflow-x:auto;border:1px solid #d0d7de;border-radius:4px}
.bar-succeeded{fill:#1a7f37;stroke:#116329}.bar-failed{fill:url(#pf);stroke:#cf222e;stroke-width:2}
.bar-lost{fill:url(#pl);stroke:#bc4c00;stroke-dasharray:3 2}.bar-running,.bar-cancelled{fill:#8c959f}
.mark{fill:#cf222e;font-weight:700}.muted{color:#5b6470}
</style></head><body>
<h1>drover report</h1>
<p class="muted">{{.Dir}} — generated {{.Generated.Format "2006-01-02 15:04:05 MST"}}{{if not .HasSummary}} — no summary.json: the run did not end; counts are from the events{{end}}</p>
<h2>Summary</h2>
{{with .Summary}}<table class="counts"><tr><th>instances</th><th>succeeded</th><th>failed</th><th>lost</th><th>cancelled</th><th>skipped</th><th>started</th><th>wall time</th></tr>
<tr><td class="num">{{.Total}}</td><td class="num">{{.Succeeded}}</td><td class="num">{{.Failed}}</td><td class="num">{{.Lost}}</td><td class="num">{{.Cancelled}}</td><td class="num">{{.Skipped}}</td><td>{{.Start.Format "2006-01-02 15:04:05"}}</td><td>{{$.Wall}}</td></tr></table>
{{with .StoppedBecause}}<p>Stopped: {{.}}</p>{{end}}{{end}}
<h2>Timeline</h2>
<p class="muted">One lane per node and hwthread, a bar per attempt: solid = succeeded, hatched with ✗ = failed, dotted with ? = lost.{{if .Timeline.Dropped}} The first {{.Timeline.Dropped}} attempts are left out.{{end}}</p>
{{with .Timeline}}{{if .Lanes}}<div class="tl"><svg xmlns="http://www.w3.org/2000/svg" width="{{.Width}}" height="{{.Height}}" font-size="11" role="img" aria-label="timeline">
<defs><pattern id="pf" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#ffd8d3"/><line x1="0" y1="0" x2="0" y2="6" stroke="#cf222e" stroke-width="3"/></pattern>
<pattern id="pl" width="6" height="6" patternUnits="userSpaceOnUse"><rect width="6" height="6" fill="#fff1e5"/><circle cx="3" cy="3" r="1.5" fill="#bc4c00"/></pattern></defs>
{{range .Ticks}}<line x1="{{.X}}" x2="{{.X}}" y1="0" y2="{{add $.Timeline.Height -18}}" stroke="#d0d7de"/><text x="{{.X}}" y="{{add $.Timeline.Height -4}}" fill="#5b6470">{{.Label}}</text>
{{end}}{{range .Lanes}}<rect x="0" y="{{.Y}}" width="146" height="16" fill="#f6f8fa"/><text x="4" y="{{add .Y 12}}">{{.Label}}</text>
{{end}}{{range .Bars}}<g><title>{{.Title}}</title><rect class="bar-{{.Result}}" x="{{.X}}" y="{{.Y}}" width="{{.W}}" height="13" rx="2"/>{{if .Mark}}<text class="mark" x="{{.MarkX}}" y="{{.TextY}}">{{.Mark}}</text>{{end}}</g>
{{end}}</svg></div>{{else}}<p>Nothing ran.</p>{{end}}{{end}}
<h2>Slowest instances</h2>
{{if .Slowest}}<table><tr><th>instance</th><th>state</th><th>node</th><th>hwthreads</th><th>attempts</th><th class="num">duration</th><th>outcome</th></tr>
{{range .Slowest}}<tr><td>{{.Name}}</td><td><span class="st st-{{.State}}">{{.State}}</span></td><td>{{.Node}}</td><td>{{cpus .HWThreads}}</td><td class="num">{{.Attempts}}</td><td class="num">{{.Duration}}</td><td>{{.Outcome}}</td></tr>
{{end}}</table>{{else}}<p>None ran.</p>{{end}}
<h2>Failed and lost instances{{if .FailedTotal}} ({{.FailedTotal}}){{end}}</h2>
{{if .Failed}}{{range .Failed}}<h3><span class="st st-{{.State}}">{{.State}}</span> {{.Name}}</h3>
<p>{{.Outcome}}{{with .Node}} — on {{.}}{{end}}{{if .Attempts}}, {{.Attempts}} attempt(s){{end}}</p>
{{if .Stderr}}<p class="muted">end of stderr:</p><pre>{{.Stderr}}</pre>{{else}}<p class="muted">(no stderr)</p>{{end}}
{{end}}{{if gt .FailedTotal (len .Failed)}}<p>… and {{.FailedTotal}} in all; see summary.json.</p>{{end}}{{else}}<p>None: every instance that ran succeeded.</p>{{end}}
</body></html>
`))
