package jobfile

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestValidateDefaults(t *testing.T) {
	j := Job{Name: "adhoc", Command: []string{"hostname"}, Files: []string{"./in/", "a//b"}}
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
	want := Job{Name: "adhoc", Command: []string{"hostname"}, Repeat: 1, Cores: 1, Files: []string{"in", "a/b"}}
	if !reflect.DeepEqual(j, want) {
		t.Errorf("after Validate: %+v\nwant %+v", j, want)
	}
}

func TestValidate(t *testing.T) {
	neg := -1
	tests := []struct {
		name string
		job  Job
		want []string
	}{
		{"valid", Job{Name: "a", Shell: "x", Repeat: 5, Cores: 8, Timeout: time.Minute, Workdir: "/tmp/w", Ports: []string{"p"}, Env: map[string]string{"A": ""}}, nil},
		{"empty", Job{}, []string{`missing "name"`, `missing "command" (or "shell")`}},
		{"both", Job{Name: "a", Command: []string{"x"}, Shell: "y"}, []string{"give either command or shell, not both"}},
		{"empty command", Job{Name: "a", Command: []string{}}, []string{"command must not be empty"}},
		{"bad name", Job{Name: "a/b", Command: []string{"x"}}, []string{`name "a/b" must be letters, digits, "_", "." and "-"`}},
		{"counts", Job{Name: "a", Command: []string{"x"}, Repeat: -1, Cores: 5000, Retries: &neg, Timeout: -time.Second}, []string{
			"repeat must be a whole number >= 1, got -1",
			"cores must be at most 4096, got 5000",
			"retries must be a whole number >= 0, got -1",
			"timeout must not be negative, got -1s",
		}},
		{"env", Job{Name: "a", Command: []string{"x"}, Env: map[string]string{"B=C": "1", "A": "\x00"}}, []string{
			`env A contains a NUL byte`,
			`env name "B=C" must be letters, digits and "_", not starting with a digit`,
		}},
		{"paths", Job{Name: "a", Command: []string{"x"}, Files: []string{"/abs"}, Outputs: []string{"../x"}}, []string{
			`files[0] "/abs" must be relative to the job file's directory`,
			`outputs[0] "../x" must not contain ".."`,
		}},
		{"ports", Job{Name: "a", Command: []string{"x", "{port:q}"}, Ports: []string{"p", "P"}}, []string{
			`command[1] uses {port:q}, but "q" is not listed in ports`,
			`ports[1] "P" repeats port "p": both would be DROVER_PORT_P`,
		}},
		{"relative workdir", Job{Name: "a", Command: []string{"x"}, Workdir: "rel"}, []string{`workdir "rel" must be an absolute path`}},
		{"positioned", Job{Name: "a", Line: 3, Col: 5}, []string{`3:5: missing "command" (or "shell")`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.job.Validate()
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			var es Errors
			if !errors.As(err, &es) {
				t.Fatalf("Validate returned %T %v, want Errors", err, err)
			}
			if got := strings.Split(err.Error(), "\n"); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

// TestParsedJobsValidate: a job Parse accepts passes Validate unchanged.
func TestParsedJobsValidate(t *testing.T) {
	f, err := Load("testdata/sample.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range f.Jobs {
		before := j
		if err := j.Validate(); err != nil {
			t.Errorf("job %s: %v", j.Name, err)
		}
		if !reflect.DeepEqual(before, j) {
			t.Errorf("Validate changed job %s:\n%+v\n%+v", j.Name, before, j)
		}
	}
}
