// Command testreport reads `go test -json` on its standard input, prints
// what go test would have printed without -json, and ends with a count of
// the tests and the reason of every skip:
//
//	tests: N passed, N failed, N skipped
//	  skip: PACKAGE TEST: REASON
//
// A skip is allowed only when its reason says what the machine lacks: it
// begins with "needs " or "no " (needs root, no salloc) and does not name
// one of the -set variables, which the caller set itself to ask for a side
// effect (a skip asking for one of those means the request did not work).
// Any other skip is a failure, as is any failed test or package. The exit
// status is 1 on any failure, else 0.
//
// Usage: go test -json ./... | go run ./scripts/testreport [-v] [-set VAR,VAR]
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
)

func main() {
	verbose := flag.Bool("v", false, "print every test's output, as go test -v does")
	set := flag.String("set", "", "comma-separated variables the caller set to ask for side effects")
	flag.Parse()
	r := newReport(os.Stdout, *verbose, strings.FieldsFunc(*set, func(c rune) bool { return c == ',' }))
	if err := r.read(os.Stdin); err != nil {
		fmt.Fprintf(os.Stderr, "testreport: read go test -json: %v\n", err)
		os.Exit(1)
	}
	if !r.summarize() {
		os.Exit(1)
	}
}

// event is one line of go test -json (cmd/test2json).
type event struct {
	Action  string
	Package string
	Test    string
	Output  string
}

type skip struct {
	pkg, test, reason string
	allowed           bool
}

type report struct {
	w       io.Writer
	verbose bool
	set     []string

	passed, failed int
	skips          []skip
	failures       []string // "PACKAGE TEST" of failed tests and packages

	// Per package: the package's own output lines, each test's output
	// lines (for skip reasons), each top-level test's output with its
	// subtests' (printed if it fails), and whether a test failed.
	pkgOut   map[string][]string
	testOut  map[[2]string][]string
	topOut   map[[2]string][]outLine
	failedIn map[string]bool
	failed1  map[[2]string]bool // the tests that failed
}

// outLine is a line of output and the test (or subtest) that wrote it.
type outLine struct{ test, text string }

func newReport(w io.Writer, verbose bool, set []string) *report {
	return &report{w: w, verbose: verbose, set: set,
		pkgOut: map[string][]string{}, testOut: map[[2]string][]string{},
		topOut: map[[2]string][]outLine{}, failedIn: map[string]bool{}, failed1: map[[2]string]bool{}}
}

func (r *report) read(in io.Reader) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Text()
		var e event
		if !strings.HasPrefix(line, "{") || json.Unmarshal([]byte(line), &e) != nil {
			fmt.Fprintln(r.w, line) // not an event: go test's own words
			continue
		}
		r.event(e)
	}
	return sc.Err()
}

func top(test string) string {
	name, _, _ := strings.Cut(test, "/")
	return name
}

func (r *report) event(e event) {
	key := [2]string{e.Package, e.Test}
	topKey := [2]string{e.Package, top(e.Test)}
	switch {
	case e.Action == "build-output":
		fmt.Fprint(r.w, e.Output)
	case e.Action == "output" && r.verbose:
		fmt.Fprint(r.w, e.Output)
		if e.Test != "" {
			r.testOut[key] = append(r.testOut[key], e.Output)
		}
	case e.Action == "output" && e.Test == "":
		r.pkgOut[e.Package] = append(r.pkgOut[e.Package], e.Output)
	case e.Action == "output":
		r.testOut[key] = append(r.testOut[key], e.Output)
		r.topOut[topKey] = append(r.topOut[topKey], outLine{e.Test, e.Output})
	case e.Test == "":
		r.packageDone(e)
	case e.Action == "pass" || e.Action == "fail" || e.Action == "skip":
		r.testDone(e, key, topKey)
	}
}

func (r *report) testDone(e event, key, topKey [2]string) {
	switch e.Action {
	case "pass":
		r.passed++
	case "fail":
		r.failed++
		r.failedIn[e.Package] = true
		r.failed1[key] = true
		r.failures = append(r.failures, e.Package+" "+e.Test)
	case "skip":
		reason := skipReason(r.testOut[key])
		r.skips = append(r.skips, skip{e.Package, e.Test, reason, allowed(reason, r.set)})
	}
	delete(r.testOut, key)
	if e.Test != topKey[1] {
		return
	}
	if e.Action == "fail" && !r.verbose {
		// As go test: the output of the test and of its failed subtests.
		var lines []string
		for _, l := range r.topOut[topKey] {
			if r.failed1[[2]string{e.Package, l.test}] {
				lines = append(lines, l.text)
			}
		}
		r.print(lines)
	}
	delete(r.topOut, topKey)
	for k := range r.failed1 { // -count=N runs it again
		if k[0] == e.Package && top(k[1]) == e.Test {
			delete(r.failed1, k)
		}
	}
}

// packageDone prints what go test prints of a package: its "ok" line when
// it passed; when it failed, the output of tests that never ended (a
// panic, a timeout) and the package's own.
func (r *report) packageDone(e event) {
	out := r.pkgOut[e.Package]
	delete(r.pkgOut, e.Package)
	switch e.Action {
	case "pass":
		if !r.verbose {
			for _, l := range out {
				if strings.HasPrefix(l, "ok ") {
					fmt.Fprint(r.w, l)
				}
			}
		}
	case "skip": // no test files
		if !r.verbose {
			r.print(out)
		}
	case "fail":
		if !r.failedIn[e.Package] {
			r.failed++
			r.failures = append(r.failures, e.Package+" (no test failed: build, TestMain, panic or timeout)")
		}
		if !r.verbose {
			var unended [][2]string
			for k := range r.topOut {
				if k[0] == e.Package {
					unended = append(unended, k)
				}
			}
			slices.SortFunc(unended, func(a, b [2]string) int { return strings.Compare(a[1], b[1]) })
			for _, k := range unended {
				for _, l := range r.topOut[k] {
					r.print([]string{l.text})
				}
				delete(r.topOut, k)
			}
			r.print(out)
		}
	}
}

// print prints a test's output as go test does without -v: without the
// === RUN / PAUSE / CONT / NAME lines.
func (r *report) print(lines []string) {
	for _, l := range lines {
		if !strings.HasPrefix(l, "=== ") {
			fmt.Fprint(r.w, l)
		}
	}
}

// logLine is the first line of a t.Log entry in go test -v's output.
var logLine = regexp.MustCompile(`^\s+\S+\.go:\d+: `)

// skipReason is the last entry logged before "--- SKIP": t.Skip's
// message (continuation lines joined with spaces).
func skipReason(lines []string) string {
	var entry []string
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "=== "):
		case strings.HasPrefix(strings.TrimSpace(l), "--- SKIP"):
			return strings.Join(entry, " ")
		case logLine.MatchString(l):
			entry = []string{strings.TrimSpace(logLine.ReplaceAllString(l, ""))}
		case entry != nil:
			entry = append(entry, strings.TrimSpace(l))
		}
	}
	return strings.Join(entry, " ")
}

// allowed reports whether a skip's reason is a missing capability of the
// machine, and not a request (a -set variable) that did not work.
func allowed(reason string, set []string) bool {
	for _, v := range set {
		if strings.Contains(reason, v+"=") {
			return false
		}
	}
	return strings.HasPrefix(reason, "needs ") || strings.HasPrefix(reason, "no ")
}

// summarize prints the failures, the count and the skips, and reports
// whether all is well.
func (r *report) summarize() bool {
	bad := 0
	for _, s := range r.skips {
		if !s.allowed {
			bad++
		}
	}
	if len(r.failures) > 0 {
		fmt.Fprintln(r.w, "failed:")
		for _, f := range r.failures {
			fmt.Fprintln(r.w, "  "+f)
		}
	}
	if bad > 0 {
		fmt.Fprintf(r.w, "%d skipped for a reason other than a missing capability of the machine (marked FAIL below)\n", bad)
	}
	fmt.Fprintf(r.w, "tests: %d passed, %d failed, %d skipped\n", r.passed, r.failed, len(r.skips))
	for _, s := range r.skips {
		mark := "skip"
		if !s.allowed {
			mark = "FAIL"
		}
		reason := s.reason
		if reason == "" {
			reason = "(no reason given)"
		}
		fmt.Fprintf(r.w, "  %s: %s %s: %s\n", mark, s.pkg, s.test, reason)
	}
	return r.failed == 0 && bad == 0
}
