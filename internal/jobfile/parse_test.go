package jobfile

import (
	"errors"
	"io/fs"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// parseErrs parses src as jobs.yaml and returns its error lines.
func parseErrs(t *testing.T, src string) []string {
	t.Helper()
	f, err := Parse("jobs.yaml", []byte(src))
	if err == nil {
		if f == nil {
			t.Fatal("Parse returned neither a file nor an error")
		}
		return nil
	}
	var es Errors
	if !errors.As(err, &es) {
		t.Fatalf("Parse error is %T, want Errors: %v", err, err)
	}
	if f != nil {
		t.Errorf("Parse returned a file along with errors")
	}
	return strings.Split(err.Error(), "\n")
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string
	}{
		// The file as a whole.
		{"yaml syntax", "jobs:\n  - name: [a\n", []string{
			`jobs.yaml:2:11: invalid YAML: sequence end token ']' not found`,
		}},
		{"empty file", "", []string{
			`jobs.yaml:1:1: the file is empty: want a mapping with a "jobs" list`,
		}},
		{"only comments", "# nothing yet\n", []string{
			`jobs.yaml:1:1: the file is empty: want a mapping with a "jobs" list`,
		}},
		{"top level list", "- name: a\n  command: [x]\n", []string{
			`jobs.yaml:1:1: a job file is a mapping with a "jobs" list, got a list: put "jobs:" on a line before it`,
		}},
		{"top level scalar", "hello\n", []string{
			`jobs.yaml:1:1: a job file is a mapping with a "jobs" list, got "hello"`,
		}},
		{"top level unknown key", "jobs:\n  - name: a\n    command: [x]\nsettings: {}\n", []string{
			`jobs.yaml:4:1: unknown key "settings"`,
		}},
		{"missing jobs", "job:\n  - name: a\n", []string{
			`jobs.yaml:1:1: unknown key "job"; did you mean "jobs"?`,
			`jobs.yaml:1:1: missing "jobs"`,
		}},
		{"two documents", "jobs:\n  - name: a\n    command: [x]\n---\njobs: []\n", []string{
			`jobs.yaml:5:1: a job file holds one YAML document: remove this one or merge it into the first`,
		}},
		{"jobs null", "jobs:\n", []string{
			`jobs.yaml:1:1: "jobs" must be a non-empty list of jobs, got nothing (null)`,
		}},
		{"jobs empty", "jobs: []\n", []string{
			`jobs.yaml:1:7: "jobs" must be a non-empty list of jobs, got an empty list`,
		}},
		{"jobs mapping", "jobs: {name: a}\n", []string{
			`jobs.yaml:1:7: "jobs" must be a non-empty list of jobs, got a mapping`,
		}},
		{"job not a mapping", "jobs:\n  - ./sim\n", []string{
			`jobs.yaml:2:5: a job must be a mapping with keys such as "name" and "command", got "./sim"`,
		}},
		{"duplicate top key", "jobs:\n  - name: a\n    command: [x]\njobs:\n  - name: b\n    command: [x]\n", []string{
			`jobs.yaml:4:1: duplicate key "jobs" (first at line 1)`,
		}},

		{"json with tabs", "{\n\t\"jobs\": [\n\t\t{\"name\": \"a\", \"command\": [\"x\"], \"cores\": 0}\n\t]\n}\n", []string{
			`jobs.yaml:3:44: cores must be a whole number >= 1, got 0`,
		}},
		{"byte order mark", "\ufeffjobs:\n  - name: a\n    command: [x]\n    cores: 0\n", []string{
			`jobs.yaml:4:12: cores must be a whole number >= 1, got 0`,
		}},
		{"windows line ends", "jobs:\r\n  - name: a\r\n    command: [x]\r\n    cores: 0\r\n", []string{
			`jobs.yaml:4:12: cores must be a whole number >= 1, got 0`,
		}},

		// Keys of a job.
		{"unknown key suggestion", "jobs:\n  - name: a\n    comand: [x]\n", []string{
			`jobs.yaml:2:5: missing "command" (or "shell")`,
			`jobs.yaml:3:5: unknown key "comand"; did you mean "command"?`,
		}},
		{"unknown key synonym", "jobs:\n  - name: a\n    command: [x]\n    cpus: 4\n", []string{
			`jobs.yaml:4:5: unknown key "cpus"; did you mean "cores"?`,
		}},
		{"unknown key case", "jobs:\n  - name: a\n    command: [x]\n    Repeat: 4\n", []string{
			`jobs.yaml:4:5: unknown key "Repeat"; did you mean "repeat"?`,
		}},
		{"unknown key no suggestion", "jobs:\n  - name: a\n    command: [x]\n    colour: red\n", []string{
			`jobs.yaml:4:5: unknown key "colour"`,
		}},
		{"duplicate key", "jobs:\n  - name: a\n    command: [x]\n    cores: 2\n    cores: 3\n", []string{
			`jobs.yaml:5:5: duplicate key "cores" (first at line 4)`,
		}},

		// name
		{"missing name", "jobs:\n  - command: [x]\n", []string{
			`jobs.yaml:2:5: missing "name"`,
		}},
		{"missing name flow", "jobs: [{command: [x]}]\n", []string{
			`jobs.yaml:1:8: missing "name"`,
		}},
		{"name null", "jobs:\n  - name:\n    command: [x]\n", []string{
			`jobs.yaml:2:5: name must be text, got nothing (null)`,
		}},
		{"name empty", "jobs:\n  - name: ''\n    command: [x]\n", []string{
			`jobs.yaml:2:11: name must not be empty`,
		}},
		{"name characters", "jobs:\n  - name: my job\n    command: [x]\n", []string{
			`jobs.yaml:2:11: name "my job" must be letters, digits, "_", "." and "-"`,
		}},
		{"name dotdot", "jobs:\n  - name: ..\n    command: [x]\n", []string{
			`jobs.yaml:2:11: name ".." is not allowed: instance names become directory names`,
		}},
		{"name too long", "jobs:\n  - name: " + strings.Repeat("a", 201) + "\n    command: [x]\n", []string{
			`jobs.yaml:2:11: name is 201 characters long, at most 200 are allowed`,
		}},
		{"name reserved", "jobs:\n  - name: events.jsonl\n    command: [x]\n", []string{
			`jobs.yaml:2:11: name "events.jsonl" is taken by a file in the results directory`,
		}},
		{"name duplicate", "jobs:\n  - name: a\n    command: [x]\n  - name: a\n    command: [y]\n", []string{
			`jobs.yaml:4:11: job name "a" is already used at line 2`,
		}},
		{"instance clashes with later job", "jobs:\n  - name: a\n    repeat: 2\n    command: [x]\n  - name: a.1\n    command: [y]\n", []string{
			`jobs.yaml:5:11: job name "a.1" is also the name of instance 1 of job "a" (line 2)`,
		}},
		{"instance clashes with earlier job", "jobs:\n  - name: a.0\n    command: [x]\n  - name: a\n    repeat: 2\n    command: [y]\n", []string{
			`jobs.yaml:4:11: instance 0 of job "a" is named "a.0", like the job at line 2`,
		}},

		// command and shell
		{"command and shell", "jobs:\n  - name: a\n    command: [x]\n    shell: x\n", []string{
			`jobs.yaml:4:12: give either command or shell, not both`,
		}},
		{"neither command nor shell", "jobs:\n  - name: a\n    cores: 2\n", []string{
			`jobs.yaml:2:5: missing "command" (or "shell")`,
		}},
		{"command empty", "jobs:\n  - name: a\n    command: []\n", []string{
			`jobs.yaml:3:14: command must not be empty`,
		}},
		{"command null", "jobs:\n  - name: a\n    command:\n", []string{
			`jobs.yaml:3:5: command must be a non-empty list of arguments, such as [./sim, --seed, "{index}"], got nothing (null)`,
		}},
		{"command string", "jobs:\n  - name: a\n    command: ./sim --fast\n", []string{
			`jobs.yaml:3:14: command must be a list of arguments, such as [./sim, --seed, "{index}"], got "./sim --fast"; use "shell" for a command line`,
		}},
		{"command program empty", "jobs:\n  - name: a\n    command: ['', x]\n", []string{
			`jobs.yaml:3:15: command[0], the program, must not be empty`,
		}},
		{"command items", "jobs:\n  - name: a\n    command:\n      - x\n      -\n      - {a: 1}\n      - \"nul\\0\"\n", []string{
			`jobs.yaml:5:8: command[1] is empty (null); quote it for text: "" or "null"`,
			`jobs.yaml:6:9: command[2] must be text, got a mapping`,
			`jobs.yaml:7:9: command[3] contains a NUL byte`,
		}},
		{"shell empty", "jobs:\n  - name: a\n    shell: ''\n", []string{
			`jobs.yaml:3:12: shell must not be empty`,
		}},
		{"shell list", "jobs:\n  - name: a\n    shell: [a, b]\n", []string{
			`jobs.yaml:3:12: shell must be text, got a list`,
		}},

		// repeat, cores, retries
		{"repeat zero", "jobs:\n  - name: a\n    command: [x]\n    repeat: 0\n", []string{
			`jobs.yaml:4:13: repeat must be a whole number >= 1, got 0`,
		}},
		{"repeat float", "jobs:\n  - name: a\n    command: [x]\n    repeat: 2.5\n", []string{
			`jobs.yaml:4:13: repeat must be a whole number >= 1, got 2.5`,
		}},
		{"repeat too big", "jobs:\n  - name: a\n    command: [x]\n    repeat: 10000001\n", []string{
			`jobs.yaml:4:13: repeat must be at most 10000000, got 10000001`,
		}},
		{"repeat huge", "jobs:\n  - name: a\n    command: [x]\n    repeat: 99999999999999999999999\n", []string{
			`jobs.yaml:4:13: repeat must be at most 10000000, got "99999999999999999999999"`,
		}},
		{"repeat null", "jobs:\n  - name: a\n    command: [x]\n    repeat:\n", []string{
			`jobs.yaml:4:5: repeat must be a whole number >= 1, got nothing (null)`,
		}},
		{"cores words", "jobs:\n  - name: a\n    command: [x]\n    cores: two\n", []string{
			`jobs.yaml:4:12: cores must be a whole number >= 1, got "two"`,
		}},
		{"cores negative", "jobs:\n  - name: a\n    command: [x]\n    cores: -2\n", []string{
			`jobs.yaml:4:12: cores must be a whole number >= 1, got -2`,
		}},
		{"cores too many", "jobs:\n  - name: a\n    command: [x]\n    cores: 4097\n", []string{
			`jobs.yaml:4:12: cores must be at most 4096, got 4097`,
		}},
		{"cores bool", "jobs:\n  - name: a\n    command: [x]\n    cores: true\n", []string{
			`jobs.yaml:4:12: cores must be a whole number >= 1, got true`,
		}},
		{"retries negative", "jobs:\n  - name: a\n    command: [x]\n    retries: -1\n", []string{
			`jobs.yaml:4:14: retries must be a whole number >= 0, got -1`,
		}},
		{"retries too many", "jobs:\n  - name: a\n    command: [x]\n    retries: 1000001\n", []string{
			`jobs.yaml:4:14: retries must be at most 1000000, got 1000001`,
		}},

		// timeout
		{"timeout zero", "jobs:\n  - name: a\n    command: [x]\n    timeout: 0\n", []string{
			`jobs.yaml:4:14: timeout must be a duration above zero, such as "90s", "10m" or 3600 (seconds), got 0`,
		}},
		{"timeout negative", "jobs:\n  - name: a\n    command: [x]\n    timeout: -5s\n", []string{
			`jobs.yaml:4:14: timeout must be a duration above zero, such as "90s", "10m" or 3600 (seconds), got "-5s"`,
		}},
		{"timeout no unit", "jobs:\n  - name: a\n    command: [x]\n    timeout: 1.5\n", []string{
			`jobs.yaml:4:14: timeout must be a duration above zero, such as "90s", "10m" or 3600 (seconds), got 1.5`,
		}},
		{"timeout words", "jobs:\n  - name: a\n    command: [x]\n    timeout: ten minutes\n", []string{
			`jobs.yaml:4:14: timeout must be a duration above zero, such as "90s", "10m" or 3600 (seconds), got "ten minutes"`,
		}},

		// env
		{"env list", "jobs:\n  - name: a\n    command: [x]\n    env: [A=1]\n", []string{
			`jobs.yaml:4:10: env must be a mapping of NAME: value, got a list`,
		}},
		{"env values", "jobs:\n  - name: a\n    command: [x]\n    env:\n      1ST: x\n      A-B: y\n      EMPTY:\n      DEEP: [1]\n      OK: 3\n", []string{
			`jobs.yaml:5:7: env name "1ST" must be letters, digits and "_", not starting with a digit`,
			`jobs.yaml:6:7: env name "A-B" must be letters, digits and "_", not starting with a digit`,
			`jobs.yaml:7:7: env EMPTY has no value; write EMPTY: "" for an empty one`,
			`jobs.yaml:8:13: env DEEP must be text, got a list`,
		}},
		{"env duplicate", "jobs:\n  - name: a\n    command: [x]\n    env: {A: 1, A: 2}\n", []string{
			`jobs.yaml:4:17: duplicate key "A" (first at line 4)`,
		}},

		// files and outputs
		{"files", "jobs:\n  - name: a\n    command: [x]\n    files: [/etc/passwd, ../up, a/../b, '', ., [x]]\n", []string{
			`jobs.yaml:4:13: files[0] "/etc/passwd" must be relative to the job file's directory`,
			`jobs.yaml:4:26: files[1] "../up" must not contain ".."`,
			`jobs.yaml:4:33: files[2] "a/../b" must not contain ".."`,
			`jobs.yaml:4:41: files[3] must not be empty`,
			`jobs.yaml:4:45: files[4] "." names no file below the job file's directory`,
			`jobs.yaml:4:48: files[5] must be text, got a list`,
		}},
		{"files not a list", "jobs:\n  - name: a\n    command: [x]\n    files: input.dat\n", []string{
			`jobs.yaml:4:12: files must be a list, got "input.dat"`,
		}},
		{"outputs", "jobs:\n  - name: a\n    command: [x]\n    outputs: ['[a-', /tmp/*.csv, 'a\\']\n", []string{
			`jobs.yaml:4:15: outputs[0] "[a-" is not a valid pattern`,
			`jobs.yaml:4:22: outputs[1] "/tmp/*.csv" must be relative to the work dir`,
			`jobs.yaml:4:34: outputs[2] "a\\" is not a valid pattern`,
		}},

		// setup
		{"setup not a list", "jobs:\n  - name: a\n    command: [x]\n    setup: source venv/bin/activate\n", []string{
			`jobs.yaml:4:12: setup must be a list, got "source venv/bin/activate"`,
		}},
		{"setup item", "jobs:\n  - name: a\n    command: [x]\n    setup:\n      - {cd: dir}\n", []string{
			`jobs.yaml:5:9: setup[0] must be text, got a mapping`,
		}},

		// ports
		{"ports", "jobs:\n  - name: a\n    command: [x]\n    ports: [web-ui, 8080, ctl, CTL]\n", []string{
			`jobs.yaml:4:13: ports[0] "web-ui" must be a name of letters, digits and "_"`,
			`jobs.yaml:4:21: ports[1] must be a port name, got 8080: drover picks a free port for each name`,
			`jobs.yaml:4:32: ports[3] "CTL" repeats port "ctl": both would be DROVER_PORT_CTL`,
		}},
		{"port references", "jobs:\n  - name: a\n    command: [x, '{port:ctl}', '{port:Web}']\n    setup: ['echo {port:db}']\n    ports: [ctl, web]\n", []string{
			`jobs.yaml:3:32: command[2] uses {port:Web}, but "Web" is not listed in ports; did you mean {port:web}?`,
			`jobs.yaml:4:13: setup[0] uses {port:db}, but "db" is not listed in ports`,
		}},
		{"port reference in shell", "jobs:\n  - name: a\n    shell: \"curl localhost:{port:api}/x | awk '{print $1}'\"\n", []string{
			`jobs.yaml:3:12: shell uses {port:api}, but "api" is not listed in ports`,
		}},

		// node and workdir
		{"node empty", "jobs:\n  - name: a\n    command: [x]\n    node: ''\n", []string{
			`jobs.yaml:4:11: node must not be empty; leave it out to run on any node`,
		}},
		{"node null", "jobs:\n  - name: a\n    command: [x]\n    node:\n", []string{
			`jobs.yaml:4:5: node must be text, got nothing (null)`,
		}},
		{"node list", "jobs:\n  - name: a\n    command: [x]\n    node: [n1, n2]\n", []string{
			`jobs.yaml:4:11: node must be text, got a list`,
		}},
		{"workdir empty", "jobs:\n  - name: a\n    command: [x]\n    workdir: \"\"\n", []string{
			`jobs.yaml:4:14: workdir must not be empty; leave it out for a fresh work dir`,
		}},

		// Anchors, aliases, tags.
		{"unknown alias", "jobs:\n  - name: a\n    command: *cmd\n", []string{
			`jobs.yaml:3:14: alias *cmd names no anchor &cmd defined before it`,
		}},
		{"unsupported tag", "jobs:\n  - name: a\n    command: [x]\n    cores: !cores 2\n", []string{
			`jobs.yaml:4:12: unsupported tag !cores`,
		}},
		{"merge of a scalar", "jobs:\n  - name: a\n    command: [x]\n    <<: base\n", []string{
			`jobs.yaml:4:9: a merge key (<<) takes a mapping or a list of mappings, such as *base, got "base"`,
		}},
		{"error in a merged mapping", "jobs:\n  - &base\n    name: a\n    command: [x]\n    cores: many\n  - <<: *base\n    name: b\n", []string{
			`jobs.yaml:5:12: cores must be a whole number >= 1, got "many"`,
		}},
		{"duplicate through alias", "jobs:\n  - &a\n    name: a\n    command: [x]\n  - *a\n", []string{
			`jobs.yaml:5:5: job name "a" is already used at line 3`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := parseErrs(t, tt.src)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

func TestParseReportsEveryProblem(t *testing.T) {
	src := `jobs:
  - name: sim
    comand: [./sim]
    cores: two
    repeat: 0
  - name: sim
    shell: run
    env: {9LIVES: x}
`
	want := []string{
		`jobs.yaml:2:5: missing "command" (or "shell")`,
		`jobs.yaml:3:5: unknown key "comand"; did you mean "command"?`,
		`jobs.yaml:4:12: cores must be a whole number >= 1, got "two"`,
		`jobs.yaml:5:13: repeat must be a whole number >= 1, got 0`,
		`jobs.yaml:6:11: job name "sim" is already used at line 2`,
		`jobs.yaml:8:11: env name "9LIVES" must be letters, digits and "_", not starting with a digit`,
	}
	_, err := Parse("jobs.yaml", []byte(src))
	var es Errors
	if !errors.As(err, &es) {
		t.Fatalf("error %T %v, want Errors", err, err)
	}
	if len(es) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(es), len(want), err)
	}
	for i, e := range es {
		if e.Error() != want[i] {
			t.Errorf("error %d = %q, want %q", i, e.Error(), want[i])
		}
		if e.File != "jobs.yaml" || e.Line < 1 || e.Col < 1 {
			t.Errorf("error %d has File %q Line %d Col %d", i, e.File, e.Line, e.Col)
		}
	}
	// errors.As also finds the single errors inside.
	var one *Error
	if !errors.As(err, &one) || one != es[0] {
		t.Errorf("errors.As(*Error) = %v, want the first error", one)
	}
}

func TestParseJSON(t *testing.T) {
	src := `{
  "jobs": [
    {"name": "a", "command": ["./a", "--n", 3, true], "repeat": 2, "timeout": 30,
     "env": {"X": 1.50}},
    {"name": "b", "shell": "echo hi", "cores": "4", "retries": 0}
  ]
}`
	f, err := Parse("jobs.json", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	a, b := f.Jobs[0], f.Jobs[1]
	if want := []string{"./a", "--n", "3", "true"}; !reflect.DeepEqual(a.Command, want) {
		t.Errorf("command = %q, want %q", a.Command, want)
	}
	if a.Repeat != 2 || a.Timeout != 30*time.Second || a.Env["X"] != "1.50" {
		t.Errorf("a = %+v", a)
	}
	if a.Line != 3 || a.Col != 5 || b.Line != 5 || b.Col != 5 {
		t.Errorf("positions %d:%d and %d:%d, want 3:5 and 5:5", a.Line, a.Col, b.Line, b.Col)
	}
	if b.Shell != "echo hi" || b.Cores != 4 || b.Retries == nil || *b.Retries != 0 {
		t.Errorf("b = %+v", b)
	}

	_, err = Parse("jobs.json", []byte(`{"jobs": [{"name": "a", "command": ["x"], "cores": 0}]}`))
	if got, want := err.Error(), `jobs.json:1:52: cores must be a whole number >= 1, got 0`; got != want {
		t.Errorf("error %q, want %q", got, want)
	}
}

func TestParseDefaults(t *testing.T) {
	f, err := Parse("conf/jobs.yaml", []byte("jobs:\n  - name: a\n    command: [x]\n    env:\n    files:\n    ports:\n"))
	if err != nil {
		t.Fatal(err)
	}
	dir, err := filepath.Abs("conf")
	if err != nil {
		t.Fatal(err)
	}
	if f.Path != "conf/jobs.yaml" || f.Dir != dir {
		t.Errorf("Path %q Dir %q, want conf/jobs.yaml and %q", f.Path, f.Dir, dir)
	}
	want := Job{Name: "a", Command: []string{"x"}, Repeat: 1, Cores: 1, Line: 2, Col: 5}
	if !reflect.DeepEqual(f.Jobs[0], want) {
		t.Errorf("job = %+v\nwant %+v", f.Jobs[0], want)
	}
}

func TestParseNormalizes(t *testing.T) {
	src := `jobs:
  - name: a
    command: [x]
    files: [./sim, data//in.dat, dir/]
    outputs: ["./out/*.csv"]
    workdir: run/../work
    timeout: 1h30m
  - name: b
    command: [x]
    workdir: /scratch//b/
    timeout: "90"
`
	f, err := Parse("/jobs/jobs.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	a, b := f.Jobs[0], f.Jobs[1]
	if want := []string{"sim", "data/in.dat", "dir"}; !reflect.DeepEqual(a.Files, want) {
		t.Errorf("files = %q, want %q", a.Files, want)
	}
	if want := []string{"out/*.csv"}; !reflect.DeepEqual(a.Outputs, want) {
		t.Errorf("outputs = %q, want %q", a.Outputs, want)
	}
	if a.Workdir != "/jobs/work" || b.Workdir != "/scratch/b" {
		t.Errorf("workdirs %q and %q, want /jobs/work and /scratch/b", a.Workdir, b.Workdir)
	}
	if a.Timeout != 90*time.Minute || b.Timeout != 90*time.Second {
		t.Errorf("timeouts %v and %v, want 1h30m and 90s", a.Timeout, b.Timeout)
	}
}

func TestParseAnchorsAndMerge(t *testing.T) {
	src := `jobs:
  - &base
    name: base
    command: &cmd [./sim, "{index}"]
    cores: 2
    env: &env {A: "1", B: "2"}
  - <<: *base
    name: other
    cores: 4
    env:
      <<: *env
      B: "3"
  - name: third
    command: *cmd
    <<: [{cores: 8, repeat: 2}, {cores: 9, retries: 1}]
    repeat: !!int 3
    node: !!str 42
`
	f, err := Parse("jobs.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	base, other, third := f.Jobs[0], f.Jobs[1], f.Jobs[2]
	if other.Cores != 4 || !reflect.DeepEqual(other.Command, base.Command) {
		t.Errorf("other = %+v", other)
	}
	if want := map[string]string{"A": "1", "B": "3"}; !reflect.DeepEqual(other.Env, want) {
		t.Errorf("other env = %v, want %v", other.Env, want)
	}
	if base.Env["B"] != "2" {
		t.Errorf("base env changed: %v", base.Env)
	}
	if third.Cores != 8 || third.Repeat != 3 || third.Retries == nil || *third.Retries != 1 || third.Node != "42" {
		t.Errorf("third = %+v", third)
	}
}

func TestParseAliasBomb(t *testing.T) {
	// 2,000 jobs, each an alias of one with 1,000 arguments: two million
	// values from a file of a few kilobytes.
	var b strings.Builder
	b.WriteString("jobs:\n  - &j {name: j, command: &c [")
	b.WriteString(strings.Repeat("x, ", 999))
	b.WriteString("x]}\n")
	for range 2000 {
		b.WriteString("  - *j\n")
	}
	_, err := Parse("jobs.yaml", []byte(b.String()))
	if err == nil || !strings.Contains(err.Error(), "aliases expand the file to too many values") {
		t.Errorf("error = %.300v, want one about too many values", err)
	}
}

func TestLoad(t *testing.T) {
	f, err := Load("testdata/sample.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Jobs) != 2 || f.Jobs[0].Name != "sim" || f.Jobs[1].Name != "report" {
		t.Errorf("jobs = %+v", f.Jobs)
	}
	dir, _ := filepath.Abs("testdata")
	if f.Dir != dir || f.Jobs[0].Workdir != filepath.Join(dir, "scratch/sim") {
		t.Errorf("Dir %q workdir %q", f.Dir, f.Jobs[0].Workdir)
	}

	_, err = Load("testdata/missing.yaml")
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load of a missing file: %v, want ErrNotExist", err)
	}
}

func TestErrorFormat(t *testing.T) {
	tests := []struct {
		e    Error
		want string
	}{
		{Error{File: "jobs.yaml", Line: 7, Col: 12, Msg: "bad"}, "jobs.yaml:7:12: bad"},
		{Error{File: "jobs.yaml", Msg: "bad"}, "jobs.yaml: bad"},
		{Error{Line: 3, Col: 4, Msg: "bad"}, "3:4: bad"},
		{Error{Msg: "bad"}, "bad"},
	}
	for _, tt := range tests {
		if got := tt.e.Error(); got != tt.want {
			t.Errorf("%+v.Error() = %q, want %q", tt.e, got, tt.want)
		}
	}
	es := Errors{&tests[0].e, &tests[1].e}
	if got, want := es.Error(), "jobs.yaml:7:12: bad\njobs.yaml: bad"; got != want {
		t.Errorf("Errors.Error() = %q, want %q", got, want)
	}
}

func TestSuggest(t *testing.T) {
	for key, want := range map[string]string{
		"comand":  `; did you mean "command"?`,
		"nmae":    `; did you mean "name"?`,
		"timout":  `; did you mean "timeout"?`,
		"output":  `; did you mean "outputs"?`,
		"environ": `; did you mean "env"?`,
		"x":       "",
		"colour":  "",
	} {
		if got := suggest(key, strings.Fields(jobKeys)); got != want {
			t.Errorf("suggest(%q) = %q, want %q", key, got, want)
		}
	}
}

func TestQuote(t *testing.T) {
	if got, want := quote("a\"b"), `"a\"b"`; got != want {
		t.Errorf("quote = %s, want %s", got, want)
	}
	long := strings.Repeat("é", 61)
	if got, want := quote(long), `"`+strings.Repeat("é", 60)+`"...`; got != want {
		t.Errorf("quote(61 runes) = %s, want %s", got, want)
	}
}
