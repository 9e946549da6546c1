package cli_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// jobFileError is one FILE:LINE:COL: message line.
type jobFileError struct {
	line, col int
	msg       string
	text      string // the whole line as printed
}

// jobFileErrors finds the FILE:LINE:COL: lines about file in stderr. It
// tolerates the "drover: " prefix Main puts on the first line; that it is
// there at all is checked by TestJobFileErrorLinesStartWithFile.
func jobFileErrors(t *testing.T, stderr, file string) []jobFileError {
	t.Helper()
	re := regexp.MustCompile(`(?m)^(?:drover: )?` + regexp.QuoteMeta(file) + `:(\d+):(\d+): (.+)$`)
	var errs []jobFileError
	for _, m := range re.FindAllStringSubmatch(stderr, -1) {
		line, _ := strconv.Atoi(m[1])
		col, _ := strconv.Atoi(m[2])
		errs = append(errs, jobFileError{line, col, m[3], m[0]})
	}
	return errs
}

// checkPointsIntoLine checks that e's column is on a non-blank character
// of its line in content.
func checkPointsIntoLine(t *testing.T, content string, e jobFileError) {
	t.Helper()
	lines := strings.Split(content, "\n")
	if e.line < 1 || e.line > len(lines) {
		t.Errorf("%q: line %d is outside the file", e.text, e.line)
		return
	}
	l := lines[e.line-1]
	if e.col < 1 || e.col > len(l) || l[e.col-1] == ' ' {
		t.Errorf("%q: column %d is not on a character of line %d %q", e.text, e.col, e.line, l)
	}
}

func TestRunJobFileErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		content string
		line    int      // of the error; 0 when any line will do
		words   []string // the message must say these
		n       int      // errors in all; 0 means 1
	}{
		{"unknown key", `jobs:
  - name: a
    command: [echo, a]
    colour: red
`, 4, []string{"unknown", `"colour"`}, 0},
		{"misspelt key", `jobs:
  - name: a
    comand: [echo, a]
`, 3, []string{`"comand"`, `"command"`}, 2}, // and the job misses a command
		{"duplicate name", `jobs:
  - name: a
    command: [echo, a]
  - name: b
    command: [echo, b]
  - name: a
    command: [echo, c]
`, 6, []string{`"a"`, "line 2"}, 0},
		{"missing command", `jobs:
  - name: a
    command: [echo, a]
  - name: nocmd
    repeat: 2
`, 4, []string{"command"}, 0},
		{"cores not a number", `jobs:
  - name: a
    command: [echo, a]
    cores: many
`, 4, []string{"cores", "many"}, 0},
		{"cores zero", `jobs:
  - name: a
    command: [echo, a]
    cores: 0
`, 4, []string{"cores"}, 0},
		{"cores negative", `jobs:
  - name: a
    cores: -2
    command: [echo, a]
`, 3, []string{"cores", "-2"}, 0},
		{"cores fractional", `jobs:
  - name: a
    command: [echo, a]
    cores: 1.5
`, 4, []string{"cores", "1.5"}, 0},
		{"repeat zero", `jobs:
  - name: a
    command: [echo, a]
    repeat: 0
`, 4, []string{"repeat"}, 0},
		{"bad name", `jobs:
  - name: "a b"
    command: [echo, a]
`, 2, []string{"name", `"a b"`}, 0},
		{"command and shell", `jobs:
  - name: a
    command: [echo, a]
    shell: echo b
`, 0, []string{"command", "shell"}, 0},
		{"bad timeout", `jobs:
  - name: a
    command: [echo, a]
    timeout: ten minutes
`, 4, []string{"timeout"}, 0},
		{"invalid YAML", `jobs:
  - name: a
    command: [echo, a
`, 0, nil, 0},
		{"empty file", ``, 0, nil, 0},
		{"no jobs key", `job:
  - name: a
    command: [echo, a]
`, 1, []string{`"job"`, `"jobs"`}, 2}, // and "jobs" is missing
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			out := filepath.Join(dir, "out")
			writeFile(t, dir, "jobs.yaml", tc.content)
			r := drover(t, dir, "run", "--progress", "none", "--out", out, "jobs.yaml")
			wantCode(t, r, 2)
			wantNotExist(t, out)
			if r.stdout != "" {
				t.Errorf("stdout: %q", r.stdout)
			}
			errs := jobFileErrors(t, r.stderr, "jobs.yaml")
			if len(errs) == 0 {
				t.Fatalf("no jobs.yaml:LINE:COL: line in stderr:\n%s", r.stderr)
			}
			if tc.line == 0 {
				for _, e := range errs {
					if e.line < 1 || e.col < 1 {
						t.Errorf("no position: %q", e.text)
					}
				}
				for _, w := range tc.words {
					if !strings.Contains(r.stderr, w) {
						t.Errorf("stderr does not say %q:\n%s", w, r.stderr)
					}
				}
				return
			}
			if n := max(tc.n, 1); len(errs) != n {
				t.Errorf("want %d error(s), got %d:\n%s", n, len(errs), r.stderr)
			}
			var e *jobFileError
			for i := range errs {
				if errs[i].line == tc.line && containsAll(errs[i].msg, tc.words) {
					e = &errs[i]
				}
			}
			if e == nil {
				t.Fatalf("no error on line %d saying %q:\n%s", tc.line, tc.words, r.stderr)
			}
			checkPointsIntoLine(t, tc.content, *e)
		})
	}
}

func containsAll(s string, words []string) bool {
	for _, w := range words {
		if !strings.Contains(s, w) {
			return false
		}
	}
	return true
}

// Every problem is reported, in file order, in one go.
func TestRunJobFileAllErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	content := `jobs:
  - name: a
    command: [echo, a]
    colour: red
  - name: a
    command: [echo, b]
  - name: c
    repeat: 2
  - name: d
    command: [echo, d]
    cores: many
  - name: fine
    command: [echo, fine]
`
	writeFile(t, dir, "jobs.yaml", content)
	r := drover(t, dir, "run", "--progress", "none", "--out", out, "jobs.yaml")
	wantCode(t, r, 2)
	wantNotExist(t, out)
	errs := jobFileErrors(t, r.stderr, "jobs.yaml")
	want := []struct {
		line int
		word string
	}{{4, "colour"}, {5, `"a"`}, {7, "command"}, {11, "cores"}}
	if len(errs) != len(want) {
		t.Fatalf("want %d errors, got %d:\n%s", len(want), len(errs), r.stderr)
	}
	for i, w := range want {
		if errs[i].line != w.line || !strings.Contains(errs[i].msg, w.word) {
			t.Errorf("error %d: %q, want line %d about %s", i, errs[i].text, w.line, w.word)
		}
		checkPointsIntoLine(t, content, errs[i])
	}
}

// SPEC: a bad job file exits 2 with `FILE:LINE:COL: what is wrong` lines.
// Editors and CI annotators parse such lines from their start.
func TestJobFileErrorLinesStartWithFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeFile(t, dir, "jobs.yaml", "jobs:\n  - name: a\n    command: [echo]\n    colour: red\n  - name: a\n    command: [echo]\n")
	r := drover(t, dir, "run", "--progress", "none", "--out", filepath.Join(dir, "out"), "jobs.yaml")
	wantCode(t, r, 2)
	lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("want two error lines:\n%s", r.stderr)
	}
	re := regexp.MustCompile(`^jobs\.yaml:\d+:\d+: `)
	for _, l := range lines {
		if !re.MatchString(l) {
			t.Errorf("job file error line %q does not start with FILE:LINE:COL", l)
		}
	}
}

func TestRunBadUsage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		args []string // after "run --progress none --out OUT" unless noDefaults
		says string   // stderr must contain this
		bare bool     // args are the whole command line after "drover"
	}{
		{name: "unknown flag", args: []string{"--bogus", "jobs.yaml"}, says: "--bogus"},
		{name: "progress bogus", args: []string{"--progress", "bogus", "jobs.yaml"}, says: "--progress"},
		{name: "retries negative", args: []string{"--retries", "-1", "jobs.yaml"}, says: "--retries"},
		{name: "retries not a number", args: []string{"--retries", "x", "jobs.yaml"}, says: "retries"},
		{name: "launcher bogus", args: []string{"--launcher", "bogus", "jobs.yaml"}, says: "--launcher"},
		{name: "jobfile and command", args: []string{"jobs.yaml", "--", "echo", "hi"}, says: "JOBFILE"},
		{name: "no args", args: nil, says: "JOBFILE"},
		{name: "two job files", args: []string{"jobs.yaml", "jobs.yaml"}, says: "JOBFILE"},
		{name: "nothing after dash", args: []string{"--"}, says: "--"},
		{name: "repeat with job file", args: []string{"--repeat", "2", "jobs.yaml"}, says: "--repeat"},
		{name: "each-node with job file", args: []string{"--each-node", "jobs.yaml"}, says: "--each-node"},
		{name: "repeat and each-node", args: []string{"--each-node", "--repeat", "2", "--", "echo"}, says: "--each-node"},
		{name: "repeat negative", args: []string{"--repeat", "-1", "--", "echo"}, says: "repeat"},
		{name: "bad duration", args: []string{"--grace", "soon", "jobs.yaml"}, says: "--grace"},
		{name: "missing job file", args: []string{"missing.yaml"}, says: "missing.yaml"},
		{name: "log level bogus", args: []string{"--log-level", "loud", "jobs.yaml"}, says: "--log-level"},
		{name: "unknown command", args: []string{"runn", "jobs.yaml"}, says: "runn", bare: true},
		{name: "resources with args", args: []string{"resources", "extra"}, says: "extra", bare: true},
		{name: "resources unknown flag", args: []string{"resources", "--yaml"}, says: "--yaml", bare: true},
		{name: "global unknown flag", args: []string{"--bogus"}, says: "--bogus", bare: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			out := filepath.Join(dir, "out")
			writeFile(t, dir, "jobs.yaml", "jobs:\n  - name: ok\n    command: [echo, ok]\n")
			args := tc.args
			if !tc.bare {
				args = append([]string{"run", "--progress", "none", "--out", out}, tc.args...)
			}
			r := drover(t, dir, args...)
			wantCode(t, r, 2)
			wantNotExist(t, out)
			wantNotExist(t, filepath.Join(dir, "drover-out"))
			if !strings.Contains(r.stderr, tc.says) {
				t.Errorf("stderr does not mention %q:\n%s", tc.says, r.stderr)
			}
		})
	}
}

// --repeat 0 asks for no instances, or is a mistake; either way it must
// not silently run one.
func TestRunRepeatZero(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	r := drover(t, dir, "run", "--progress", "none", "--out", out, "--repeat", "0", "--", "echo", "hi")
	if r.code != 2 {
		t.Errorf("`drover run --repeat 0 -- CMD` exits %d, want 2 (nothing started)\n%s", r.code, r)
	}
	wantNotExist(t, out)
}

func TestHelp(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--help"}, []string{"Usage:", "Examples:", "drover run examples/hello.yaml", "run", "resources"}},
		{[]string{"-h"}, []string{"Usage:", "Examples:"}},
		{[]string{"help"}, []string{"Usage:", "Examples:"}},
		{[]string{"run", "--help"}, []string{"Usage:", "Examples:", "drover run --resume", "--repeat", "--out", "--progress", "Exit status"}},
		{[]string{"run", "-h"}, []string{"Examples:"}},
		{[]string{"help", "run"}, []string{"Examples:", "--each-node"}},
		{[]string{"resources", "--help"}, []string{"Examples:", "drover resources --json"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			r := drover(t, t.TempDir(), tc.args...)
			wantCode(t, r, 0)
			for _, w := range tc.want {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("help does not show %q:\n%s", w, r.stdout)
				}
			}
		})
	}
}

// A results directory drover cannot use is invalid input: nothing starts,
// so the status is 2, not 1 ("the work ran and something failed").
func TestRunOutUnusable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	notDir := writeFile(t, dir, "not-a-dir", "")
	r := drover(t, dir, "run", "--progress", "none", "--out", notDir, "--", "touch", filepath.Join(dir, "ran"))
	wantNotExist(t, filepath.Join(dir, "ran"))
	if !strings.Contains(r.stderr, "not-a-dir") {
		t.Errorf("stderr does not name the results directory:\n%s", r)
	}
	if r.code != 2 {
		t.Errorf("--out naming a regular file exits %d, want 2 (nothing started)\n%s", r.code, r)
	}
}

// --resume refuses a results directory whose events log is damaged.
func TestRunResumeDamagedLog(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	writeFile(t, dir, "jobs.yaml", "jobs:\n  - name: ok\n    command: [touch, "+strconv.Quote(filepath.Join(dir, "ran"))+"]\n")
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, out, "events.jsonl", "not json\n{\"event\":\"run-start\"}\n")
	r := drover(t, dir, "run", "--progress", "none", "--resume", "--out", out, "jobs.yaml")
	wantCode(t, r, 2)
	wantNotExist(t, filepath.Join(dir, "ran"))
	wantNotExist(t, filepath.Join(out, "ok"))
	if !strings.Contains(r.stderr, "events") {
		t.Errorf("stderr does not say the events log is damaged:\n%s", r.stderr)
	}
}
