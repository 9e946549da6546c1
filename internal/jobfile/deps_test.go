package jobfile

import (
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestAfterErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string
	}{
		{"unknown", "jobs:\n  - name: sim\n    command: [x]\n    after: [perp]\n  - name: prep\n    command: [x]\n", []string{
			`jobs.yaml:4:13: after[0] names no job "perp"; did you mean "prep"?`,
		}},
		{"itself", "jobs:\n  - name: a\n    command: [x]\n    after: [a]\n", []string{
			`jobs.yaml:4:13: after[0]: job "a" cannot wait for itself`,
		}},
		{"repeated and empty", "jobs:\n  - name: a\n    command: [x]\n    after: [b, b, '']\n  - name: b\n    command: [x]\n", []string{
			`jobs.yaml:4:16: after[1] repeats "b"`,
			`jobs.yaml:4:19: after[2] must not be empty`,
		}},
		{"not a list", "jobs:\n  - name: a\n    command: [x]\n    after: b\n", []string{
			`jobs.yaml:4:12: after must be a list, got "b"`,
		}},
		{"cycle of two", "jobs:\n  - name: a\n    command: [x]\n    after: [b]\n  - name: b\n    command: [x]\n    after: [a]\n", []string{
			`jobs.yaml:7:13: after[0] closes a cycle of jobs waiting for each other: "a" after "b" after "a"`,
		}},
		{"cycle of three beside a chain", "jobs:\n" +
			"  - {name: a, command: [x], after: [b]}\n" +
			"  - {name: b, command: [x], after: [ok, c]}\n" +
			"  - {name: c, command: [x], after: [a]}\n" +
			"  - {name: ok, command: [x]}\n" +
			"  - {name: d, command: [x], after: [ok, c]}\n", []string{
			`jobs.yaml:4:37: after[0] closes a cycle of jobs waiting for each other: "a" after "b" after "c" after "a"`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := parseErrs(t, tt.src)
			if !slices.Equal(got, tt.want) {
				t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

func TestAfterStages(t *testing.T) {
	f, err := Parse("jobs.yaml", []byte(`jobs:
  - {name: post, command: [x], after: [sim]}
  - {name: sim, command: [x], after: [prep, mesh], max_running: 2}
  - {name: prep, command: [x], repeat: 3}
  - {name: mesh, command: [x], after: [prep]}
  - {name: other, command: [x]}
`))
	if err != nil {
		t.Fatal(err)
	}
	want := [][]string{{"prep", "other"}, {"mesh"}, {"sim"}, {"post"}}
	if got := f.Stages(); !reflect.DeepEqual(got, want) {
		t.Errorf("stages %q, want %q", got, want)
	}
	if j := f.Jobs[1]; !slices.Equal(j.After, []string{"prep", "mesh"}) || j.MaxRunning != 2 {
		t.Errorf("sim: after %q, max_running %d", j.After, j.MaxRunning)
	}
}

func TestCheckAfterInCode(t *testing.T) {
	a := &Job{Name: "a", After: []string{"b"}}
	b := &Job{Name: "b", After: []string{"a"}}
	if err := CheckAfter([]*Job{a, b}); err == nil || !strings.Contains(err.Error(), `"a" after "b" after "a"`) {
		t.Errorf("cycle: %v", err)
	}
	if err := CheckAfter([]*Job{{Name: "a", After: []string{"zz"}}}); err == nil || err.Error() != `after[0] names no job "zz"` {
		t.Errorf("unknown: %v", err)
	}
	if err := CheckAfter([]*Job{{Name: "a"}, {Name: "b", After: []string{"a"}}}); err != nil {
		t.Errorf("valid: %v", err)
	}
}
