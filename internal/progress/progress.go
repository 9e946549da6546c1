// Package progress shows a run's progress: a live bar with counts and ETA
// on a terminal, a plain line now and then otherwise. Log lines go through
// Writer so they never tear the bar.
package progress

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drover-hpc/drover/internal/queue"
)

// Mode is how progress is shown.
type Mode string

const (
	Auto  Mode = "auto"  // Bar on a terminal, Plain otherwise
	Bar   Mode = "bar"   // redrawn in place
	Plain Mode = "plain" // a line when something changed, at most every PlainEvery
	None  Mode = "none"
)

// ParseMode accepts the --progress values.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case Auto, Plain, None:
		return m, nil
	}
	return "", fmt.Errorf("--progress must be auto, plain or none, got %q", s)
}

// IsTerminal reports whether f is a terminal.
func IsTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// Intervals between redraws.
const (
	BarEvery   = 200 * time.Millisecond
	PlainEvery = 5 * time.Second
)

// Reporter draws progress to w until Stop.
type Reporter struct {
	mode  Mode
	out   *os.File
	width int

	mu      sync.Mutex
	counts  queue.Counts
	shown   queue.Counts
	drawn   bool // a bar is on screen
	stop    chan struct{}
	stopped chan struct{}
}

// Start begins reporting to out. Auto picks Bar when out is a terminal.
func Start(out *os.File, mode Mode) *Reporter {
	if mode == Auto {
		mode = Plain
		if IsTerminal(out) {
			mode = Bar
		}
	}
	r := &Reporter{mode: mode, out: out, width: 80, stop: make(chan struct{}), stopped: make(chan struct{})}
	if ws, err := unix.IoctlGetWinsize(int(out.Fd()), unix.TIOCGWINSZ); err == nil && ws.Col > 20 {
		r.width = int(ws.Col)
	}
	if mode == None {
		close(r.stopped)
		return r
	}
	every := PlainEvery
	if mode == Bar {
		every = BarEvery
	}
	go r.loop(every)
	return r
}

// Update records the latest counts; drawing happens on the reporter's clock.
func (r *Reporter) Update(c queue.Counts) {
	r.mu.Lock()
	r.counts = c
	r.mu.Unlock()
}

func (r *Reporter) loop(every time.Duration) {
	defer close(r.stopped)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			r.mu.Lock()
			if r.mode == Bar || r.counts != r.shown {
				r.draw()
			}
			r.mu.Unlock()
		case <-r.stop:
			return
		}
	}
}

// Stop draws the final state and ends the reporter.
func (r *Reporter) Stop() {
	if r.mode == None {
		return
	}
	close(r.stop)
	<-r.stopped
	r.mu.Lock()
	defer r.mu.Unlock()
	r.draw()
	if r.mode == Bar {
		fmt.Fprintln(r.out)
		r.drawn = false
	}
}

// draw is called with r.mu held.
func (r *Reporter) draw() {
	c := r.counts
	r.shown = c
	if c.Total == 0 {
		return
	}
	line := Line(c, time.Now())
	if r.mode == Plain {
		fmt.Fprintln(r.out, line)
		return
	}
	barWidth := r.width - len(line) - 4
	if barWidth > 40 {
		barWidth = 40
	}
	bar := ""
	if barWidth >= 10 {
		// Cancelled instances were not done: after Ctrl-C the bar shows
		// what ran, not a full bar.
		filled := barWidth * (c.Done() - c.Cancelled) / c.Total
		bar = "[" + strings.Repeat("=", filled) + strings.Repeat(" ", barWidth-filled) + "] "
	}
	fmt.Fprintf(r.out, "\r\x1b[K%s%s", bar, line)
	r.drawn = true
}

// Line is the text of one progress report.
func Line(c queue.Counts, now time.Time) string {
	elapsed := now.Sub(c.Start).Round(time.Second)
	var b strings.Builder
	fmt.Fprintf(&b, "%d/%d done", c.Done()-c.Cancelled, c.Total)
	if c.Failed > 0 {
		fmt.Fprintf(&b, ", %d failed", c.Failed)
	}
	if c.Lost > 0 {
		fmt.Fprintf(&b, ", %d lost", c.Lost)
	}
	if c.Cancelled > 0 {
		fmt.Fprintf(&b, ", %d cancelled", c.Cancelled)
	}
	if c.Skipped > 0 {
		fmt.Fprintf(&b, ", %d skipped", c.Skipped)
	}
	fmt.Fprintf(&b, ", %d running, %s", c.Running, elapsed)
	ran := c.Done() - c.Skipped - c.Cancelled
	if left := c.Total - c.Done(); left > 0 && ran > 0 {
		eta := time.Duration(float64(now.Sub(c.Start)) / float64(ran) * float64(left))
		fmt.Fprintf(&b, ", ETA %s", eta.Round(time.Second))
	}
	return b.String()
}

// Writer returns a writer for log lines that first clears the bar, which
// the next tick redraws.
func (r *Reporter) Writer() io.Writer { return logWriter{r} }

type logWriter struct{ r *Reporter }

func (w logWriter) Write(p []byte) (int, error) {
	w.r.mu.Lock()
	defer w.r.mu.Unlock()
	if w.r.drawn {
		io.WriteString(w.r.out, "\r\x1b[K")
		w.r.drawn = false
	}
	return w.r.out.Write(p)
}
