package cli_test

// The dashboard of a real serve tells what drover poll tells: processes
// started with drover start show their node and hwthreads while they run,
// purged ones leave, unbound ones are listed by name and get lanes of
// their own, the header counts what is there now, and a reserved cell
// names its holder. Each check reads the page the script renders (the
// server-rendered fallback has none of #map, #unbound, #jobs or the
// timeline).

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/drover-hpc/drover/internal/browsertest"
)

// truthState is the part of /api/state these tests look at.
type truthState struct {
	Nodes []struct {
		Name  string `json:"name"`
		Cores [][]int
	} `json:"nodes"`
	Instances []truthInstance `json:"instances"`
}

type truthInstance struct {
	Name       string `json:"name"`
	Submission int    `json:"submission"`
	State      string `json:"state"`
	Node       string `json:"node"`
	HWThreads  []int  `json:"hwthreads"`
	Reserved   []int  `json:"reserved"`
	Attempts   int    `json:"attempts"`
}

func truthStateOf(t *testing.T, d dash) truthState {
	t.Helper()
	resp := d.get(t, "/api/state")
	defer resp.Body.Close()
	var st truthState
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("/api/state: %v", err)
	}
	return st
}

func (st truthState) instance(name string) (truthInstance, bool) {
	i := slices.IndexFunc(st.Instances, func(in truthInstance) bool { return in.Name == name })
	if i < 0 {
		return truthInstance{}, false
	}
	return st.Instances[i], true
}

// pollCounts runs drover poll --json: how many processes run, how many
// have ended.
func pollCounts(t *testing.T, home, dir string) (running, ended int) {
	t.Helper()
	r := droverHome(t, home, dir, "poll", "--json")
	wantCode(t, r, 0)
	var ps []struct {
		Running bool `json:"running"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &ps); err != nil {
		t.Fatalf("poll --json: %v\n%s", err, r)
	}
	for _, p := range ps {
		if p.Running {
			running++
		} else {
			ended++
		}
	}
	return running, ended
}

// browser starts headless Chromium for the test; it lives as long as the
// test.
func browser(t *testing.T) context.Context {
	t.Helper()
	return browsertest.Start(t, findChromium(t))
}

// untilJS waits (bounded) until the page is as expr wants it.
func untilJS(t *testing.T, bctx context.Context, what, expr string) {
	t.Helper()
	browsertest.Until(t, bctx, backstop, what, expr)
}

func navigate(t *testing.T, bctx context.Context, url string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(bctx, backstop)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("navigate to %s: %v", url, err)
	}
}

// until retries f until it returns "" or the backstop passes; then the
// test fails with its last complaint, and goes on.
func until(t *testing.T, what string, f func() string) {
	t.Helper()
	deadline := time.Now().Add(backstop)
	for {
		msg := f()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: %s", what, msg)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// jsRendered is a complaint when the script has not rendered the page
// from live data yet.
const jsRendered = `(document.getElementById("conn").textContent !== "live") ? "not live: " + document.getElementById("conn").textContent : `

func TestDashboardTellsTheTruth(t *testing.T) {
	t.Parallel()
	bctx := browser(t)
	home := filepath.Join(t.TempDir(), "home")
	s := startServe(t, home)
	dir := t.TempDir()
	d := s.dash()
	st := truthStateOf(t, d)
	if len(st.Nodes) != 1 || len(st.Nodes[0].Cores) < 2 {
		t.Fatalf("want one node of two cores or more: %+v", st.Nodes)
	}
	nodeName := st.Nodes[0].Name
	// The last core's first hwthread: held reserves its core.
	last := st.Nodes[0].Cores[len(st.Nodes[0].Cores)-1]
	heldHW := last[0]

	// They sleep longer than every wait below may take (serve stops them
	// when the test ends).
	start := func(name string, flags ...string) {
		t.Helper()
		args := append([]string{"start", "--node", nodeName, "--name", name}, flags...)
		wantCode(t, droverHome(t, home, dir, append(args, "--", "sleep", "600")...), 0)
	}
	start("held", "--hwthreads", fmt.Sprint(heldHW))
	start("free1")
	start("free2")
	start("stopped")
	start("gone")
	// A job beside them: one instance done, one running on a free core.
	writeFile(t, dir, "jobs.yaml", "jobs:\n  - name: ok\n    shell: 'true'\n  - name: sim\n    command: [sleep, '600']\n")
	wantCode(t, droverHome(t, home, dir, "submit", "jobs.yaml"), 0)
	waitStates(t, d, map[string]string{"held": "running", "free1": "running", "free2": "running", "stopped": "running", "gone": "running", "1.ok": "succeeded", "1.sim": "running"})
	wantCode(t, droverHome(t, home, dir, "stop", "stopped"), 0)
	wantCode(t, droverHome(t, home, dir, "stop", "gone"), 0)
	eventually(t, func() string {
		if r := droverHome(t, home, dir, "poll", "gone", "stopped"); r.code != 0 || strings.Contains(r.stdout, "running") {
			return "gone and stopped still run: " + r.stdout
		}
		return ""
	})
	wantCode(t, droverHome(t, home, dir, "purge", "gone"), 0)

	// The model, through /api/state.
	until(t, "/api/state after the purge", func() string {
		st := truthStateOf(t, d)
		if in, ok := st.instance("gone"); ok {
			return fmt.Sprintf("purged gone is still in /api/state: %+v", in)
		}
		if in, ok := st.instance("stopped"); !ok || in.State == "running" {
			return fmt.Sprintf("stopped: %+v (present %v)", in, ok)
		}
		return ""
	})
	st = truthStateOf(t, d)
	for _, c := range []struct {
		name string
		hw   []int
	}{{"held", []int{heldHW}}, {"free1", nil}, {"free2", nil}} {
		in, _ := st.instance(c.name)
		if in.State != "running" || in.Node != nodeName || !slices.Equal(in.HWThreads, c.hw) || in.Attempts != 1 {
			t.Errorf("/api/state %s: %+v, want running on %s, hwthreads %v, 1 attempt", c.name, in, nodeName, c.hw)
		}
	}
	if in, _ := st.instance("held"); !slices.Equal(in.Reserved, last) {
		t.Errorf("/api/state held reserves %v, want its core %v", in.Reserved, last)
	}

	// The cluster map: the reserved core names its holder; the unbound
	// processes are listed with their node and a link, no raw URL.
	navigate(t, bctx, s.info.Dashboard+"#/map")
	for _, hw := range last {
		untilJS(t, bctx, fmt.Sprintf("cpu %d of held's core", hw), jsRendered+fmt.Sprintf(`(() => {
			const c = document.querySelector('#map .hw[data-hw="%d"]');
			if (!c) return "no cell";
			if (c.dataset.instance !== "held" || !c.title.includes("held") || !c.textContent.includes("held")) return "cell: " + c.outerHTML;
			return "";
		})()`, hw))
	}
	untilJS(t, bctx, "unbound list", jsRendered+fmt.Sprintf(`(() => {
		const box = document.getElementById("unbound");
		if (!box) return "no #unbound: " + document.getElementById("view").innerText.slice(-300);
		if (/https?:/.test(box.textContent) || /(^|:)\s*,/.test(box.textContent)) return "raw text: " + box.textContent;
		for (const name of ["free1", "free2"]) {
			const row = box.querySelector('[data-instance="' + name + '"]');
			if (!row) return "no row of " + name + ": " + box.innerText;
			const a = row.querySelector('a[href="#/instance/' + name + '"]');
			if (!a || a.textContent !== name) return name + " has no link: " + row.outerHTML;
			if (!row.textContent.includes(%q)) return name + " lacks its node: " + row.innerText;
		}
		if (box.querySelector('[data-instance="held"],[data-instance="gone"],[data-instance="stopped"]')) return "lists others: " + box.innerText;
		return "";
	})()`, nodeName))

	// The header counts what drover poll shows, and the job apart.
	running, ended := pollCounts(t, home, dir)
	if running != 3 || ended != 1 {
		t.Errorf("drover poll: %d running, %d ended; want 3 and 1", running, ended)
	}
	untilJS(t, bctx, "header", jsRendered+fmt.Sprintf(`(() => {
		const txt = document.getElementById("totals").textContent;
		const want = [%q, %q, %q];
		return want.every(w => txt.includes(w)) ? "" : "header " + JSON.stringify(txt) + ", want " + JSON.stringify(want);
	})()`, fmt.Sprintf("%d processes: %d running, %d ended", running+ended, running, ended), "2 job instances: 1 running, 1 succeeded", "·"))

	// The jobs table: where each runs, one attempt; the purged one is not
	// there.
	navigate(t, bctx, s.info.HTTP+"/#/jobs")
	untilJS(t, bctx, "jobs table", jsRendered+fmt.Sprintf(`(() => {
		const rows = document.querySelectorAll("#jobs tbody tr");
		if (!rows.length) return "no rows";
		if (document.querySelector('#jobs tr[data-instance="gone"]')) return "the purged process is listed";
		const cells = name => [...(document.querySelector('#jobs tr[data-instance="' + name + '"]') || {children: []}).children].map(c => c.textContent);
		const held = cells("held"), free = cells("free1");
		if (held[2] !== %q || held[3] !== %q || held[4] !== "1") return "held: " + JSON.stringify(held);
		if (free[2] !== %q || free[3] !== "" || free[4] !== "1") return "free1: " + JSON.stringify(free);
		return "";
	})()`, nodeName, fmt.Sprint(heldHW), nodeName))

	// The timeline: the unbound processes, which ran at once, each in a
	// lane of its own on their node; the bound ones on their hwthreads.
	navigate(t, bctx, s.info.HTTP+"/#/timeline")
	untilJS(t, bctx, "timeline lanes", jsRendered+fmt.Sprintf(`(() => {
		const labels = [...document.querySelectorAll("#timeline-svg .lane-label")].map(l => l.textContent);
		const label = y => labels[[...document.querySelectorAll("#timeline-svg .lane-bg")].findIndex(r => +r.getAttribute("y") + 2 === y)];
		const bars = [...document.querySelectorAll("#timeline-svg g[data-instance]")].map(g => {
			const r = g.querySelector("rect");
			return {name: g.dataset.instance, lane: label(+r.getAttribute("y")), x1: +r.getAttribute("x"), x2: +r.getAttribute("x") + +r.getAttribute("width")};
		});
		for (const n of ["held", "free1", "free2", "stopped", "1.ok", "1.sim"]) if (!bars.some(b => b.name === n)) return "no bar of " + n;
		const unbound = bars.filter(b => ["free1", "free2", "stopped"].includes(b.name));
		for (const a of unbound) for (const b of unbound) {
			if (a !== b && a.lane === b.lane && a.x1 < b.x2 && b.x1 < a.x2) return a.name + " and " + b.name + " overlap in lane " + a.lane;
		}
		if (labels.some(l => !l.startsWith(%q))) return "a lane not of the node: " + JSON.stringify(labels);
		const lane = n => bars.find(b => b.name === n).lane;
		if (lane("held") !== %q) return "held in lane " + lane("held");
		if (bars.some(b => b.name === "gone")) return "a bar of the purged process";
		return "";
	})()`, nodeName+" ", nodeName+" cpu "+fmt.Sprint(heldHW)))

	// With DROVER_DOCS=1: the README's pictures of the map and the
	// timeline.
	if os.Getenv("DROVER_DOCS") == "1" {
		ctx, cancel := context.WithTimeout(bctx, backstop)
		defer cancel()
		// Small pictures: the page is short.
		if err := chromedp.Do(ctx, chromedp.EmulateViewport(1000, 330)); err != nil {
			t.Fatal(err)
		}
		for _, view := range []string{"map", "timeline"} {
			navigate(t, bctx, s.info.HTTP+"/#/"+view)
			untilJS(t, bctx, view+" for the screenshot", jsRendered+`document.querySelector("#unbound, #timeline-svg") ? "" : "not drawn yet"`)
			png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // 100: PNG
			if err != nil {
				t.Fatal(err)
			}
			writeDoc(t, "img/dashboard-"+view+".png", png)
		}
	}
}
