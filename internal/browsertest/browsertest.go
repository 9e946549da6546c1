// Package browsertest drives headless Chromium for the tests that check
// the dashboard's scripted pages, so that they read what a user's browser
// shows, not only the server-rendered fallback.
package browsertest

import (
	"context"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Start starts the headless Chromium at path for the test; it lives as
// long as the test.
func Start(t testing.TB, path string) context.Context {
	t.Helper()
	actx, cancelA := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(path), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 800))
	t.Cleanup(cancelA)
	bctx, cancelC := chromedp.NewContext(actx)
	t.Cleanup(cancelC)
	// The first call starts the browser, which lives as long as its
	// context: no timeout on that one.
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return bctx
}

// Until evaluates expr, JavaScript giving "" when the page is as wanted
// and a complaint otherwise, until it gives "" or backstop passes; then
// the test fails with the last complaint. The page updates itself (server
// events), so there is nothing to wait on but the page.
func Until(t testing.TB, bctx context.Context, backstop time.Duration, what, expr string) {
	t.Helper()
	deadline := time.Now().Add(backstop)
	last := ""
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(bctx, 10*time.Second)
		got, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
		cancel()
		if err == nil && got == "" {
			return
		}
		if last = got; err != nil {
			last = err.Error()
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("%s: %s", what, last)
}
