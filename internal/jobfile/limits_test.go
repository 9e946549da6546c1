package jobfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// allocated is what fn allocates, in bytes.
func allocated(fn func()) uint64 {
	runtime.GC()
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	fn()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

var fileLineCol = regexp.MustCompile(`^x\.yaml:\d+:\d+: `)

// wantOnly checks that err is one problem, positioned, whose message has want.
func wantOnly(t *testing.T, err error, want string) *Error {
	t.Helper()
	var es Errors
	if !errors.As(err, &es) || len(es) != 1 {
		t.Fatalf("got %v, want one problem with %q", err, want)
	}
	if !fileLineCol.MatchString(es[0].Error()) || !strings.Contains(es[0].Msg, want) {
		t.Fatalf("got %q, want FILE:LINE:COL: ...%s...", es[0].Error(), want)
	}
	return es[0]
}

// The probe of the issue: 100,000 levels of nesting (a 200 KB file) took
// the parser 15 GB and 46 s. It is now refused by the pre-scan, at the
// level that goes too deep, allocating next to nothing.
func TestDeepNestingRefusedCheaply(t *testing.T) {
	const n = 100_000
	head := "jobs:\n  - name: a\n    command: [x]\n    env: "
	for _, tc := range []struct{ name, src string }{
		{"flow lists", head + strings.Repeat("[", n) + strings.Repeat("]", n) + "\n"},
		{"flow mappings", head + strings.Repeat("{a: ", n) + "x" + strings.Repeat("}", n) + "\n"},
		{"JSON", strings.Repeat(`{"a":`, n) + "1" + strings.Repeat("}", n)},
		{"unclosed", head + strings.Repeat("[", n) + "\n"},
		{"compact block lists", strings.Repeat("- ", n) + "x\n"},
		{"indented block lists", "jobs:\n" + func() string {
			var b strings.Builder
			for i := range 2000 { // deeper than MaxDepth, and as many bytes as the parser can take
				b.WriteString(strings.Repeat(" ", i+1) + "-\n")
			}
			return b.String()
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			alloc := allocated(func() { _, err = Parse("x.yaml", []byte(tc.src)) })
			e := wantOnly(t, err, fmt.Sprintf("nesting deeper than %d levels", MaxDepth))
			if e.Line < 1 || e.Col < 1 {
				t.Fatalf("no position: %#v", e)
			}
			// The bug allocated gigabytes; the pre-scan itself allocates
			// only its indentation stack.
			if alloc > 1<<20 {
				t.Fatalf("parsing %d bytes allocated %d bytes", len(tc.src), alloc)
			}
		})
	}
}

// The pre-scan must not take brackets in text for nesting: quoted,
// commented, in block scalars or inside plain text.
func TestBracketsInTextAreNoNesting(t *testing.T) {
	deep := strings.Repeat("[", 2*MaxDepth)
	src := fmt.Sprintf(`jobs:
  - name: a          # %s
    command: [echo, '%s', "%s\"x", 'it''s %s']
    setup:
      - |
        f() {
        %s
        }
      - >-
        %s
  - name: b
    shell: |
      if [ -f x ]; then { echo %s; }; fi
    env:
      A: "%s"
      B: x%s
  - name: c
    shell: echo %s it's
`, deep, deep, deep, deep, deep, deep, deep, deep, deep, deep)
	f, err := Parse("x.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Jobs) != 3 || f.Jobs[1].Env["B"] != "x"+deep {
		t.Fatalf("jobs %+v", f.Jobs)
	}
}

// Nesting up to the limit is fine.
func TestNestingWithinLimit(t *testing.T) {
	// jobs, the list, the job, env: four levels; the rest within the value.
	n := MaxDepth - 4
	src := "jobs:\n  - name: a\n    command: [x]\n    env: {A: " + strings.Repeat("[", n) + strings.Repeat("]", n) + "}\n"
	_, err := Parse("x.yaml", []byte(src))
	wantOnly(t, err, "env A must be text, got a list")
}

func TestLargeFileRefused(t *testing.T) {
	src := "jobs:\n  - {name: a, command: [x]}\n" + strings.Repeat("# padding\n", MaxFileBytes/10+1)
	_, err := Parse("x.yaml", []byte(src))
	wantOnly(t, err, "larger than 8.0 MiB")

	// Load reads no more than the limit and a byte: a sparse file of
	// 1 GiB costs no gigabyte.
	path := filepath.Join(t.TempDir(), "x.yaml")
	if err := os.WriteFile(path, []byte("jobs:\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 1<<30); err != nil {
		t.Fatal(err)
	}
	alloc := allocated(func() { _, err = Load(path) })
	var es Errors
	if !errors.As(err, &es) || len(es) != 1 || !strings.Contains(es[0].Msg, "larger than") {
		t.Fatalf("got %v", err)
	}
	if alloc > 8*MaxFileBytes {
		t.Fatalf("Load of a 1 GiB file allocated %d bytes", alloc)
	}
}

// A file with a problem on every line lists the first maxShown, in file
// order, and counts the rest (300,000 were all printed).
func TestErrorsCapped(t *testing.T) {
	const n = 20_000
	var b strings.Builder
	b.WriteString("jobs:\n")
	for i := range n {
		fmt.Fprintf(&b, "  - {name: j%d, command: [x], colour: red}\n", i)
	}
	_, err := Parse("x.yaml", []byte(b.String()))
	var es Errors
	if !errors.As(err, &es) || len(es) != maxShown+1 {
		t.Fatalf("got %d problems, want %d and a count", len(es), maxShown)
	}
	for i, e := range es[:maxShown] {
		if e.Line != i+2 || !strings.Contains(e.Msg, `unknown key "colour"`) {
			t.Fatalf("problem %d: %v", i, e)
		}
	}
	if got, want := es[maxShown].Error(), fmt.Sprintf("x.yaml: and %d more problems", n-maxShown); got != want {
		t.Fatalf("last line %q, want %q", got, want)
	}
	if lines := strings.Count(err.Error(), "\n") + 1; lines != maxShown+1 {
		t.Fatalf("the error prints %d lines", lines)
	}
}

// The earliest problems are kept even when found last: checks that run
// after decoding report line 2 after the decoder reported every other line.
func TestErrorsCappedKeepsEarliest(t *testing.T) {
	var b strings.Builder
	b.WriteString("jobs:\n  - {name: 'bad name', command: [x]}\n")
	for i := range 3 * maxShown {
		fmt.Fprintf(&b, "  - {name: j%d, command: [x], colour: red}\n", i)
	}
	_, err := Parse("x.yaml", []byte(b.String()))
	var es Errors
	if !errors.As(err, &es) || es[0].Line != 2 || !strings.Contains(es[0].Msg, "bad name") {
		t.Fatalf("first problem %v", es[0])
	}
}

// Probe 7: more than 4 MB of env in one instance passed and broke the
// node's session. It is refused at the env, before anything starts.
func TestArgsEnvLimit(t *testing.T) {
	big := strings.Repeat("x", 5<<20)
	_, err := Parse("x.yaml", []byte("jobs:\n  - name: a\n    command: [x]\n    env: {A: "+big+"}\n"))
	e := wantOnly(t, err, "at most 1.0 MiB can be passed to a process")
	if e.Line != 4 || e.Col != 10 {
		t.Fatalf("at %d:%d, want the env at 4:10", e.Line, e.Col)
	}

	// Arguments count too, with {index} as the last instance has it.
	arg := strings.Repeat("x", MaxArgsEnvBytes-5) + "{index}"
	_, err = Parse("x.yaml", []byte("jobs:\n  - name: a\n    repeat: 10000000\n    command: [x, '"+arg+"']\n"))
	if e := wantOnly(t, err, "at most 1.0 MiB"); e.Line != 4 {
		t.Fatalf("at line %d, want the command's", e.Line)
	}
	_, err = Parse("x.yaml", []byte("jobs:\n  - name: a\n    repeat: 10\n    command: [x, '"+arg+"']\n"))
	if err != nil {
		t.Fatalf("a command just within the limit: %v", err)
	}

	// Jobs built in code are checked alike.
	j := &Job{Name: "a", Command: []string{"x"}, Env: map[string]string{"A": big}}
	if err := j.Validate(); err == nil || !strings.Contains(err.Error(), "at most 1.0 MiB") {
		t.Fatalf("Validate: %v", err)
	}
}

func TestTotalInstancesLimit(t *testing.T) {
	src := fmt.Sprintf("jobs:\n  - {name: a, command: [x], repeat: %d}\n  - {name: b, command: [x], repeat: 1}\n", MaxInstances)
	_, err := Parse("x.yaml", []byte(src))
	e := wantOnly(t, err, fmt.Sprintf("a job file may have at most %d", MaxInstances))
	if e.Line != 3 {
		t.Fatalf("at line %d, want the job that goes over", e.Line)
	}
}
