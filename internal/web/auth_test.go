package web

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drover-hpc/drover/internal/results"
)

// authServer serves a run with one instance that has written "secret" to
// its stderr.
func authServer(t *testing.T, acc Access) *httptest.Server {
	t.Helper()
	out := t.TempDir()
	src := NewRunSource(RunOptions{Title: "t", OutDir: out, Instances: []string{"job"}})
	src.OnEvent(results.Event{Event: results.Started, Job: "job", Node: "n", Attempt: 1})
	writeOutput(t, out, "job", "stderr", "secret\n")
	srv := httptest.NewServer(Handler(src, acc))
	t.Cleanup(srv.Close)
	return srv
}

// do sends a GET to srv with the given Host header (or srv's), bearer
// token and cookie; redirects are not followed.
func do(t *testing.T, srv *httptest.Server, host, path, bearer string, cookies ...*http.Cookie) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest("GET", srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	for _, c := range cookies {
		req.AddCookie(c)
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.Header.Get("Content-Type") == "text/event-stream" {
		return resp, "" // it never ends
	}
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func TestAccessToken(t *testing.T) {
	acc := Access{Token: "s3cret-token", Cookie: "drover-1234"}
	srv := authServer(t, acc)
	private := []string{"/", "/api/state", "/api/events", "/api/instance?name=job", "/api/logs?name=job&stream=stderr", "/metrics"}
	for _, p := range private {
		if resp, body := do(t, srv, "", p, ""); resp.StatusCode != http.StatusUnauthorized || strings.Contains(body, "secret\n") || resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("GET %s without the token: %s %q", p, resp.Status, body)
		}
		if resp, _ := do(t, srv, "", p, "wrong"); resp.StatusCode != http.StatusForbidden {
			t.Errorf("GET %s with a wrong token: %s", p, resp.Status)
		}
		if resp, _ := do(t, srv, "", p, "", &http.Cookie{Name: "drover-1234", Value: "s3cret-tokeX"}); resp.StatusCode != http.StatusForbidden {
			t.Errorf("GET %s with a wrong cookie: %s", p, resp.Status)
		}
		// Another dashboard's cookie (another port) is not ours.
		if resp, _ := do(t, srv, "", p, "", &http.Cookie{Name: "drover-999", Value: "s3cret-token"}); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("GET %s with another port's cookie: %s", p, resp.Status)
		}
	}
	// Bearer works everywhere.
	if resp, body := do(t, srv, "", "/api/logs?name=job&stream=stderr", "s3cret-token"); resp.StatusCode != 200 || body != "secret\n" {
		t.Errorf("logs with the bearer: %s %q", resp.Status, body)
	}
	// ?token= on / sets the cookie and sends the browser on without it.
	resp, _ := do(t, srv, "", "/?token=s3cret-token", "")
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" {
		t.Errorf("/?token=: %s, Location %q", resp.Status, resp.Header.Get("Location"))
	}
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == "drover-1234" {
			cookie = c
		}
	}
	if cookie == nil || !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode || cookie.Path != "/" || cookie.Value != "s3cret-token" {
		t.Fatalf("cookie set by ?token=: %+v (header %q)", cookie, resp.Header.Values("Set-Cookie"))
	}
	for _, p := range private {
		if resp, _ := do(t, srv, "", p, "", &http.Cookie{Name: cookie.Name, Value: cookie.Value}); resp.StatusCode != 200 {
			t.Errorf("GET %s with the cookie: %s", p, resp.Status)
		}
	}
	// On an API path ?token= answers at once.
	if resp, body := do(t, srv, "", "/api/logs?name=job&stream=stderr&token=s3cret-token", ""); resp.StatusCode != 200 || body != "secret\n" {
		t.Errorf("logs with ?token=: %s %q", resp.Status, body)
	}
	if resp, _ := do(t, srv, "", "/api/state?token=nope", ""); resp.StatusCode != http.StatusForbidden || len(resp.Cookies()) != 0 {
		t.Errorf("wrong ?token=: %s, cookies %v", resp.Status, resp.Cookies())
	}
	// Script and style hold nothing private.
	if resp, _ := do(t, srv, "", "/static/app.js", ""); resp.StatusCode != 200 {
		t.Errorf("static without the token: %s", resp.Status)
	}
	// Another scheme than Bearer is refused, not ignored.
	req, _ := http.NewRequest("GET", srv.URL+"/api/state", nil)
	req.SetBasicAuth("u", "s3cret-token")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("basic auth: %v %v", resp.Status, err)
	} else {
		resp.Body.Close()
	}
}

func TestAccessMetricsOpen(t *testing.T) {
	srv := authServer(t, Access{Token: "tok", MetricsOpen: true})
	if resp, body := do(t, srv, "", "/metrics", ""); resp.StatusCode != 200 || !strings.Contains(body, "drover_") {
		t.Errorf("open /metrics: %s", resp.Status)
	}
	if resp, _ := do(t, srv, "", "/api/state", ""); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("/api/state with --metrics-open: %s", resp.Status)
	}
}

func TestAccessEmptyTokenLetsNothingIn(t *testing.T) {
	srv := authServer(t, Access{})
	for _, bearer := range []string{"", "x"} {
		if resp, _ := do(t, srv, "", "/api/state", bearer); resp.StatusCode < 400 {
			t.Errorf("empty token, bearer %q: %s", bearer, resp.Status)
		}
	}
	req, _ := http.NewRequest("GET", srv.URL+"/api/state", nil)
	req.Header.Set("Authorization", "Bearer ")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("empty token, empty bearer: %v %v", resp.Status, err)
	} else {
		resp.Body.Close()
	}
}

func TestAccessHost(t *testing.T) {
	srv := authServer(t, Access{Token: "tok", Hosts: []string{"Node7.Example", "10.1.2.3", "fd00::7"}})
	for _, h := range []string{"localhost", "localhost:8080", "LOCALHOST.", "127.0.0.1:1", "127.9.9.9", "[::1]:80", "node7.example:99", "10.1.2.3:5", "[fd00:0::7]:1"} {
		if resp, _ := do(t, srv, h, "/api/state", "tok"); resp.StatusCode != 200 {
			t.Errorf("Host %q: %s", h, resp.Status)
		}
	}
	// A rebinding page's name, another address, a look-alike: refused,
	// with the token too (a program may send it) and on static paths.
	for _, h := range []string{"evil.example", "evil.example:8080", "10.1.2.4", "node7.example.evil", "localhost.evil", "[fd00::8]:1", "a\x01b"} {
		for _, p := range []string{"/api/state", "/static/app.js", "/metrics"} {
			resp, body := do(t, srv, h, p, "tok")
			if resp.StatusCode != http.StatusMisdirectedRequest {
				t.Errorf("Host %q %s: %s", h, p, resp.Status)
			}
			if strings.ContainsAny(body, "\x01") {
				t.Errorf("Host %q: the answer echoes a control character: %q", h, body)
			}
		}
	}
}

// writeOutput writes an instance's output file as the queue would.
func writeOutput(t *testing.T, out, instance, stream, content string) {
	t.Helper()
	dir := filepath.Join(out, instance)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, stream), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
