package cli

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
)

// logHandler writes slog's text records (time=… level=… msg=…) when the
// level is info or debug, that is when someone asked to see them, and
// otherwise one plain line a message: at the default level a user reads
// "drover: node lost (node: vm, reason: …)", not a record. The level is
// read at each record, so a level changed at run time (serve's
// set_log_level) switches the form too.
type logHandler struct {
	level *slog.LevelVar
	text  slog.Handler
	plain *plainWriter
	attrs []slog.Attr // given by WithAttrs, keys already qualified by their groups
	group string      // the open group's prefix, "a.b." or ""
}

// plainWriter serialises plain lines onto one writer.
type plainWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func newLogHandler(w io.Writer, level *slog.LevelVar) *logHandler {
	return &logHandler{
		level: level,
		text:  slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}),
		plain: &plainWriter{w: w},
	}
}

func (h *logHandler) Enabled(_ context.Context, l slog.Level) bool {
	return l >= h.level.Level()
}

func (h *logHandler) Handle(ctx context.Context, r slog.Record) error {
	if h.level.Level() <= slog.LevelInfo {
		return h.text.Handle(ctx, r)
	}
	var b strings.Builder
	b.WriteString("drover: ")
	if r.Level >= slog.LevelError {
		b.WriteString("error: ")
	}
	b.WriteString(r.Message)
	attrs := append([]slog.Attr(nil), h.attrs...)
	r.Attrs(func(a slog.Attr) bool {
		attrs = appendQualified(attrs, h.group, a)
		return true
	})
	for i, a := range attrs {
		if i == 0 {
			b.WriteString(" (")
		} else {
			b.WriteString(", ")
		}
		b.WriteString(a.Key)
		b.WriteString(": ")
		b.WriteString(a.Value.String())
	}
	if len(attrs) > 0 {
		b.WriteString(")")
	}
	b.WriteString("\n")
	h.plain.mu.Lock()
	defer h.plain.mu.Unlock()
	_, err := io.WriteString(h.plain.w, b.String())
	return err
}

// appendQualified appends a, its key prefixed with the open groups, and a
// group's members one by one; empty attributes are dropped, as slog does.
func appendQualified(dst []slog.Attr, prefix string, a slog.Attr) []slog.Attr {
	a.Value = a.Value.Resolve()
	if a.Value.Kind() == slog.KindGroup {
		if a.Key != "" {
			prefix += a.Key + "."
		}
		for _, m := range a.Value.Group() {
			dst = appendQualified(dst, prefix, m)
		}
		return dst
	}
	if a.Equal(slog.Attr{}) {
		return dst
	}
	return append(dst, slog.Attr{Key: prefix + a.Key, Value: a.Value})
}

func (h *logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	n := *h
	n.text = h.text.WithAttrs(as)
	n.attrs = append([]slog.Attr(nil), h.attrs...)
	for _, a := range as {
		n.attrs = appendQualified(n.attrs, h.group, a)
	}
	return &n
}

func (h *logHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	n := *h
	n.text = h.text.WithGroup(name)
	n.group = h.group + name + "."
	return &n
}
