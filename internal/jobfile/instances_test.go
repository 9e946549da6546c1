package jobfile

import (
	"os/exec"
	"reflect"
	"strings"
	"testing"
)

func TestInstances(t *testing.T) {
	tests := []struct {
		name string
		job  Job
		want []Instance // Job is filled in by the test
	}{
		{
			name: "single command",
			job:  Job{Name: "sim", Command: []string{"./sim", "--seed", "{index}", "{port:ctl}"}, Repeat: 1},
			want: []Instance{{Name: "sim", Index: 0, Args: []string{"./sim", "--seed", "0", "{port:ctl}"}}},
		},
		{
			name: "repeated command",
			job:  Job{Name: "sim", Command: []string{"./sim", "run-{index}.out", "{index}{index}"}, Repeat: 3},
			want: []Instance{
				{Name: "sim.0", Index: 0, Args: []string{"./sim", "run-0.out", "00"}},
				{Name: "sim.1", Index: 1, Args: []string{"./sim", "run-1.out", "11"}},
				{Name: "sim.2", Index: 2, Args: []string{"./sim", "run-2.out", "22"}},
			},
		},
		{
			name: "shell",
			job:  Job{Name: "sh", Shell: "awk '{print $1}' in-{index} > out-{index}", Repeat: 2},
			want: []Instance{
				{Name: "sh.0", Index: 0, Args: []string{"/bin/sh", "-c", "awk '{print $1}' in-0 > out-0"}},
				{Name: "sh.1", Index: 1, Args: []string{"/bin/sh", "-c", "awk '{print $1}' in-1 > out-1"}},
			},
		},
		{
			name: "command with setup",
			job: Job{Name: "py", Command: []string{"python3", "-c", `print("it's {index}")`, "a b"},
				Setup: []string{". venv/bin/activate", "mkdir -p run{index}"}, Repeat: 2},
			want: []Instance{
				{Name: "py.0", Index: 0, Args: []string{"/bin/sh", "-c",
					"set -e\n. venv/bin/activate\nmkdir -p run0\nexec \"$@\"", "drover-setup",
					"python3", "-c", `print("it's 0")`, "a b"}},
				{Name: "py.1", Index: 1, Args: []string{"/bin/sh", "-c",
					"set -e\n. venv/bin/activate\nmkdir -p run1\nexec \"$@\"", "drover-setup",
					"python3", "-c", `print("it's 1")`, "a b"}},
			},
		},
		{
			name: "shell with setup",
			job:  Job{Name: "sh", Shell: "make -j{index} | tee log", Setup: []string{"cd build"}, Repeat: 1},
			want: []Instance{{Name: "sh", Index: 0, Args: []string{"/bin/sh", "-c",
				"set -e\ncd build\nset +e\nmake -j0 | tee log"}}},
		},
		{
			name: "repeat left zero",
			job:  Job{Name: "z", Command: []string{"true"}},
			want: []Instance{{Name: "z", Index: 0, Args: []string{"true"}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.job.Instances()
			for i := range tt.want {
				tt.want[i].Job = &tt.job
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Instances() =\n%#v\nwant\n%#v", got, tt.want)
			}
		})
	}
}

// TestSetupScripts runs the setup forms through /bin/sh, so that the
// quoting survives a real shell and a failing setup line stops the
// command.
func TestSetupScripts(t *testing.T) {
	tests := []struct {
		name string
		job  Job
		want string // stdout
		fail bool
	}{
		{"command", Job{Name: "c", Command: []string{"printf", "%s|", "a b", "$HOME", "it's"}, Setup: []string{"X=1"}}, "a b|$HOME|it's|", false},
		{"shell", Job{Name: "s", Shell: "echo $X; false; echo after", Setup: []string{"X=set"}}, "set\nafter\n", false},
		{"failing setup", Job{Name: "f", Command: []string{"echo", "ran"}, Setup: []string{"false", "echo setup"}}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.job.Instances()[0].Args
			out, err := runArgs(t, args)
			if (err != nil) != tt.fail || out != tt.want {
				t.Errorf("%q: output %q, error %v; want %q, failure %v", args, out, err, tt.want, tt.fail)
			}
		})
	}
}

func runArgs(t *testing.T, args []string) (string, error) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).Output()
	return string(out), err
}

func TestFileInstances(t *testing.T) {
	f, err := Parse("jobs.yaml", []byte("jobs:\n  - name: a\n    command: [x]\n    repeat: 2\n  - name: b\n    shell: y\n"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, in := range f.Instances() {
		names = append(names, in.Name)
		if !strings.HasPrefix(in.Name, in.Job.Name) {
			t.Errorf("instance %s belongs to job %s", in.Name, in.Job.Name)
		}
	}
	if want := []string{"a.0", "a.1", "b"}; !reflect.DeepEqual(names, want) {
		t.Errorf("instances %q, want %q", names, want)
	}
	if f.Instances()[0].Job != &f.Jobs[0] {
		t.Error("instance does not point at the file's job")
	}
}
