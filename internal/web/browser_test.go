package web

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/drover-hpc/drover/internal/browsertest"
	"github.com/drover-hpc/drover/internal/childtest"
	"github.com/drover-hpc/drover/internal/cluster"
	"github.com/drover-hpc/drover/internal/node"
)

// chromium starts headless Chromium for the test (skipped without one:
// internal/cli's browser tests say how to install it).
func chromium(t *testing.T) context.Context {
	t.Helper()
	path := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless_shell"} {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		t.Skip("needs chromium: none found")
	}
	return browsertest.Start(t, path)
}

// pageUntil waits (bounded) until the page is as expr wants it.
func pageUntil(t *testing.T, bctx context.Context, what, expr string) {
	t.Helper()
	browsertest.Until(t, bctx, backstop, what, expr)
}

// The live page of a cluster whose core has two hwthreads: the sibling a
// bound process holds names it, unbound processes are listed and laned
// apart, and a purged one leaves the page without a reload.
func TestLivePageHoldersAndUnbound(t *testing.T) {
	c, core := smtCluster(t)
	ctx := ctxT(t)
	// Chromium is a child of the test process that no supervisor started:
	// the agent's takes it for an orphan of the processes that started
	// before it, and kills it once they have all ended. So they sleep
	// longer than any wait here, and the cluster stops them at the end.
	for _, p := range []struct {
		name string
		hw   []int
	}{{"held", core[:1]}, {"u1", nil}, {"u2", nil}, {"u3", nil}} {
		_, err := c.Start(ctx, cluster.StartRequest{Node: "n1", HWThreads: p.hw, Spec: node.ProcessSpec{Name: p.name, Args: childtest.Argv("sleep=30m")}})
		if err != nil {
			t.Fatalf("start %s: %v", p.name, err)
		}
	}
	src := NewClusterSource(c, ClusterOptions{Title: "drover serve", Every: 50 * time.Millisecond})
	rctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { src.Run(rctx) })
	srv := httptest.NewServer(Handler(src, testAccess))
	// Closing the server waits for the page's event stream, which ends
	// with the browser: chromium is started after this cleanup is
	// registered, so it is stopped before.
	t.Cleanup(func() { srv.Close(); stop(); wg.Wait() })
	bctx := chromium(t)
	nav := func(hash string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(bctx, backstop)
		defer cancel()
		if err := chromedp.Do(ctx, chromedp.Navigate(srv.URL+"/?token="+testAccess.Token+hash)); err != nil {
			t.Fatal(err)
		}
	}

	nav("#/map")
	pageUntil(t, bctx, "the held sibling", fmt.Sprintf(`(() => {
		const bound = document.querySelector('#map .hw[data-hw="%d"]'), sib = document.querySelector('#map .hw[data-hw="%d"]');
		if (!bound || !sib) return "no cells";
		if (!bound.classList.contains("used") || bound.dataset.instance !== "held") return "bound cell: " + bound.outerHTML;
		if (!sib.classList.contains("reserved") || sib.dataset.instance !== "held" || !sib.title.includes("reserved by held") ||
			!sib.textContent.includes("held") || sib.getAttribute("href") !== "#/instance/held") return "sibling: " + sib.outerHTML;
		return "";
	})()`, core[0], core[1]))
	unboundAre := func(want string) string {
		return fmt.Sprintf(`(() => {
			const box = document.getElementById("unbound");
			if (!box) return "no #unbound";
			const rows = [...box.querySelectorAll("tbody tr")].map(r => r.dataset.instance + "@" + r.children[1].textContent + ":" + r.querySelector("a").getAttribute("href"));
			const txt = rows.join(" ");
			return txt === %q && !/https?:/.test(box.textContent) ? "" : "rows " + txt + " text " + box.textContent;
		})()`, want)
	}
	pageUntil(t, bctx, "unbound list", unboundAre("u1@n1:#/instance/u1 u2@n1:#/instance/u2 u3@n1:#/instance/u3"))
	pageUntil(t, bctx, "header", `document.getElementById("totals").textContent === "4 processes: 4 running" ? "" : document.getElementById("totals").textContent`)

	if os.Getenv("DROVER_DOCS") == "1" {
		// The README's picture of a held sibling (the docs are two levels
		// up from this package's directory, where go test runs).
		ctx, cancel := context.WithTimeout(bctx, backstop)
		defer cancel()
		if err := chromedp.Do(ctx, chromedp.EmulateViewport(1000, 300)); err != nil {
			t.Fatal(err)
		}
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join("..", "..", "docs", "img", "dashboard-reserved.png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// Purged: it leaves the live page, without a reload (a marker a reload
	// would lose stays).
	mctx, mcancel := context.WithTimeout(bctx, backstop)
	defer mcancel()
	if err := chromedp.Do(mctx, chromedp.Evaluate[chromedp.Void](`window.droverTestMarker = 42`)); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(ctx, "u2", time.Second); err != nil {
		t.Fatal(err)
	}
	for {
		ps, err := c.Poll(ctx, "", []string{"u2"})
		if err != nil {
			t.Fatal(err)
		}
		if ps[0].State == node.Exited {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := c.Purge(ctx, "u2"); err != nil {
		t.Fatal(err)
	}
	pageUntil(t, bctx, "unbound list after the purge", unboundAre("u1@n1:#/instance/u1 u3@n1:#/instance/u3"))
	pageUntil(t, bctx, "header after the purge", `document.getElementById("totals").textContent === "3 processes: 3 running" ? "" : document.getElementById("totals").textContent`)

	// The timeline: the two unbound ones left run at once, in two lanes
	// of their node.
	if err := chromedp.Do(mctx, chromedp.Evaluate[chromedp.Void](`location.hash = "#/timeline"`)); err != nil {
		t.Fatal(err)
	}
	pageUntil(t, bctx, "timeline lanes", `(() => {
		const bars = [...document.querySelectorAll("#timeline-svg g[data-instance]")].map(g => {
			const r = g.querySelector("rect");
			return {name: g.dataset.instance, y: +r.getAttribute("y"), x1: +r.getAttribute("x"), x2: +r.getAttribute("x") + +r.getAttribute("width")};
		});
		const names = bars.map(b => b.name).sort().join(" ");
		if (names !== "held u1 u3") return "bars " + names;
		for (const a of bars) for (const b of bars) if (a !== b && a.y === b.y && a.x1 < b.x2 && b.x1 < a.x2) return a.name + " and " + b.name + " share a lane";
		const labels = [...document.querySelectorAll("#timeline-svg .lane-label")].map(l => l.textContent).join(", ");
		return labels === "n1 cpu `+fmt.Sprint(core[0])+`, n1 unbound 1, n1 unbound 2" ? "" : "lanes " + labels;
	})()`)
	if marker, err := chromedp.Run(mctx, chromedp.Evaluate[int](`window.droverTestMarker || 0`)); err != nil || marker != 42 {
		t.Errorf("the page was reloaded (marker %d, %v)", marker, err)
	}
}
