package jobfile

import (
	"fmt"
	"hash/fnv"
	"strings"
	"unicode/utf8"

	"github.com/drover-hpc/drover/internal/errdefs"
)

// Error is one problem in a job file.
type Error struct {
	File      string
	Line, Col int // 1-based; 0 when there is no position (jobs built in code)
	Msg       string
}

// Error gives "FILE:LINE:COL: Msg", leaving out the parts that are unknown.
func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteString(":")
	}
	if e.Line > 0 {
		fmt.Fprintf(&b, "%d:%d:", e.Line, e.Col)
	}
	if b.Len() > 0 {
		b.WriteString(" ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap makes every job-file problem an invalid request.
func (e *Error) Unwrap() error { return errdefs.ErrInvalid }

// Errors is every problem found, in file order.
type Errors []*Error

// Error gives one problem a line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap lets errors.As find the single *Error values.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// pos is a 1-based line and column; zero when unknown.
type pos struct{ line, col int }

func (p pos) before(q pos) bool {
	return p.line < q.line || p.line == q.line && p.col < q.col
}

// reporter collects problems. It drops exact repeats, which aliases cause
// when one anchored node is used, and so checked, several times. It keeps
// the maxShown earliest in the file and counts the rest, so a file with
// a problem on every line costs little to report.
type reporter struct {
	file string
	errs Errors
	more int
	seen map[uint64]bool // hashes of every problem reported
}

func (r *reporter) at(p pos, format string, args ...any) {
	e := &Error{File: r.file, Line: p.line, Col: p.col, Msg: fmt.Sprintf(format, args...)}
	h := fnv.New64a()
	fmt.Fprintf(h, "%d:%d:%s", e.Line, e.Col, e.Msg)
	sum := h.Sum64()
	if r.seen[sum] {
		return
	}
	if r.seen == nil {
		r.seen = make(map[uint64]bool)
	}
	r.seen[sum] = true
	r.keep(e)
}

// err returns the problems sorted by position, or nil when there are none.
func (r *reporter) err() error {
	if len(r.errs) == 0 {
		return nil
	}
	return r.sorted()
}

// quote quotes s for a message, shortened so a long value cannot bury it.
func quote(s string) string {
	const max = 60
	if utf8.RuneCountInString(s) <= max {
		return fmt.Sprintf("%q", s)
	}
	runes := []rune(s)
	return fmt.Sprintf("%q...", string(runes[:max]))
}

// suggest returns ` (did you mean "K"?)`-style advice for an unknown key:
// a known key that is a likely misspelling of it or a common synonym, or "".
func suggest(key string, known []string) string {
	k := strings.ToLower(key)
	if s := synonym(k); s != "" {
		return fmt.Sprintf("; did you mean %q?", s)
	}
	best, bestD := "", 3 // at most two edits away
	for _, c := range known {
		if d := editDistance(k, c); d < bestD && d <= utf8.RuneCountInString(k)/2 {
			best, bestD = c, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf("; did you mean %q?", best)
}

// synonym maps names other tools use for a job key to drover's.
func synonym(k string) string {
	switch k {
	case "cmd", "args", "argv", "exec", "run":
		return "command"
	case "script", "sh", "bash":
		return "shell"
	case "count", "instances", "replicas", "copies":
		return "repeat"
	case "cpus", "cpu", "ncores", "threads":
		return "cores"
	case "environment", "environ", "vars", "variables":
		return "env"
	case "inputs", "stage", "copy":
		return "files"
	case "results", "collect":
		return "outputs"
	case "retry", "attempts", "max_retries":
		return "retries"
	case "time", "walltime", "time_limit", "timelimit":
		return "timeout"
	case "host", "hostname", "nodes":
		return "node"
	case "dir", "cwd", "directory", "working_dir", "working_directory":
		return "workdir"
	}
	return ""
}

// editDistance is the optimal string alignment distance of a and b: the
// edits (insert, delete, substitute, swap neighbours) that turn a into b.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	// d[i][j] is the distance of ra[:i] and rb[:j].
	d := make([][]int, len(ra)+1)
	for i := range d {
		d[i] = make([]int, len(rb)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(ra); i++ {
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(ra)][len(rb)]
}
