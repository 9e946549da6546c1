package jobfile

import (
	"errors"
	"os"
	"runtime"
	"strings"
	"testing"
)

func FuzzParse(f *testing.F) {
	sample, err := os.ReadFile("testdata/sample.yaml")
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{
		string(sample),
		"",
		"jobs: []\n",
		"- a\n",
		`{"jobs": [{"name": "a", "command": ["x", 1], "repeat": 2}]}`,
		"jobs:\n  - &b {name: a, command: [x], env: &e {A: 1}}\n  - {<<: *b, name: b, env: {<<: *e}}\n  - *b\n",
		"jobs:\n  - name: a\n    shell: !!str\n    cores: !x 1\n    ports: [a, A, 1]\n    command: *no\n",
		"jobs:\n  - name: a.0\n  - name: a\n    repeat: 2\n    timeout: 1.5h\n---\nx: 1\n",
		"jobs:\n  - name: a\n    command: ['{port:x}', '\\0']\n    files: [../a, /b, '[']\n",
		"jobs:\n  - name: a\n    command: [x]\n    env: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n",
		"- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - x\n",
		"jobs:\n  - name: a\n    shell: |\n      f() { [ [ {\n    env: {A: '[[', B: \"{{\\\"\"}\n",
		"jobs:\n  - {name: a, command: ['{x}{{y}}', '${z}'], matrix: {x: [1, 2], Y: [a]}, after: [b], max_running: 2}\n  - {name: b, shell: '{index}}', after: [a, c], params: testdata/sample.yaml}\n",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, src string) {
		var file *File
		var err error
		// Work bounded by the input: the parser takes some hundreds of
		// bytes per byte of a plain file; nesting made it quadratic.
		// TotalAlloc only grows, so no GC is needed to measure it, and a
		// GC per input slows fuzzing to a crawl.
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		file, err = Parse("fuzz.yaml", []byte(src))
		runtime.ReadMemStats(&after)
		alloc := after.TotalAlloc - before.TotalAlloc
		if limit := 1000*uint64(len(src)) + 8<<20; alloc > limit {
			t.Fatalf("parsing %d bytes allocated %d bytes, more than %d", len(src), alloc, limit)
		}
		if err == nil {
			if file == nil {
				t.Fatal("neither a file nor an error")
			}
			for i := range file.Jobs {
				j := file.Jobs[i]
				if err := j.Validate(); err != nil {
					t.Fatalf("Parse accepted job %q that Validate rejects: %v", j.Name, err)
				}
				if j.Line < 1 || j.Col < 1 {
					t.Fatalf("job %q at %d:%d", j.Name, j.Line, j.Col)
				}
			}
			return
		}
		var es Errors
		if !errors.As(err, &es) || len(es) == 0 {
			t.Fatalf("error %T %v, want non-empty Errors", err, err)
		}
		for _, e := range es {
			fileLevel := e.Line == 0 && (strings.HasPrefix(e.Msg, "invalid YAML") || strings.HasPrefix(e.Msg, "and "))
			if e.File != "fuzz.yaml" || (e.Line < 1 || e.Col < 1) && !fileLevel || e.Msg == "" {
				t.Fatalf("bad error %#v", e)
			}
		}
	})
}
