package cli

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

func TestLogHandlerPlainAtWarnRecordsAtInfo(t *testing.T) {
	var buf bytes.Buffer
	level := new(slog.LevelVar)
	level.Set(slog.LevelWarn)
	log := slog.New(newLogHandler(&buf, level)).With("node", "vm").WithGroup("g")
	log.Info("hidden at warn")
	log.Warn("node lost", "reason", errors.New("silent for 5s"))
	log.Error("events log", slog.Group("disk", "free", 0))
	want := "drover: node lost (node: vm, g.reason: silent for 5s)\n" +
		"drover: error: events log (node: vm, g.disk.free: 0)\n"
	if got := buf.String(); got != want {
		t.Errorf("at warn got\n%s\nwant\n%s", got, want)
	}

	buf.Reset()
	level.Set(slog.LevelInfo) // as serve's set_log_level does at run time
	log.Info("node up", "cores", 2)
	got := buf.String()
	for _, w := range []string{"time=", "level=INFO", `msg="node up"`, "node=vm", "g.cores=2"} {
		if !strings.Contains(got, w) {
			t.Errorf("at info, %q lacks %q", got, w)
		}
	}
}
