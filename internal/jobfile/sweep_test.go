package jobfile

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// parseIn parses src as DIR/jobs.yaml, where files holds the other
// files (name → content), and returns the file or the error lines with
// DIR/ cut off.
func parseIn(t *testing.T, files map[string]string, src string) (*File, []string) {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f, err := Parse(filepath.Join(dir, "jobs.yaml"), []byte(src))
	if err == nil {
		return f, nil
	}
	var es Errors
	if !errors.As(err, &es) {
		t.Fatalf("Parse error is %T, want Errors: %v", err, err)
	}
	return nil, strings.Split(strings.ReplaceAll(err.Error(), dir+"/", ""), "\n")
}

func TestSweepErrors(t *testing.T) {
	const head = "jobs:\n  - name: a\n    command: [x]\n"
	tests := []struct {
		name  string
		files map[string]string
		src   string
		want  []string
	}{
		{"matrix empty", nil, head + "    matrix: {}\n", []string{
			`jobs.yaml:4:13: matrix must name at least one parameter, such as {x: [1, 2, 3]}`,
		}},
		{"matrix null", nil, head + "    matrix:\n", []string{
			`jobs.yaml:4:5: matrix must be a mapping of parameter names to lists of values, such as {x: [1, 2, 3], y: [a, b]}, got nothing (null)`,
		}},
		{"matrix list", nil, head + "    matrix: [1, 2]\n", []string{
			`jobs.yaml:4:13: matrix must be a mapping of parameter names to lists of values, such as {x: [1, 2, 3], y: [a, b]}, got a list`,
		}},
		{"matrix keys", nil, head + "    matrix:\n      1x: [1]\n      a-b: [1]\n      index: [1]\n      seed: [1]\n      SEED: [2]\n", []string{
			`jobs.yaml:5:7: matrix key "1x" must be letters, digits and "_", not starting with a digit, so that {1x} can name it`,
			`jobs.yaml:6:7: matrix key "a-b" must be letters, digits and "_", not starting with a digit, so that {a-b} can name it`,
			`jobs.yaml:7:7: matrix key "index" is taken: {index} is the instance's index`,
			`jobs.yaml:9:7: matrix key "SEED" repeats "seed": both would be DROVER_PARAM_SEED`,
		}},
		{"matrix duplicate value", nil, head + "    matrix: {z: [1, 2, 1]}\n", []string{
			`jobs.yaml:4:24: matrix z[2] repeats the value "1" of z[0]`,
		}},
		{"matrix values", nil, head + "    matrix: {x: [], y: 3, z: [1, [2], 1, null]}\n", []string{
			`jobs.yaml:4:14: matrix x has no values: give at least one, such as x: [1, 2]`,
			`jobs.yaml:4:24: matrix y must be a list of values, such as [1, 2, 3], got 3`,
			`jobs.yaml:4:34: matrix z[1] must be text or a number, got a list`,
			`jobs.yaml:4:42: matrix z[3] must be text or a number, got nothing (null)`,
		}},
		{"matrix and repeat", nil, head + "    repeat: 3\n    matrix: {x: [1, 2]}\n", []string{
			`jobs.yaml:4:13: repeat does not go with matrix: for replicas, add a parameter such as seed: [1, 2, 3] to the matrix`,
		}},
		{"matrix and params", map[string]string{"p.csv": "x\n1\n"}, head + "    matrix: {x: [1, 2]}\n    params: p.csv\n", []string{
			`jobs.yaml:5:13: give either matrix or params, not both`,
		}},
		{"matrix too large", nil, head + "    matrix: {a: [1,2,3,4,5,6,7,8,9,10], b: [1,2,3,4,5,6,7,8,9,10], c: [1,2,3,4,5,6,7,8,9,10], " +
			"d: [1,2,3,4,5,6,7,8,9,10], e: [1,2,3,4,5,6,7,8,9,10], f: [1,2,3,4,5,6,7,8,9,10], g: [1,2,3,4,5,6,7,8,9,10], h: [1,2]}\n", []string{
			`jobs.yaml:4:13: matrix makes more than 10000000 instances, the most a job may have`,
		}},
		{"params missing", nil, head + "    params: sweep.csv\n", []string{
			`jobs.yaml:4:13: params: open sweep.csv: no such file or directory`,
		}},
		{"params ragged", map[string]string{"sweep.csv": "x,y\n1,a\n2\n3,c,extra\n"}, head + "    params: sweep.csv\n", []string{
			`jobs.yaml:4:13: params sweep.csv: the row on line 3 has 1 fields, the header has 2`,
			`jobs.yaml:4:13: params sweep.csv: the row on line 4 has 3 fields, the header has 2`,
		}},
		{"params empty", map[string]string{"sweep.csv": ""}, head + "    params: sweep.csv\n", []string{
			`jobs.yaml:4:13: params sweep.csv is empty: its first line must name the parameters, such as x,y`,
		}},
		{"params no rows", map[string]string{"sweep.csv": "x,y\n"}, head + "    params: sweep.csv\n", []string{
			`jobs.yaml:4:13: params sweep.csv has a header but no rows: add one row of values per instance`,
		}},
		{"params header", map[string]string{"sweep.csv": "x,2y,X\n1,2,3\n"}, head + "    params: sweep.csv\n", []string{
			`jobs.yaml:4:13: params sweep.csv: column "2y" must be letters, digits and "_", not starting with a digit, so that {2y} can name it`,
			`jobs.yaml:4:13: params sweep.csv: column "X" repeats "x": both would be DROVER_PARAM_X`,
		}},
		{"params bad csv", map[string]string{"sweep.csv": "x\n\"open\n"}, head + "    params: sweep.csv\n", []string{
			`jobs.yaml:4:13: params sweep.csv: parse error on line 2, column 7: extraneous or missing " in quoted-field`,
		}},
		{"params and repeat", map[string]string{"sweep.csv": "x\n1\n"}, head + "    params: sweep.csv\n    repeat: 2\n", []string{
			`jobs.yaml:5:13: repeat does not go with params: for replicas, add a parameter such as seed: [1, 2, 3] to the matrix`,
		}},

		// Placeholders.
		{"unknown placeholder", nil, "jobs:\n  - name: a\n    command: [x, '{y}', '{{y}}', '${y}', '{ y }', '{}', '{a,b}']\n    matrix: {x: [1]}\n", []string{
			`jobs.yaml:3:18: command[1] uses {y}, which is no placeholder of this job (it has {index}, {x}); write {{y}} for the braces themselves`,
		}},
		{"unknown placeholder in shell and setup", nil, "jobs:\n  - name: a\n    shell: \"awk '{print $1}' f | awk '{print}'\"\n    setup: ['cd {dir}']\n", []string{
			`jobs.yaml:3:12: shell uses {print}, which is no placeholder of this job (it has {index}); write {{print}} for the braces themselves`,
			`jobs.yaml:4:13: setup[0] uses {dir}, which is no placeholder of this job (it has {index}); write {{dir}} for the braces themselves`,
		}},
		{"port placeholder kept", nil, "jobs:\n  - name: a\n    command: [x, '{port:web}', '{port:Web}']\n    ports: [web]\n", []string{
			`jobs.yaml:3:32: command[2] uses {port:Web}, but "Web" is not listed in ports; did you mean {port:web}?`,
		}},

		// max_running
		{"max_running zero", nil, head + "    max_running: 0\n", []string{
			`jobs.yaml:4:18: max_running must be a whole number >= 1, got 0`,
		}},
		{"max_running words", nil, head + "    max_running: many\n", []string{
			`jobs.yaml:4:18: max_running must be a whole number >= 1, got "many"`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, got := parseIn(t, tt.files, tt.src)
			if f != nil {
				t.Fatalf("parsed without error: %+v", f.Jobs)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

// The matrix's first key is outermost; params go by rows; both name their
// instances like repeat and replace their placeholders.
func TestSweepInstances(t *testing.T) {
	f, errs := parseIn(t, map[string]string{"sweep.csv": "\ufeffalpha, mode\n0.1,fast\n0.2, \"slow, careful\"\n"}, `jobs:
  - name: m
    command: [sim, "{x}-{y}", "{index}", "{{x}}", "{port:p}", "${HOME}", "{}", "}}{{"]
    ports: [p]
    matrix: {x: [1, 2, 3], y: [a, b]}
  - name: p
    shell: "run --alpha {alpha} --mode '{mode}' | awk '{print $1}'"
    setup: ["mkdir -p out-{alpha}"]
    params: sweep.csv
  - name: one
    command: [sim, "{x}"]
    matrix: {x: [only]}
`)
	if errs != nil {
		t.Fatal(strings.Join(errs, "\n"))
	}
	m, p, one := &f.Jobs[0], &f.Jobs[1], &f.Jobs[2]
	if m.Repeat != 6 || p.Repeat != 2 || one.Repeat != 1 {
		t.Fatalf("repeat %d %d %d, want 6 2 1", m.Repeat, p.Repeat, one.Repeat)
	}
	var got [][]string
	for _, in := range m.Instances() {
		got = append(got, append([]string{in.Name}, in.Args...))
	}
	want := [][]string{
		{"m.0", "sim", "1-a", "0", "{x}", "{port:p}", "${HOME}", "{}", "}{"},
		{"m.1", "sim", "1-b", "1", "{x}", "{port:p}", "${HOME}", "{}", "}{"},
		{"m.2", "sim", "2-a", "2", "{x}", "{port:p}", "${HOME}", "{}", "}{"},
		{"m.3", "sim", "2-b", "3", "{x}", "{port:p}", "${HOME}", "{}", "}{"},
		{"m.4", "sim", "3-a", "4", "{x}", "{port:p}", "${HOME}", "{}", "}{"},
		{"m.5", "sim", "3-b", "5", "{x}", "{port:p}", "${HOME}", "{}", "}{"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("matrix instances:\n%q\nwant:\n%q", got, want)
	}
	if ps := m.Instance(3).Params; !reflect.DeepEqual(ps, []Param{{"x", "2"}, {"y", "b"}}) {
		t.Errorf("m.3 params %v", ps)
	}
	if env := (Param{Name: "alpha"}).EnvName(); env != "DROVER_PARAM_ALPHA" {
		t.Errorf("env name %s", env)
	}
	in := p.Instance(1)
	if in.Name != "p.1" || !reflect.DeepEqual(in.Params, []Param{{"alpha", "0.2"}, {"mode", "slow, careful"}}) {
		t.Errorf("p.1: %+v", in)
	}
	wantArgs := []string{"/bin/sh", "-c", "set -e\nmkdir -p out-0.2\nset +e\nrun --alpha 0.2 --mode 'slow, careful' | awk '{print $1}'"}
	if !reflect.DeepEqual(in.Args, wantArgs) {
		t.Errorf("p.1 args %q, want %q", in.Args, wantArgs)
	}
	if in := one.Instance(0); in.Name != "one" || !reflect.DeepEqual(in.Args, []string{"sim", "only"}) {
		t.Errorf("one: %+v", in)
	}
	if s := m.SweepString(); s != "matrix x(3) × y(2)" {
		t.Errorf("SweepString %q", s)
	}
}

// Jobs built in code (drover run --matrix) are checked like a file's.
func TestSweepValidate(t *testing.T) {
	j := &Job{Name: "sim", Command: []string{"sim", "{x}", "{y}"}, Repeat: 1,
		Matrix: []Axis{{Name: "x", Values: []string{"1", "2", "3"}}, {Name: "y", Values: []string{"a", "b"}}}}
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
	if j.Repeat != 6 {
		t.Errorf("repeat %d, want 6", j.Repeat)
	}
	if err := j.Validate(); err != nil { // again: still valid
		t.Errorf("second Validate: %v", err)
	}
	for _, c := range []struct {
		job  Job
		want string
	}{
		{Job{Name: "a", Command: []string{"x", "{z}"}, Matrix: []Axis{{Name: "x", Values: []string{"1"}}}},
			`command[1] uses {z}, which is no placeholder of this job (it has {index}, {x}); write {{z}} for the braces themselves`},
		{Job{Name: "a", Command: []string{"x"}, Matrix: []Axis{{Name: "x"}}}, `matrix x has no values: give at least one, such as x: [1, 2]`},
		{Job{Name: "a", Command: []string{"x"}, Matrix: []Axis{}}, `matrix must name at least one parameter, such as {x: [1, 2, 3]}`},
		{Job{Name: "a", Command: []string{"x"}, Repeat: 4, Matrix: []Axis{{Name: "x", Values: []string{"1", "2"}}}},
			`repeat does not go with matrix: for replicas, add a parameter such as seed: [1, 2, 3] to the matrix`},
	} {
		if err := c.job.Validate(); err == nil || err.Error() != c.want {
			t.Errorf("%+v: Validate %v, want %q", c.job, err, c.want)
		}
	}
}

// Text without placeholders is kept as written, braces and all, except
// for the escapes.
func TestExpandText(t *testing.T) {
	value := func(name string) (string, bool) {
		if name == "x" {
			return "X", true
		}
		return "", false
	}
	for in, want := range map[string]string{
		"plain":                     "plain",
		"{x}":                       "X",
		"a{x}b{x}":                  "aXbX",
		"{{x}}":                     "{x}",
		"{{{x}}}":                   "{X}",
		"${x}":                      "${x}",
		"awk '{print $1}'":          "awk '{print $1}'",
		"{a,b} { x } {} {1x} {x-y}": "{a,b} { x } {} {1x} {x-y}",
		"{port:web} {port:}":        "{port:web} {port:}",
		"${A:-${B}}":                "${A:-${B}",
		"unknown {y} stays":         "unknown {y} stays",
		"{":                         "{",
		"}":                         "}",
		"{x":                        "{x",
		"x}}":                       "x}",
	} {
		if got := expandText(in, value); got != want {
			t.Errorf("expandText(%q) = %q, want %q", in, got, want)
		}
	}
}
