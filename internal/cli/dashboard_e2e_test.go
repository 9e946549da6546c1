package cli_test

// End-to-end tests of the dashboard, /metrics, drover report and drover
// completion, against the real binary. The browser test drives headless
// Chromium over the DevTools protocol (chromedp).
//
// With DROVER_DOCS=1 the tests also refresh docs/report.html (the report
// of examples/hello.yaml) and docs/img/report.png (its picture);
// TestDashboardTellsTheTruth refreshes the dashboard's.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/drover-hpc/drover/internal/browsertest"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// dashState is the part of /api/state the tests look at.
type dashState struct {
	Nodes []struct {
		Name  string `json:"name"`
		State string `json:"state"`
	} `json:"nodes"`
	Instances []struct {
		Name     string `json:"name"`
		State    string `json:"state"`
		Attempts int    `json:"attempts"`
	} `json:"instances"`
}

// dash is a dashboard: its address and its token.
type dash struct{ base, token string }

func (s *server) dash() dash { return dash{s.info.HTTP, s.info.Token} }

// get fetches path with the token as a bearer, as programs do.
func (d dash) get(t *testing.T, path string) *http.Response {
	t.Helper()
	req, err := http.NewRequest("GET", d.base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+d.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func getState(t *testing.T, d dash) dashState {
	t.Helper()
	resp := d.get(t, "/api/state")
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/api/state: %s", resp.Status)
	}
	var st dashState
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// waitStates waits until the dashboard shows each named instance in its
// state.
func waitStates(t *testing.T, d dash, want map[string]string) {
	t.Helper()
	eventually(t, func() string {
		st := getState(t, d)
		got := map[string]string{}
		for _, in := range st.Instances {
			got[in.Name] = in.State
		}
		for n, s := range want {
			if got[n] != s {
				return fmt.Sprintf("dashboard states %v, want %v", got, want)
			}
		}
		return ""
	})
}

// metricValues scrapes /metrics into "name{label=value}" -> value (the
// sample count for histograms).
func metricValues(t *testing.T, d dash) map[string]float64 {
	t.Helper()
	resp := d.get(t, "/metrics")
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("/metrics content type %q", ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			key := name
			for _, l := range m.GetLabel() {
				key += "{" + l.GetName() + "=" + l.GetValue() + "}"
			}
			switch {
			case m.Counter != nil:
				out[key] = m.Counter.GetValue()
			case m.Gauge != nil:
				out[key] = m.Gauge.GetValue()
			case m.Histogram != nil:
				out[key] = float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return out
}

// /metrics against a real serve: the counts match what ran.
func TestMetricsMatchServeRun(t *testing.T) {
	t.Parallel()
	home := filepath.Join(t.TempDir(), "home")
	s := startServe(t, home)
	dir := t.TempDir()
	writeFile(t, dir, "jobs.yaml", `jobs:
  - name: ok
    command: [sh, -c, 'echo fine']
    repeat: 3
  - name: bad
    shell: 'echo broken >&2; exit 4'
  - name: flaky
    shell: 'exit 1'
    retries: 1
`)
	wantCode(t, droverHome(t, home, dir, "submit", "jobs.yaml"), 0)
	waitStates(t, s.dash(), map[string]string{"1.ok.0": "succeeded", "1.ok.1": "succeeded", "1.ok.2": "succeeded", "1.bad": "failed", "1.flaky": "failed"})

	// The same counts as drover jobs, and one start per attempt.
	var jobs []struct{ State string }
	r := droverHome(t, home, dir, "jobs", "--json")
	wantCode(t, r, 0)
	if err := json.Unmarshal([]byte(r.stdout), &jobs); err != nil {
		t.Fatalf("jobs --json: %v\n%s", err, r)
	}
	byState := map[string]float64{}
	for _, j := range jobs {
		byState[j.State]++
	}
	m := metricValues(t, s.dash())
	for _, c := range []struct {
		key  string
		want float64
	}{
		{"drover_instances{state=succeeded}", byState["succeeded"]},
		{"drover_instances{state=failed}", byState["failed"]},
		{"drover_instances{state=running}", 0},
		{"drover_instance_finishes_total{outcome=succeeded}", 3},
		{"drover_instance_finishes_total{outcome=failed}", 2},
		{"drover_instance_starts_total", 6},
		{"drover_attempt_failures_total", 1},
		{"drover_nodes{state=up}", 1},
		{"drover_launch_latency_seconds", 6},
		{"drover_staged_bytes_total", 0},
	} {
		if got, ok := m[c.key]; !ok || got != c.want {
			t.Errorf("%s = %v (present %v), want %v", c.key, got, ok, c.want)
		}
	}
	if byState["succeeded"] != 3 || byState["failed"] != 2 {
		t.Errorf("drover jobs: %v", byState)
	}
	// Observed after the events are in (one per final exit), and the
	// RTT once a heartbeat came back.
	eventually(t, func() string {
		m := metricValues(t, s.dash())
		if got := m["drover_time_to_report_seconds"]; got != 5 {
			return fmt.Sprintf("drover_time_to_report_seconds count %v, want 5", got)
		}
		for k := range m {
			if strings.HasPrefix(k, "drover_node_heartbeat_rtt_seconds{node=") {
				return ""
			}
		}
		return "no heartbeat RTT in /metrics"
	})

	// Output through the dashboard's log endpoint.
	resp := s.dash().get(t, "/api/logs?name=1.bad&stream=stderr")
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "broken\n" {
		t.Errorf("stderr of 1.bad through the dashboard: %q", body)
	}
}

// drover run --dashboard serves while the run lasts.
func TestRunDashboard(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), backstop)
	defer cancel()
	cmd := exec.CommandContext(ctx, droverBin, "run", "--dashboard", "--progress", "plain", "--out", "out", "--repeat", "2", "--", "sleep", "3")
	cmd.Dir = dir
	cmd.Env = testEnv()
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGQUIT) }
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	url, token := "", ""
	sc := bufio.NewScanner(stderr)
	re := regexp.MustCompile(`dashboard at (http://127\.0\.0\.1:\d+)/\?token=([A-Za-z0-9_-]+)$`)
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			url, token = m[1], m[2]
			break
		}
	}
	go io.Copy(io.Discard, stderr)
	if url == "" {
		cmd.Wait()
		t.Fatalf("no dashboard URL on stderr:\n%s", strings.Join(lines, "\n"))
	}
	// The run's dashboard is as private as serve's.
	for _, p := range []string{"/", "/api/state", "/api/logs?name=sleep.0", "/metrics"} {
		if resp := (dash{url, "not-" + token}).get(t, p); resp.StatusCode != http.StatusForbidden {
			t.Errorf("run dashboard %s with a wrong token: %s", p, resp.Status)
		} else {
			resp.Body.Close()
		}
		resp, err := http.Get(url + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("run dashboard %s without the token: %s", p, resp.Status)
		}
	}
	d := dash{url, token}
	waitStates(t, d, map[string]string{"sleep.0": "running", "sleep.1": "running"})
	m := metricValues(t, d)
	if m["drover_instance_starts_total"] != 2 || m["drover_instances{state=running}"] != 2 {
		t.Errorf("metrics during the run: starts %v, running %v", m["drover_instance_starts_total"], m["drover_instances{state=running}"])
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("drover run: %v", err)
	}
	if _, err := http.Get(url + "/api/state"); err == nil {
		t.Errorf("the dashboard still answers after the run")
	}
}

func TestReportFromRun(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	r := drover(t, dir, "run", "--progress", "none", "--out", "out", filepath.Join(repoRoot, "examples", "hello.yaml"))
	wantCode(t, r, 1) // broken fails on purpose
	out := filepath.Join(dir, "out")
	r = drover(t, dir, "report", "out")
	wantCode(t, r, 0)
	if strings.TrimSpace(r.stdout) != filepath.Join("out", "report.html") && strings.TrimSpace(r.stdout) != filepath.Join(out, "report.html") {
		t.Errorf("report prints %q", r.stdout)
	}
	html := readFile(t, filepath.Join(out, "report.html"))
	for _, want := range []string{"<svg", "hello.0", "wide", "broken", "about to fail", "failed, exit 3", "Slowest", ">8<", ">7<"} {
		if !strings.Contains(html, want) {
			t.Errorf("report.html lacks %q", want)
		}
	}
	// Self-contained: no scripts, nothing fetched.
	for _, bad := range []string{"<script", "src=", "<link", "@import", "url(http"} {
		if strings.Contains(html, bad) {
			t.Errorf("report.html has %q", bad)
		}
	}
	if os.Getenv("DROVER_DOCS") == "1" {
		writeDoc(t, "report.html", []byte(strings.ReplaceAll(html, out, "drover-out")))
		screenshotFile(t, filepath.Join(repoRoot, "docs", "report.html"), filepath.Join(repoRoot, "docs", "img", "report.png"))
	}
	// Not a results directory: usage error.
	r = drover(t, dir, "report", dir)
	wantCode(t, r, 2)
}

// screenshotFile has headless Chromium take a picture of a local page.
func screenshotFile(t *testing.T, page, png string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(png), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), backstop)
	defer cancel()
	cmd := exec.CommandContext(ctx, findChromium(t), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
		"--user-data-dir="+t.TempDir(), "--window-size=1280,900", "--screenshot="+png, "file://"+page)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("screenshot of %s: %v\n%s", page, err, out)
	}
}

func writeDoc(t *testing.T, name string, data []byte) {
	t.Helper()
	path := filepath.Join(repoRoot, "docs", name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestCompletion(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for shell, want := range map[string]string{"bash": "complete -o default -F __start_drover drover", "zsh": "#compdef drover", "fish": "complete -c drover"} {
		r := drover(t, dir, "completion", shell)
		wantCode(t, r, 0)
		if !strings.Contains(r.stdout, want) {
			t.Errorf("completion %s lacks %q", shell, want)
		}
	}
	wantCode(t, drover(t, dir, "completion", "tcsh"), 2)
	wantCode(t, drover(t, dir, "completion"), 2)
}

// findChromium finds a chromium. When there is none, it installs Debian's
// only if DROVER_INSTALL=1 asks for it (scripts/test sets it): a plain go
// test changes nothing on the machine.
func findChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless_shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	switch _, aptErr := exec.LookPath("apt-get"); {
	case os.Getenv("DROVER_INSTALL") != "1":
		t.Skip("needs chromium: none found; DROVER_INSTALL=1 lets the test install it (apt-get install chromium, as root)")
	case os.Geteuid() != 0 || aptErr != nil:
		t.Skip("needs chromium: none found, and installing it needs root and apt-get")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "apt-get", "install", "-y", "-q", "chromium")
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		// No package mirror reachable, most often: the machine lacks it.
		t.Logf("apt-get install chromium: %v\n%s", err, out)
		t.Skipf("needs chromium: none found, and apt-get install chromium failed: %v", err)
	}
	p, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("apt-get installed chromium, but: %v", err)
	}
	return p
}

// The dashboard in a real browser, against a real serve.
func TestDashboardBrowser(t *testing.T) {
	t.Parallel()
	chromium := findChromium(t)
	home := filepath.Join(t.TempDir(), "home")
	s := startServe(t, home)
	dir := t.TempDir()
	// longrun comes last: the queue may queue an instance behind a running
	// one on its core (pipelined starts), which should not be longrun.
	writeFile(t, dir, "jobs.yaml", `jobs:
  - name: hi
    shell: 'echo "hello from the dashboard test"; echo "a warning" >&2'
  - name: bad
    shell: 'echo "this fails" >&2; exit 7'
  - name: longrun
    command: [sleep, "120"]
`)
	writeFile(t, dir, "later.yaml", "jobs:\n  - name: later\n    command: [sleep, \"120\"]\n")
	wantCode(t, droverHome(t, home, dir, "submit", "jobs.yaml"), 0)
	waitStates(t, s.dash(), map[string]string{"1.longrun": "running", "1.hi": "succeeded", "1.bad": "failed"})

	bctx := browsertest.Start(t, chromium)
	base := s.info.HTTP + "/"
	if !strings.HasPrefix(s.info.Dashboard, base+"?token=") {
		t.Fatalf("serve.json dashboard %q", s.info.Dashboard)
	}
	page := func() string {
		ctx, cancel := context.WithTimeout(bctx, 5*time.Second)
		defer cancel()
		html, _ := chromedp.Run(ctx, chromedp.OuterHTML(chromedp.CSS("main")))
		return html
	}
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		ctx, cancel := context.WithTimeout(bctx, backstop)
		defer cancel()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v\npage: %.3000s", what, err, page())
		}
	}
	text := func(sel string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(bctx, backstop)
		defer cancel()
		s, err := chromedp.Run(ctx, chromedp.TextContent(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v\npage: %.3000s", sel, err, page())
		}
		return s
	}
	css := func(sel string) chromedp.CSS { return chromedp.CSS(sel) }

	// The cluster map: the node and the running instance on a hwthread.
	// The printed URL: its token becomes a cookie, then leaves the
	// address bar; the view asked for stays.
	do("cluster map", chromedp.Navigate(s.info.Dashboard+"#/map"), chromedp.WaitVisible(css(`#map .hw.used[data-instance="1.longrun"]`)))
	if txt := text(`#map .node`); !strings.Contains(txt, "1.longrun") || !strings.Contains(txt, "up") && !strings.Contains(txt, "busy") {
		t.Errorf("cluster map: %q", txt)
	}
	// A marker that a reload would lose.
	ctx, cancel := context.WithTimeout(bctx, backstop)
	defer cancel()
	if href, err := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href`)); err != nil || href != base+"#/map" {
		t.Errorf("address after the printed URL: %q (%v), want %q", href, err, base+"#/map")
	}
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[int](`window.droverTestMarker = 42`)); err != nil {
		t.Fatal(err)
	}

	// The jobs table: every instance with its state as text.
	do("jobs table", chromedp.Navigate(base+"#/jobs"), chromedp.WaitVisible(css(`#jobs tr[data-instance="1.bad"]`)))
	if txt := text(`#jobs tr[data-instance="1.bad"]`); !strings.Contains(txt, "failed") || !strings.Contains(txt, "exit 7") {
		t.Errorf("jobs row of 1.bad: %q", txt)
	}
	if txt := text(`#jobs tr[data-instance="1.hi"]`); !strings.Contains(txt, "succeeded") {
		t.Errorf("jobs row of 1.hi: %q", txt)
	}
	do("filter failed", chromedp.Click(css(`button[data-filter="failed"]`)),
		chromedp.WaitNotPresent(css(`#jobs tr[data-instance="1.hi"]`)),
		chromedp.WaitVisible(css(`#jobs tr[data-instance="1.bad"]`)))

	// A finished instance's output on its page.
	do("instance page", chromedp.Navigate(base+"#/instance/1.hi"),
		chromedp.WaitVisible(css(`#out-stdout[data-complete="1"]`)), chromedp.WaitVisible(css(`#out-stderr[data-complete="1"]`)))
	if txt := text(`#out-stdout`); !strings.Contains(txt, "hello from the dashboard test") {
		t.Errorf("stdout of 1.hi on its page: %q", txt)
	}
	if txt := text(`#out-stderr`); !strings.Contains(txt, "a warning") {
		t.Errorf("stderr of 1.hi on its page: %q", txt)
	}
	do("instance events", chromedp.WaitVisible(css(`#inst-events tr.ev-finished`)))

	// The failure on the timeline, marked by more than colour.
	do("timeline", chromedp.Navigate(base+"#/timeline"),
		chromedp.WaitVisible(css(`#timeline-svg g[data-instance="1.bad"][data-result="failed"]`)))
	if txt := text(`#timeline-svg g[data-instance="1.bad"] text.mark`); !strings.Contains(txt, "✗") {
		t.Errorf("failure mark on the timeline: %q", txt)
	}

	// A new instance shows up without a reload.
	do("back to the map", chromedp.Navigate(base+"#/map"), chromedp.WaitVisible(css(`#map`)))
	wantCode(t, droverHome(t, home, dir, "submit", "later.yaml"), 0)
	do("live update", chromedp.WaitVisible(css(`#map .hw.used[data-instance="2.later"]`)))
	if marker, err := chromedp.Run(ctx, chromedp.Evaluate[int](`window.droverTestMarker || 0`)); err != nil || marker != 42 {
		t.Errorf("the page was reloaded (marker %d, %v)", marker, err)
	}
}
