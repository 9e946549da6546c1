package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// testdata/transcript.json is `go test -json ./...` of three packages: p1
// with a skip for a missing capability, a failing subtest next to a
// passing one, a skip for another reason, a skip asking for
// DROVER_TESTBED=up and a passing test that logs; p2 passing; p3 a test
// that panics.
func TestTranscript(t *testing.T) {
	in, err := os.Open("testdata/transcript.json")
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	var out bytes.Buffer
	r := newReport(&out, false, []string{"DROVER_TESTBED"})
	if err := r.read(in); err != nil {
		t.Fatal(err)
	}
	if r.summarize() {
		t.Error("summarize reports all well after failures")
	}
	got := out.String()
	for _, want := range []string{
		"ok  \texp/p2\t",
		"    a_test.go:8: it broke\n--- FAIL: TestFails/bad",
		"--- FAIL: TestFails (",
		"FAIL\texp/p1\t",
		"panic: boom",
		"FAIL\texp/p3\t",
		"\ntests: 3 passed, 3 failed, 3 skipped\n" +
			"  skip: exp/p1 TestNeeds: needs two cores\n" +
			"  FAIL: exp/p1 TestKnown: the scenario did not happen\n" +
			"  FAIL: exp/p1 TestOptIn: needs DROVER_TESTBED=up to bring up the test bed\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	for _, not := range []string{"=== RUN", "TestFails/fine", "quiet", "looking", "ok  \texp/p1"} {
		if strings.Contains(got, not) {
			t.Errorf("output has %q, which go test without -v does not print:\n%s", not, got)
		}
	}
	if !strings.HasSuffix(got, "the test bed\n") {
		t.Errorf("output does not end with the skips:\n%s", got)
	}
}

func TestVerboseEchoesEverything(t *testing.T) {
	data, err := os.ReadFile("testdata/transcript.json")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	r := newReport(&out, true, nil)
	if err := r.read(bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"=== RUN   TestPasses", "a_test.go:13: quiet", "--- PASS: TestFails/fine"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("-v output lacks %q", want)
		}
	}
}

func TestAllowed(t *testing.T) {
	set := []string{"DROVER_TESTBED", "DROVER_INSTALL"}
	for reason, want := range map[string]bool{
		"needs root and setpriv": true,
		"no salloc":              true,
		"needs a cgroup for the agent: DROVER_TEST_CGROUP=1": true,
		"needs DROVER_TESTBED=up to bring up the test bed":   false,
		"needs chromium: DROVER_INSTALL=1 installs it":       false,
		"the run finished before it was killed":              false,
		"known bug drover-12: serve hangs":                   false,
		"":                                                   false,
	} {
		if got := allowed(reason, set); got != want {
			t.Errorf("allowed(%q) = %v, want %v", reason, got, want)
		}
	}
}

func TestNotJSONEchoed(t *testing.T) {
	var out bytes.Buffer
	r := newReport(&out, false, nil)
	if err := r.read(strings.NewReader("# exp/p4\nsyntax error\n{\"Action\":\"start\",\"Package\":\"x\"}\n")); err != nil {
		t.Fatal(err)
	}
	if out.String() != "# exp/p4\nsyntax error\n" {
		t.Errorf("output %q", out.String())
	}
}
