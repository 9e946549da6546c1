package web

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

//go:embed static
var staticFiles embed.FS

var indexTmpl = template.Must(template.ParseFS(staticFiles, "static/index.html"))

// keepAlive is how often an idle event stream gets a comment, so proxies
// and browsers keep it open.
const keepAlive = 15 * time.Second

// Handler serves the dashboard of src:
//
//	/                 the single-page app (static/index.html)
//	/static/...       its script and style
//	/api/state        the whole State as JSON
//	/api/events       server-sent events: "snapshot" (a State) first and on
//	                  resync, then "update" (an Update) as things change
//	/api/instance     ?name=: an instance and its latest events
//	/api/logs         ?name=&stream=stdout|stderr&follow=1: its output
//	/metrics          Prometheus text format
//
// Everything is read-only: methods other than GET and HEAD get 405. acc
// says who gets in (see Access): every path but /static/ needs its token.
func Handler(src Source, acc Access) http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(staticFiles, "static")
	files := http.FileServerFS(static)
	mux.Handle("GET /static/", http.StripPrefix("/static/", files))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		// The page carries a plain summary, which the script replaces: it
		// is what shows without JavaScript, and it makes the page useful
		// to curl and grep.
		_ = indexTmpl.Execute(w, struct{ State State }{src.Snapshot()})
	})
	mux.HandleFunc("GET /api/state", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, src.Snapshot())
	})
	mux.HandleFunc("GET /api/instance", func(w http.ResponseWriter, r *http.Request) {
		in, evs, ok := src.Instance(r.URL.Query().Get("name"))
		if !ok {
			http.Error(w, "no such instance", http.StatusNotFound)
			return
		}
		if evs == nil {
			evs = []Event{}
		}
		writeJSON(w, struct {
			Instance Instance `json:"instance"`
			Events   []Event  `json:"events"`
		}{in, evs})
	})
	mux.HandleFunc("GET /api/events", func(w http.ResponseWriter, r *http.Request) { serveEvents(w, r, src) })
	mux.HandleFunc("GET /api/logs", func(w http.ResponseWriter, r *http.Request) { serveLogs(w, r, src) })
	mux.Handle("GET /metrics", promhttp.HandlerFor(src.Metrics(), promhttp.HandlerOpts{}))
	guarded := acc.guard(mux)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "read-only", http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'")
		guarded.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(v)
}

// serveEvents streams a snapshot and then the updates of src.
func serveEvents(w http.ResponseWriter, r *http.Request, src Source) {
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	// Subscribe before the snapshot: nothing between them is missed
	// (an instance both in the snapshot and in the first update is fine).
	updates := src.Subscribe(ctx)
	send := func(kind string, v any) error {
		data, err := json.Marshal(v)
		if err != nil {
			return err
		}
		_ = rc.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", kind, data); err != nil {
			return err
		}
		return rc.Flush()
	}
	if send("snapshot", src.Snapshot()) != nil {
		return
	}
	ping := time.NewTicker(keepAlive)
	defer ping.Stop()
	for {
		select {
		case u, ok := <-updates:
			if !ok {
				return
			}
			var err error
			if u.Resync {
				err = send("snapshot", src.Snapshot())
			} else {
				err = send("update", u)
			}
			if err != nil {
				return
			}
		case <-ping.C:
			_ = rc.SetWriteDeadline(time.Now().Add(30 * time.Second))
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil || rc.Flush() != nil {
				return
			}
		case <-ctx.Done():
			return
		}
	}
}

// flushWriter flushes after every write, so followed output shows at once.
type flushWriter struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

func (f *flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err == nil {
		err = f.rc.Flush()
	}
	return n, err
}

func serveLogs(w http.ResponseWriter, r *http.Request, src Source) {
	q := r.URL.Query()
	name := q.Get("name")
	stderr := q.Get("stream") == "stderr"
	follow := q.Get("follow") == "1"
	if _, _, ok := src.Instance(name); !ok {
		http.Error(w, "no such instance", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{})
	fw := &flushWriter{w: w, rc: rc}
	err := src.Logs(r.Context(), name, stderr, follow, fw)
	if err != nil && !errors.Is(err, context.Canceled) && r.Context().Err() == nil {
		fmt.Fprintf(fw, "\n--- drover: %v ---\n", err)
	}
}
