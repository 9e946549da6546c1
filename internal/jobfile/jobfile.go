// Package jobfile reads drover job files and checks them strictly, so that a
// bad file stops `drover run` before anything starts, with every problem
// reported as FILE:LINE:COL: message.
//
// A job file is YAML (JSON is accepted, being YAML): a mapping whose only
// key is "jobs", a non-empty list of job mappings. See Job for the keys.
//
// Choices beyond the contract in SPEC.md:
//   - An empty value (null) for a list or mapping key (env, files, outputs,
//     setup, ports) means an empty list or mapping, so that commenting out
//     every entry under a key is fine. An empty value for any other key
//     (name, command, shell, repeat, cores, retries, timeout, node, workdir)
//     is an error: a blank there is more likely an unfinished edit than a
//     wish for the default, and the default is had by leaving the key out.
//   - Numbers and booleans are accepted where text is wanted and kept as
//     written (3 stays "3", 0x10 stays "0x10"); quoted whole numbers are
//     accepted where numbers are wanted. Port names must not be numbers,
//     because `ports: [8080]` reads like a fixed port while drover always
//     picks free ones.
//   - Anchors, aliases and merge keys (<<) work as in YAML 1.1, so similar
//     jobs can share settings; keys written in a mapping override merged
//     ones. Tags other than the standard !!str, !!int, !!float, !!bool,
//     !!null, !!seq and !!map are refused.
//   - Paths in files and outputs are cleaned ("./sim" becomes "sim").
//   - Names "." and "..", and single-instance names "events.jsonl" and
//     "summary.json", are refused: instance names become directories in the
//     results directory, next to those files.
package jobfile

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Limits on values; the ones on repeat and cores come from the contract,
// the others keep names usable as directory names and retries finite.
const (
	maxRepeat  = 10_000_000
	maxCores   = 4096
	maxRetries = 1_000_000
	maxNameLen = 200
)

// Job is one entry of a job file, or a job built in code (ad-hoc mode).
type Job struct {
	Name    string
	Command []string // argv; exactly one of Command and Shell is set
	Shell   string   // run by /bin/sh -c
	Repeat  int      // number of instances; default 1
	Cores   int      // whole cores per instance; default 1
	Env     map[string]string
	Files   []string // clean paths relative to File.Dir, without ".."
	Outputs []string // clean glob patterns (path.Match) relative to the work dir, without ".."
	Setup   []string // shell lines run before the command, in the same shell
	Ports   []string // names [A-Za-z0-9_]+, unique ignoring case
	// Retries is the number of further attempts after a failure or a lost
	// node; nil when not set, so that a --retries default applies.
	Retries *int
	Timeout time.Duration // then SIGTERM, grace, SIGKILL; 0 = none
	Node    string        // "" = any node
	Workdir string        // "" = a fresh work dir; absolute after Parse
	// After names the jobs every instance of which must succeed before
	// any instance of this job starts.
	After []string
	// MaxRunning bounds the instances of this job running at once; 0 = no
	// bound.
	MaxRunning int
	// Matrix makes one instance per combination of its axes' values,
	// the first axis outermost; Params makes one per row of a CSV table.
	// At most one of them is set; Repeat is then the number of instances
	// they make (Parse and Validate set it).
	Matrix []Axis
	Params *Table
	// GPUs, Memory and Resources are reserved per instance on its node,
	// beside its cores: whole GPUs, bytes of memory (0: none), and
	// counted resources that nodes declare, by name.
	GPUs      int
	Memory    int64
	Resources map[string]int64
	// Line and Col locate the job in its file; 0 when built in code.
	Line, Col int
}

// File is a parsed and checked job file.
type File struct {
	Path string // as given
	Dir  string // absolute directory of the file; relative files and workdir resolve against it
	Jobs []Job
}

// Load reads the job file at path and parses it. A read failure is returned
// as is (it names the path); problems in the content are an Errors.
func Load(path string) (*File, error) {
	data, err := ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// ReadFile reads a job file for Parse, but no more than a byte past
// MaxFileBytes, which is enough for Parse to refuse it: a huge file (or a
// device) is never read whole.
func ReadFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return data, nil
}

// Parse parses and checks the job file content data; path names it in
// errors and gives File.Dir. When anything is wrong it returns a nil File
// and an Errors with every problem found, in file order.
func Parse(path string, data []byte) (*File, error) {
	dir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("jobfile: directory of %s: %w", path, err)
	}
	r := &reporter{file: path}
	if len(data) > MaxFileBytes {
		r.at(pos{1, 1}, "the job file is larger than %s; drover reads at most %s", SizeString(MaxFileBytes), SizeString(MaxFileBytes))
		return nil, r.err()
	}
	if at, msg := prescan(data); msg != "" {
		r.at(at, "%s", msg)
		return nil, r.err()
	}
	jobs := parse(r, data, dir)
	if err := r.err(); err != nil {
		return nil, err
	}
	return &File{Path: path, Dir: dir, Jobs: jobs}, nil
}

// Validate runs the checks Parse applies to each job on a job built in code,
// and applies the same defaults (Repeat and Cores 0 become 1) and cleaning of
// paths. Unlike in a file, Repeat and Cores may be left 0 for the default,
// and Workdir must already be absolute. Checks across jobs (unique names)
// are Parse's alone. The error, if any, is an Errors positioned at j.Line
// and j.Col, so without a position for jobs built in code.
func (j *Job) Validate() error {
	r := &reporter{}
	j.check(r, &locs{job: pos{j.Line, j.Col}})
	return r.err()
}

// Instance is one process to run for a job.
type Instance struct {
	Job   *Job
	Name  string // "sim.3", or "sim" when Repeat is 1
	Index int
	// Params are the instance's sweep parameters, in the job's order.
	Params []Param
	// Args is the argv to start, with the placeholders ({index}, the
	// parameters, {{ and }}) replaced in the command, the shell text and
	// the setup lines; "{port:NAME}" is left for the node agent, which
	// reserves the ports.
	Args []string
}

// Instances lists the instances of j in index order. j should be valid; a
// Repeat below 1 counts as 1.
//
// Setup lines run under "set -e" so that a failing setup step (say, a venv
// that is missing) fails the instance instead of running the command in the
// wrong environment. For a Command job the setup script ends in
// `exec "$@"` with the argv passed as positional parameters, so the argv is
// never re-quoted; for a Shell job "set +e" restores the shell's usual
// behaviour before the shell text.
func (j *Job) Instances() []Instance {
	out := make([]Instance, max(j.Repeat, 1))
	for i := range out {
		out[i] = j.Instance(i)
	}
	return out
}

// Instance makes instance i of j on demand, so a queue of millions holds
// no argv it has not started yet.
func (j *Job) Instance(i int) Instance {
	return j.instance(i, j.ParamsOf(i))
}

// instance makes instance i of j with the parameters params.
func (j *Job) instance(i int, params []Param) Instance {
	name := j.InstanceName(i)
	index := strconv.Itoa(i)
	expand := func(s string) string {
		return expandText(s, func(key string) (string, bool) {
			if key == "index" {
				return index, true
			}
			for _, p := range params {
				if p.Name == key {
					return p.Value, true
				}
			}
			return "", false
		})
	}

	var setup string
	if len(j.Setup) > 0 {
		lines := make([]string, len(j.Setup))
		for k, l := range j.Setup {
			lines[k] = expand(l)
		}
		setup = "set -e\n" + strings.Join(lines, "\n") + "\n"
	}

	var args []string
	if j.Command == nil {
		script := expand(j.Shell)
		if setup != "" {
			script = setup + "set +e\n" + script
		}
		args = []string{"/bin/sh", "-c", script}
	} else {
		if setup != "" {
			args = append(args, "/bin/sh", "-c", setup+`exec "$@"`, "drover-setup")
		}
		for _, a := range j.Command {
			args = append(args, expand(a))
		}
	}
	return Instance{Job: j, Name: name, Index: i, Params: params, Args: args}
}

// InstanceName is the name of instance i: "sim.3", or "sim" when the job
// has one instance.
func (j *Job) InstanceName(i int) string {
	if j.Repeat > 1 {
		return j.Name + "." + strconv.Itoa(i)
	}
	return j.Name
}

// Instances lists the instances of all jobs, in file order.
func (f *File) Instances() []Instance {
	var out []Instance
	for i := range f.Jobs {
		out = append(out, f.Jobs[i].Instances()...)
	}
	return out
}
