package cli_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// No GPU is on the test machines: the agents are handed GPUs the way an
// allocation hands them, through CUDA_VISIBLE_DEVICES and the like in
// their environment, or by drover agent --gpus. The processes are real.

// gpuEnv is the test environment with the GPU variables set to vars and
// the others unset, so that a machine's own settings do not leak in.
func gpuEnv(vars ...string) []string {
	env := slices.DeleteFunc(testEnv(), func(kv string) bool {
		for _, k := range []string{"CUDA_VISIBLE_DEVICES=", "ROCR_VISIBLE_DEVICES=", "HIP_VISIBLE_DEVICES="} {
			if strings.HasPrefix(kv, k) {
				return true
			}
		}
		return false
	})
	return append(env, vars...)
}

type gpuDoc struct {
	Vendor string `json:"vendor"`
	ID     string `json:"id"`
}

func TestResourcesGPUsFromEnvironment(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		env  []string
		want []gpuDoc
	}{
		{[]string{"CUDA_VISIBLE_DEVICES=0,1"}, []gpuDoc{{"nvidia", "0"}, {"nvidia", "1"}}},
		{[]string{"CUDA_VISIBLE_DEVICES=", "ROCR_VISIBLE_DEVICES=3"}, []gpuDoc{{"amd", "3"}}},
		{[]string{"CUDA_VISIBLE_DEVICES=", "HIP_VISIBLE_DEVICES=1"}, []gpuDoc{{"amd", "1"}}},
		{[]string{"CUDA_VISIBLE_DEVICES=", "ROCR_VISIBLE_DEVICES="}, []gpuDoc{}},
	} {
		r := droverIn(t, t.TempDir(), gpuEnv(tc.env...), droverBin, "resources", "--json")
		wantCode(t, r, 0)
		var res struct {
			GPUs []gpuDoc `json:"gpus"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
			t.Fatalf("%v\n%s", err, r.stdout)
		}
		if res.GPUs == nil || !slices.Equal(res.GPUs, tc.want) {
			t.Errorf("with %q: gpus %+v, want %+v\n%s", tc.env, res.GPUs, tc.want, r.stdout)
		}
	}
}

// TestRunGPUJobs: drover run's agent is given GPUs 0 and 1; two instances
// of one GPU each run on distinct GPUs, each seeing only its own.
func TestRunGPUJobs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	jobs := writeFile(t, dir, "jobs.yaml", `
jobs:
  - name: g
    repeat: 2
    gpus: 1
    shell: echo "$CUDA_VISIBLE_DEVICES $DROVER_GPUS"
`)
	r := droverIn(t, dir, gpuEnv("CUDA_VISIBLE_DEVICES=0,1"), droverBin, "run", "--progress", "none", "--out", out, jobs)
	wantCode(t, r, 0)
	var seen []string
	for _, inst := range []string{"g.0", "g.1"} {
		f := strings.Fields(readFile(t, filepath.Join(out, inst, "stdout")))
		if len(f) != 2 || f[0] != f[1] || (f[0] != "0" && f[0] != "1") {
			t.Errorf("%s saw CUDA_VISIBLE_DEVICES and DROVER_GPUS %q, want one of GPUs 0 and 1", inst, f)
			continue
		}
		seen = append(seen, f[0])
	}
	if len(seen) == 2 && seen[0] == seen[1] {
		t.Errorf("both instances were given GPU %s", seen[0])
	}
}

// TestRunResourceFlag: --resource declares a counted resource of the
// node; two instances that each need the one license both run.
func TestRunResourceFlag(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	jobs := writeFile(t, dir, "jobs.yaml", `
jobs:
  - name: lic
    repeat: 2
    memory: 1M
    resources: {license: 1}
    command: ["true"]
`)
	r := drover(t, dir, "run", "--progress", "none", "--resource", "license=1", "--out", out, jobs)
	wantCode(t, r, 0)
	if s := readSummary(t, out); s.Succeeded != 2 {
		t.Errorf("summary %+v", s)
	}
}

// Jobs that ask more than any node has never start: exit 2 naming the job
// and what the largest node has.
func TestRunRefusesWhatNoNodeHas(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, job string
		flags     []string
		want      string
	}{
		{"gpus", "gpus: 3", nil, "job big needs 3 GPUs; the largest node has 2"},
		{"memory", "memory: 1000T", nil, "job big needs 1000T of memory; the largest node has "},
		{"no such resource", "resources: {fpga: 1}", nil, "job big needs 1 of resource fpga; no node has any"},
		{"too much of a resource", "resources: {license: 3}", []string{"--resource", "license=2"}, "job big needs 3 of resource license; the most a node has is 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			out := filepath.Join(dir, "out")
			marker := filepath.Join(dir, "ran")
			jobs := writeFile(t, dir, "jobs.yaml", "jobs:\n  - name: small\n    command: [touch, "+marker+"]\n  - name: big\n    "+tc.job+"\n    command: [touch, "+marker+"]\n")
			args := append([]string{"run", "--progress", "none", "--out", out}, tc.flags...)
			r := droverIn(t, dir, gpuEnv("CUDA_VISIBLE_DEVICES=0,1"), droverBin, append(args, jobs)...)
			wantCode(t, r, 2)
			if !strings.Contains(r.stderr, tc.want) {
				t.Errorf("stderr does not say %q:\n%s", tc.want, r)
			}
			if _, err := os.Stat(marker); err == nil {
				t.Error("an instance ran")
			}
		})
	}
}

func TestRunBadResourceValues(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ value, want string }{
		{"gpus: -1", "jobs.yaml:4:11: gpus must be a whole number >= 0, got -1"},
		{"memory: lots", `jobs.yaml:4:13: memory must be an amount such as 4G, 512M or 1073741824 (bytes), got "lots"`},
		{"resources: {license: x}", `jobs.yaml:4:26: resources license must be a whole number >= 0, got "x"`},
	} {
		dir := t.TempDir()
		writeFile(t, dir, "jobs.yaml", "jobs:\n  - name: a\n    command: [\"true\"]\n    "+tc.value+"\n")
		for _, verb := range []string{"run", "check"} {
			r := drover(t, dir, verb, "jobs.yaml")
			wantCode(t, r, 2)
			if !strings.Contains(r.stderr, tc.want) {
				t.Errorf("%s with %q: stderr does not say %q:\n%s", verb, tc.value, tc.want, r)
			}
		}
	}
	for _, bad := range [][]string{{"--resource", "license"}, {"--resource", "2x=1"}, {"--resource", "a=1,a=2"}} {
		r := drover(t, t.TempDir(), append([]string{"run"}, append(bad, "--", "true")...)...)
		wantCode(t, r, 2)
	}
}

// TestServeStartGPUs: drover start --gpus through the Control API; the
// node's GPUs are used up, then refused, and drover nodes shows the use.
func TestServeStartGPUs(t *testing.T) {
	t.Parallel()
	home := filepath.Join(t.TempDir(), "home")
	work := t.TempDir()
	srv := startServeEnv(t, home, gpuEnv("CUDA_VISIBLE_DEVICES=4,5"))
	var nodes []struct {
		Name      string `json:"name"`
		Resources struct {
			GPUs []gpuDoc `json:"gpus"`
		} `json:"resources"`
		BusyGPUs []string `json:"busy_gpus"`
	}
	r := droverHome(t, home, work, "nodes", "--json")
	wantCode(t, r, 0)
	if err := json.Unmarshal([]byte(r.stdout), &nodes); err != nil || len(nodes) != 1 {
		t.Fatalf("nodes --json: %v\n%s", err, r.stdout)
	}
	if want := []gpuDoc{{"nvidia", "4"}, {"nvidia", "5"}}; !slices.Equal(nodes[0].Resources.GPUs, want) || len(nodes[0].BusyGPUs) != 0 {
		t.Fatalf("nodes --json: GPUs %+v busy %v, want %+v and none busy", nodes[0].Resources.GPUs, nodes[0].BusyGPUs, want)
	}
	node := nodes[0].Name
	var got []string
	for _, name := range []string{"a", "b"} {
		outFile := filepath.Join(work, name+".out")
		var st struct {
			GPUs []string `json:"gpus"`
		}
		r := droverHome(t, home, work, "start", "--json", "--node", node, "--name", name, "--gpus", "1", "--stdout", outFile,
			"--", "sh", "-c", `echo "$CUDA_VISIBLE_DEVICES $DROVER_GPUS"; exec sleep 300`)
		wantCode(t, r, 0)
		if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || len(st.GPUs) != 1 {
			t.Fatalf("start --json: %v\n%s", err, r.stdout)
		}
		eventually(t, func() string {
			if f := strings.Fields(readFileOr(outFile)); len(f) != 2 || f[0] != st.GPUs[0] || f[1] != st.GPUs[0] {
				return "process " + name + " printed " + readFileOr(outFile) + ", want its GPU " + st.GPUs[0] + " twice"
			}
			return ""
		})
		got = append(got, st.GPUs[0])
	}
	if slices.Sort(got); !slices.Equal(got, []string{"4", "5"}) {
		t.Errorf("the two starts got GPUs %v, want 4 and 5", got)
	}
	r = droverHome(t, home, work, "start", "--node", node, "--name", "c", "--gpus", "1", "--", "true")
	if r.code == 0 || !strings.Contains(r.stderr, "GPUs") {
		t.Errorf("a third GPU start was not refused:\n%s", r)
	}
	r = droverHome(t, home, work, "start", "--node", node, "--name", "d", "--gpus", "3", "--", "true")
	if r.code != 2 || !strings.Contains(r.stderr, "needs 3 GPUs, the node has 2") {
		t.Errorf("3 GPUs of 2: want exit 2 naming the node's 2:\n%s", r)
	}
	r = droverHome(t, home, work, "nodes")
	wantCode(t, r, 0)
	if !strings.Contains(r.stdout, " 2/2 ") {
		t.Errorf("drover nodes does not show 2/2 GPUs in use:\n%s", r.stdout)
	}
	// /metrics and the dashboard's state show the same.
	d := srv.dash()
	eventually(t, func() string {
		m := metricValues(t, d)
		if m["drover_node_gpus{node="+node+"}"] != 2 || m["drover_node_busy_gpus{node="+node+"}"] != 2 {
			return fmt.Sprintf("/metrics: drover_node_gpus %v, drover_node_busy_gpus %v, want 2 and 2",
				m["drover_node_gpus{node="+node+"}"], m["drover_node_busy_gpus{node="+node+"}"])
		}
		resp := d.get(t, "/api/state")
		defer resp.Body.Close()
		var st struct {
			Nodes []struct {
				GPUs     int `json:"gpus"`
				BusyGPUs int `json:"busy_gpus"`
			} `json:"nodes"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || len(st.Nodes) != 1 || st.Nodes[0].GPUs != 2 || st.Nodes[0].BusyGPUs != 2 {
			return fmt.Sprintf("/api/state nodes: %+v, %v", st.Nodes, err)
		}
		return ""
	})
	wantCode(t, droverHome(t, home, work, "kill", "a"), 0)
	eventually(t, func() string {
		r := droverHome(t, home, work, "nodes")
		if !strings.Contains(r.stdout, " 1/2 ") {
			return "after a kill, drover nodes shows:\n" + r.stdout
		}
		return ""
	})
}

func readFileOr(path string) string {
	data, _ := os.ReadFile(path)
	return string(data)
}

// TestRunOutOfMemory: an instance that allocates past its memory: is
// killed by the kernel in the cgroup its agent made for it, and ends
// failed with the reason "out of memory", not a bare SIGKILL.
func TestRunOutOfMemory(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	// The shell keeps 256 MiB of output in a variable.
	jobs := writeFile(t, dir, "jobs.yaml", `
jobs:
  - name: hog
    memory: 32M
    shell: x=$(head -c 268435456 /dev/zero | tr '\0' a); echo survived
  - name: small
    memory: 256M
    shell: x=$(head -c 1048576 /dev/zero | tr '\0' a); echo fine
`)
	r := drover(t, dir, "--log-level", "debug", "run", "--progress", "plain", "--out", out, jobs)
	if strings.Contains(r.stderr, "memory limits of processes are not enforced") {
		t.Skipf("no memory cgroups can be made here (the agent says so):\n%s", r.stderr)
	}
	wantCode(t, r, 1)
	s := readSummary(t, out)
	if s.Succeeded != 1 || s.Failed != 1 {
		t.Fatalf("summary %+v", s)
	}
	if hog := s.instance(t, "hog"); hog.State != "failed" || !strings.HasPrefix(hog.Error, "out of memory") {
		t.Errorf("hog: %+v, want failed with \"out of memory\"", hog)
	}
	if got := readFile(t, filepath.Join(out, "small", "stdout")); got != "fine\n" {
		t.Errorf("small printed %q", got)
	}
}

// TestJoinedAgentGPUsAndResources: drover agent --gpus and --resource set
// what a joined node offers; processes there get distinct GPUs, jobs that
// need the node's resource go there, and a submission asking for what no
// node has is refused before anything starts.
func TestJoinedAgentGPUsAndResources(t *testing.T) {
	t.Parallel()
	home := filepath.Join(t.TempDir(), "serve")
	work := t.TempDir()
	startServeEnv(t, home, gpuEnv("CUDA_VISIBLE_DEVICES="))
	tok := newJoinToken(t, home)
	a := startJoin(t, filepath.Join(t.TempDir(), "node"), strings.NewReader(tok.Token+"\n"), tok.Address,
		"--name", "gpu1", "--shared-fs", "--gpus", "0,1", "--resource", "license=1", "--resource", "fpga=2")
	waitNodeState(t, home, "gpu1", "up", a)

	r := droverHome(t, home, work, "nodes", "--json")
	wantCode(t, r, 0)
	var nodes []struct {
		Name      string `json:"name"`
		Resources struct {
			GPUs   []gpuDoc         `json:"gpus"`
			Custom map[string]int64 `json:"custom"`
		} `json:"resources"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &nodes); err != nil {
		t.Fatalf("nodes --json: %v\n%s", err, r.stdout)
	}
	for _, n := range nodes {
		if n.Name != "gpu1" {
			continue
		}
		if want := []gpuDoc{{"nvidia", "0"}, {"nvidia", "1"}}; !slices.Equal(n.Resources.GPUs, want) ||
			n.Resources.Custom["license"] != 1 || n.Resources.Custom["fpga"] != 2 {
			t.Errorf("gpu1 offers %+v, want GPUs 0,1, license 1, fpga 2", n.Resources)
		}
	}

	var got []string
	for _, name := range []string{"g0", "g1"} {
		outFile := filepath.Join(work, name+".out")
		r := droverHome(t, home, work, "start", "--node", "gpu1", "--name", name, "--gpus", "1", "--stdout", outFile,
			"--", "sh", "-c", `echo "$CUDA_VISIBLE_DEVICES"; exec sleep 300`)
		wantCode(t, r, 0)
		eventually(t, func() string {
			if strings.TrimSpace(readFileOr(outFile)) == "" {
				return name + " printed nothing yet"
			}
			return ""
		})
		got = append(got, strings.TrimSpace(readFileOr(outFile)))
	}
	if slices.Sort(got); !slices.Equal(got, []string{"0", "1"}) {
		t.Errorf("the processes on gpu1 saw CUDA_VISIBLE_DEVICES %q, want 0 and 1", got)
	}

	// Only gpu1 has the license: the job's instance runs there.
	writeFile(t, work, "lic.yaml", "jobs:\n  - name: lic\n    resources: {license: 1}\n    command: [\"true\"]\n")
	wantCode(t, droverHome(t, home, work, "submit", "lic.yaml"), 0)
	eventually(t, func() string {
		r := droverHome(t, home, work, "jobs", "--json")
		var jobs []struct {
			State string `json:"state"`
			Node  string `json:"node"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &jobs); err != nil || len(jobs) != 1 || jobs[0].State != "succeeded" || jobs[0].Node != "gpu1" {
			return "jobs: " + r.stdout
		}
		return ""
	})
	writeFile(t, work, "big.yaml", "jobs:\n  - name: big\n    resources: {license: 2}\n    command: [\"true\"]\n")
	r = droverHome(t, home, work, "submit", "big.yaml")
	if r.code != 2 || !strings.Contains(r.stderr, "job big needs 2 of resource license; the most a node has is 1") {
		t.Errorf("submit of a job no node can hold: want exit 2 naming the license\n%s", r)
	}
}
