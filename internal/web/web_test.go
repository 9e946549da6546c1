package web

import (
	"bufio"
	"context"
	"encoding/json"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/drover-hpc/drover/internal/results"
)

func code(c int) *int { return &c }

// testAccess lets in the tests' requests, which get adds the token to.
var testAccess = Access{Token: "test-token"}

func get(url string) (*http.Response, error) {
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+testAccess.Token)
	return http.DefaultClient.Do(req)
}

// sseReader reads server-sent events from a stream.
type sseReader struct{ sc *bufio.Scanner }

func (r *sseReader) next(t *testing.T) (kind, data string) {
	t.Helper()
	for r.sc.Scan() {
		line := r.sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			kind = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			data = strings.TrimPrefix(line, "data: ")
		case line == "" && kind != "":
			return kind, data
		}
	}
	t.Fatalf("event stream ended: %v", r.sc.Err())
	return "", ""
}

func openEvents(t *testing.T, url string) *sseReader {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", url+"/api/events", nil)
	req.Header.Set("Authorization", "Bearer "+testAccess.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	return &sseReader{sc}
}

func TestSSEDeliversUpdates(t *testing.T) {
	src := NewRunSource(RunOptions{Title: "t", OutDir: t.TempDir(), Instances: []string{"a", "b"}})
	srv := httptest.NewServer(Handler(src, testAccess))
	t.Cleanup(srv.Close) // after the stream's cleanup closed it
	ev := openEvents(t, srv.URL)
	kind, data := ev.next(t)
	var st State
	if kind != "snapshot" || json.Unmarshal([]byte(data), &st) != nil || len(st.Instances) != 2 || st.Instances[0].State != StatePending {
		t.Fatalf("first event: %s %s", kind, data)
	}
	now := time.Now()
	src.OnEvent(results.Event{Time: now, Event: results.Started, Job: "a", Node: "n1", Attempt: 1, HWThreads: "2-3"})
	want := map[string]string{"a": StateRunning}
	seen := map[string]Instance{}
	for seen["a"].State != StateRunning {
		kind, data = ev.next(t)
		var u Update
		if kind != "update" || json.Unmarshal([]byte(data), &u) != nil {
			t.Fatalf("want an update, got %s %s", kind, data)
		}
		for _, in := range u.Instances {
			seen[in.Name] = in
		}
	}
	if in := seen["a"]; in.Node != "n1" || len(in.HWThreads) != 2 || in.HWThreads[1] != 3 || want["a"] != in.State {
		t.Fatalf("a: %+v", in)
	}
	src.OnEvent(results.Event{Time: now.Add(time.Second), Event: results.Finished, Job: "a", Node: "n1", Attempt: 1, ExitCode: code(3)})
	for seen["a"].State == StateRunning {
		_, data = ev.next(t)
		var u Update
		json.Unmarshal([]byte(data), &u)
		for _, in := range u.Instances {
			seen[in.Name] = in
		}
	}
	if in := seen["a"]; in.State != results.StateFailed || *in.ExitCode != 3 || len(in.Runs) != 1 || in.Runs[0].Result != results.StateFailed {
		t.Fatalf("a after exit 3: %+v", in)
	}
}

// A subscriber that does not read never blocks Apply, and gets one
// coalesced update (or a resync) when it reads again.
func TestSlowSubscriberCoalesces(t *testing.T) {
	m := NewModel("t", "run")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := m.Subscribe(ctx)
	names := make([]string, 3*maxDirty)
	for i := range names {
		names[i] = "i" + itoa(i)
	}
	start := time.Now()
	for round := range 3 {
		for i, n := range names[:10] {
			m.Apply(0, n, results.Event{Time: time.Now(), Event: results.Started, Node: "n", Attempt: round + 1, HWThreads: itoa(i)})
		}
	}
	// Few names changed many times: a few updates (the subscriber may have
	// taken one in the middle), ending with their latest records.
	latest := map[string]int{}
	updates := 0
	for len(latest) < 10 || slices.ContainsFunc(slices.Collect(maps.Values(latest)), func(a int) bool { return a != 3 }) {
		u := <-ch
		updates++
		if u.Resync {
			t.Fatalf("resync after %d changes", 30)
		}
		for _, in := range u.Instances {
			latest[in.Name] = in.Attempts
		}
	}
	if updates > 3 {
		t.Errorf("%d updates for 30 changes of 10 instances: not coalesced", updates)
	}
	// Too many changes for one update: a resync instead of a backlog.
	m.Add(0, names...)
	for u := range ch {
		if u.Resync {
			break
		}
		if len(u.Instances) > maxDirty {
			t.Fatalf("an update of %d instances", len(u.Instances))
		}
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("applying took %s", d)
	}
}

func TestMetricsText(t *testing.T) {
	src := NewRunSource(RunOptions{Title: "t", OutDir: t.TempDir(), Instances: []string{"a", "b", "c", "d"}})
	t0 := time.Now()
	src.OnEvent(results.Event{Time: t0, Event: results.RunStart})
	src.OnEvent(results.Event{Time: t0, Event: results.NodeUp, Node: "n", Cores: 2})
	src.OnEvent(results.Event{Time: t0.Add(time.Millisecond), Event: results.Started, Job: "a", Node: "n", Attempt: 1, HWThreads: "0"})
	src.OnEvent(results.Event{Time: t0.Add(time.Millisecond), Event: results.Started, Job: "b", Node: "n", Attempt: 1, HWThreads: "1"})
	src.OnEvent(results.Event{Time: t0.Add(5 * time.Millisecond), Event: results.Finished, Job: "a", Node: "n", Attempt: 1, ExitCode: code(0)})
	src.OnEvent(results.Event{Time: t0.Add(6 * time.Millisecond), Event: results.AttemptFailed, Job: "b", Node: "n", Attempt: 1, Signal: "SIGKILL"})
	src.OnEvent(results.Event{Time: t0.Add(7 * time.Millisecond), Event: results.Started, Job: "b", Node: "n", Attempt: 2, HWThreads: "1"})
	src.OnEvent(results.Event{Time: t0.Add(8 * time.Millisecond), Event: results.Finished, Job: "b", Node: "n", Attempt: 2, ExitCode: code(1)})
	src.OnEvent(results.Event{Time: t0.Add(9 * time.Millisecond), Event: results.Started, Job: "c", Node: "n", Attempt: 1, HWThreads: "0"})

	srv := httptest.NewServer(Handler(src, testAccess))
	defer srv.Close()
	resp, err := get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	get := func(name, label, value string) float64 {
		t.Helper()
		f := fams[name]
		if f == nil {
			t.Fatalf("no %s", name)
		}
		for _, m := range f.GetMetric() {
			ok := label == ""
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					ok = true
				}
			}
			if !ok {
				continue
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount())
			}
		}
		t.Fatalf("no %s{%s=%q}", name, label, value)
		return 0
	}
	for _, c := range []struct {
		name, label, value string
		want               float64
	}{
		{"drover_instance_starts_total", "", "", 4},
		{"drover_attempt_failures_total", "", "", 1},
		{"drover_instance_finishes_total", "outcome", "succeeded", 1},
		{"drover_instance_finishes_total", "outcome", "failed", 1},
		{"drover_instances", "state", "running", 1},
		{"drover_instances", "state", "pending", 1},
		{"drover_instances", "state", "succeeded", 1},
		{"drover_instances", "state", "failed", 1},
		{"drover_launch_latency_seconds", "", "", 4},
		{"drover_staged_bytes_total", "", "", 0},
	} {
		if got := get(c.name, c.label, c.value); got != c.want {
			t.Errorf("%s{%s=%q} = %v, want %v", c.name, c.label, c.value, got, c.want)
		}
	}
	if n, err := testutil.GatherAndCount(src.Metrics(), "drover_nodes"); err != nil || n == 0 {
		t.Errorf("drover_nodes: %d series, %v", n, err)
	}
	if probs, err := testutil.GatherAndLint(src.Metrics(), "drover_instance_starts_total", "drover_launch_latency_seconds", "drover_instances"); err != nil || len(probs) > 0 {
		t.Errorf("lint: %v %v", probs, err)
	}
}

func TestReadOnlyAndPages(t *testing.T) {
	src := NewRunSource(RunOptions{Title: "t", OutDir: t.TempDir(), Instances: []string{"x<script>"}})
	srv := httptest.NewServer(Handler(src, testAccess))
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /: %s", resp.Status)
	}
	for _, p := range []string{"/", "/static/app.js", "/static/app.css", "/api/state", "/api/instance?name=x%3Cscript%3E"} {
		resp, err := get(srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		bufio.NewReader(resp.Body).WriteTo(&b)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("GET %s: %s", p, resp.Status)
		}
		if p == "/" && (strings.Contains(b.String(), "x<script>") || !strings.Contains(b.String(), "x&lt;script&gt;")) {
			t.Errorf("GET /: the name is not escaped")
		}
	}
	resp, _ = get(srv.URL + "/api/instance?name=nope")
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("unknown instance: %s", resp.Status)
	}
}

// Removed instances leave the snapshot, the instance lookup and the
// gauges, and subscribers hear of it; one removed and back again ends up
// there; a subscriber that does not read while very many leave gets a
// resync, not a backlog.
func TestModelRemove(t *testing.T) {
	m := NewModel("t", "serve")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := m.Subscribe(ctx)
	m.Add(0, "a", "b")
	seen := map[string]Instance{}
	apply := func(u Update) {
		for _, n := range u.Removed {
			delete(seen, n)
		}
		for _, in := range u.Instances {
			seen[in.Name] = in
		}
	}
	for len(seen) < 2 {
		apply(<-ch)
	}
	m.Remove("a", "nope")
	m.Apply(0, "a", results.Event{Time: time.Now(), Event: results.Started, Node: "n", Attempt: 1})
	m.Remove("b")
	for seen["a"].State != StateRunning || seen["b"].Name != "" {
		apply(<-ch)
	}
	st := m.Snapshot()
	if len(st.Instances) != 1 || st.Instances[0].Name != "a" || len(st.Instances[0].Runs) != 1 {
		t.Errorf("snapshot after the removals: %+v", st.Instances)
	}
	if _, _, ok := m.Instance("b"); ok {
		t.Errorf("b is still found")
	}
	want := `
# HELP drover_instances Instances by state.
# TYPE drover_instances gauge
drover_instances{state="cancelled"} 0
drover_instances{state="failed"} 0
drover_instances{state="lost"} 0
drover_instances{state="pending"} 0
drover_instances{state="running"} 1
drover_instances{state="succeeded"} 0
`
	if err := testutil.GatherAndCompare(m.Metrics(), strings.NewReader(want), "drover_instances"); err != nil {
		t.Errorf("gauges after the removals: %v", err)
	}

	names := make([]string, maxDirty+10)
	for i := range names {
		names[i] = "p" + itoa(i)
	}
	m.Add(0, names...)
	for u := range ch {
		if u.Resync || len(u.Instances) > len(names)/2 {
			break
		}
	}
	m.Remove(names...)
	for u := range ch {
		if u.Resync {
			break
		}
		if len(u.Removed) > maxDirty {
			t.Fatalf("an update removes %d", len(u.Removed))
		}
	}
}
