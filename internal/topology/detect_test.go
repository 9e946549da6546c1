package topology

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// writeTree creates a fake filesystem root holding files (path relative to
// the root → content); a path ending in "/" makes an empty directory.
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, content := range files {
		full := filepath.Join(root, name)
		if strings.HasSuffix(name, "/") {
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// tree merges fixtures; later ones win where paths collide.
func tree(fixtures ...map[string]string) map[string]string {
	files := make(map[string]string)
	for _, f := range fixtures {
		maps.Copy(files, f)
	}
	return files
}

const cpuSys = "sys/devices/system/cpu/"

const memTotal16GiB = 16 << 30

// meminfo16GiB is the /proc/meminfo every CPU fixture needs.
func meminfo16GiB() map[string]string {
	return map[string]string{"proc/meminfo": fmt.Sprintf(
		"MemTotal:       %d kB\nMemFree:         1234 kB\nMemAvailable:    5678 kB\n", memTotal16GiB/1024)}
}

// topologyFiles describes cpu as the kernel does, including the SMT siblings.
func topologyFiles(cpu int, siblings string, pkg, core int) map[string]string {
	dir := fmt.Sprintf("%scpu%d/topology/", cpuSys, cpu)
	return map[string]string{
		dir + "thread_siblings_list": siblings + "\n",
		dir + "physical_package_id":  fmt.Sprintf("%d\n", pkg),
		dir + "core_id":              fmt.Sprintf("%d\n", core),
	}
}

// smt2Way8CPUs is one socket of four cores with two threads each, numbered
// the way x86 does it: cpuN and cpuN+4 share a core.
func smt2Way8CPUs() map[string]string {
	files := tree(meminfo16GiB(), map[string]string{cpuSys + "online": "0-7\n"})
	for cpu := range 8 {
		core := cpu % 4
		maps.Copy(files, topologyFiles(cpu, fmt.Sprintf("%d,%d", core, core+4), 0, core))
	}
	return files
}

// twoSocketsRepeatingCoreIDsNoSiblings has core_id 0 and 1 on both sockets,
// two threads per core, and no thread_siblings_list, so cores can only be
// told apart by (physical_package_id, core_id).
func twoSocketsRepeatingCoreIDsNoSiblings() map[string]string {
	files := tree(meminfo16GiB(), map[string]string{cpuSys + "online": "0-7\n"})
	for cpu := range 8 {
		dir := fmt.Sprintf("%scpu%d/topology/", cpuSys, cpu)
		files[dir+"physical_package_id"] = fmt.Sprintf("%d\n", cpu/2%2)
		files[dir+"core_id"] = fmt.Sprintf("%d\n", cpu%2)
	}
	return files
}

// smtWithCPU3And7Offline is smt2Way8CPUs with one whole core (3 and 7)
// offline; offline CPUs keep their directory but lose their topology.
func smtWithCPU3And7Offline() map[string]string {
	files := tree(meminfo16GiB(), map[string]string{
		cpuSys + "online":      "0-2,4-6\n",
		cpuSys + "offline":     "3,7\n",
		cpuSys + "cpu3/online": "0\n",
		cpuSys + "cpu7/online": "0\n",
	})
	for _, cpu := range []int{0, 1, 2, 4, 5, 6} {
		core := cpu % 4
		maps.Copy(files, topologyFiles(cpu, fmt.Sprintf("%d,%d", core, core+4), 0, core))
	}
	return files
}

// noOnlineFileCPU2Offline lacks the online summary, so CPUs come from the
// cpuN directories: cpu0 has no online file (the boot CPU), cpu2 is offline,
// and cpufreq/cpuidle must not be taken for CPUs.
func noOnlineFileCPU2Offline() map[string]string {
	files := tree(meminfo16GiB(), map[string]string{
		cpuSys + "cpu1/online": "1\n",
		cpuSys + "cpu2/online": "0\n",
		cpuSys + "cpu3/online": "1\n",
		cpuSys + "cpufreq/":    "",
		cpuSys + "cpuidle/":    "",
		cpuSys + "kernel_max":  "8191\n",
	})
	for cpu := range 4 {
		if cpu != 2 {
			maps.Copy(files, topologyFiles(cpu, fmt.Sprint(cpu), 0, cpu))
		}
	}
	return files
}

// nonContiguousCPUs0257 numbers CPUs with gaps; 0/5 and 2/7 are SMT pairs.
func nonContiguousCPUs0257() map[string]string {
	return tree(meminfo16GiB(),
		map[string]string{cpuSys + "online": "0,2,5,7\n"},
		topologyFiles(0, "0,5", 0, 0), topologyFiles(5, "0,5", 0, 0),
		topologyFiles(2, "2,7", 0, 1), topologyFiles(7, "2,7", 0, 1))
}

// noTopologyFiles4CPUs has CPU directories without topology/, as some
// virtual machines and architectures do.
func noTopologyFiles4CPUs() map[string]string {
	files := tree(meminfo16GiB(), map[string]string{cpuSys + "online": "0-3\n"})
	for cpu := range 4 {
		files[fmt.Sprintf("%scpu%d/uevent", cpuSys, cpu)] = ""
	}
	return files
}

// cgroupV1Hybrid puts the process at cgPath in the v1 cpuset and memory
// hierarchies, with the empty unified hierarchy of a hybrid host beside them.
func cgroupV1Hybrid(cgPath string) map[string]string {
	return map[string]string{
		"proc/self/cgroup":                           fmt.Sprintf("12:memory:%s\n5:cpuset,cpuacct:%s\n1:name=systemd:/user.slice\n0::/user.slice\n", cgPath, cgPath),
		"sys/fs/cgroup/unified/cgroup.procs":         "",
		"sys/fs/cgroup/cpuset/cpuset.cpus":           "0-7\n",
		"sys/fs/cgroup/cpuset/cpuset.effective_cpus": "0-7\n",
		"sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
	}
}

// cgroupV2 puts the process at cgPath in a pure cgroup v2 hierarchy.
func cgroupV2(cgPath string) map[string]string {
	return map[string]string{
		"proc/self/cgroup":                    "0::" + cgPath + "\n",
		"sys/fs/cgroup/cgroup.controllers":    "cpuset cpu io memory pids\n",
		"sys/fs/cgroup/cpuset.cpus.effective": "0-7\n",
	}
}

func TestDetect(t *testing.T) {
	const v1 = "sys/fs/cgroup/cpuset/"
	const v1mem = "sys/fs/cgroup/memory/"
	const v2 = "sys/fs/cgroup/"
	allCPUs := make([]int, 64)
	for i := range allCPUs {
		allCPUs[i] = i
	}
	tests := []struct {
		name     string
		files    map[string]string
		affinity []int // nil means allCPUs, so that the real affinity never leaks in
		cores    [][]int
		memory   int64  // 0 means memTotal16GiB
		wantErr  string // with ROOT standing for the fake root
	}{
		{
			name:  "smt 2-way pairs cpuN with cpuN+4",
			files: smt2Way8CPUs(),
			cores: [][]int{{0, 4}, {1, 5}, {2, 6}, {3, 7}},
		},
		{
			name:  "two sockets with repeating core_ids group by package too",
			files: twoSocketsRepeatingCoreIDsNoSiblings(),
			cores: [][]int{{0, 4}, {1, 5}, {2, 6}, {3, 7}},
		},
		{
			name:  "offline cpus are skipped",
			files: smtWithCPU3And7Offline(),
			cores: [][]int{{0, 4}, {1, 5}, {2, 6}},
		},
		{
			name:  "without the online file cpuN directories are used",
			files: noOnlineFileCPU2Offline(),
			cores: [][]int{{0}, {1}, {3}},
		},
		{
			name:  "non-contiguous cpu numbers",
			files: nonContiguousCPUs0257(),
			cores: [][]int{{0, 5}, {2, 7}},
		},
		{
			name:  "missing topology files make each cpu its own core",
			files: noTopologyFiles4CPUs(),
			cores: [][]int{{0}, {1}, {2}, {3}},
		},
		{
			name:     "affinity mask narrows cores and drops empty ones",
			files:    smt2Way8CPUs(),
			affinity: []int{0, 1, 4, 9},
			cores:    [][]int{{0, 4}, {1}},
		},
		{
			name:     "cores are reordered by their lowest surviving thread",
			files:    smt2Way8CPUs(),
			affinity: []int{1, 4},
			cores:    [][]int{{1}, {4}},
		},
		{
			name: "v1 cpuset prefers effective_cpus",
			files: tree(smt2Way8CPUs(), cgroupV1Hybrid("/job/step"), map[string]string{
				v1 + "job/step/cpuset.cpus":           "0-7\n",
				v1 + "job/step/cpuset.effective_cpus": "1-2,5\n",
			}),
			cores: [][]int{{1, 5}, {2}},
		},
		{
			name: "v1 cpuset falls back to cpuset.cpus on old kernels",
			files: tree(smt2Way8CPUs(), cgroupV1Hybrid("/job/step"), map[string]string{
				v1 + "job/step/cpuset.cpus": "3,7\n",
			}),
			cores: [][]int{{3, 7}},
		},
		{
			name: "v1 cpuset walks up to the nearest parent that has one",
			files: tree(smt2Way8CPUs(), cgroupV1Hybrid("/job/step/task"), map[string]string{
				v1 + "job/cpuset.effective_cpus":      "0-7\n",
				v1 + "job/step/cpuset.effective_cpus": "4-5\n",
			}),
			cores: [][]int{{4}, {5}},
		},
		{
			name: "v2 cpuset",
			files: tree(smt2Way8CPUs(), cgroupV2("/slurm/job1"), map[string]string{
				v2 + "slurm/job1/cpuset.cpus.effective": "0-1,4-5\n",
			}),
			cores: [][]int{{0, 4}, {1, 5}},
		},
		{
			name: "v2 cpuset walks up past missing and empty files",
			files: tree(smt2Way8CPUs(), cgroupV2("/slurm/job1/step0"), map[string]string{
				v2 + "slurm/job1/step0/memory.max":      "max\n",
				v2 + "slurm/job1/cpuset.cpus.effective": "\n",
				v2 + "slurm/cpuset.cpus.effective":      "2-3,6-7\n",
			}),
			cores: [][]int{{2, 6}, {3, 7}},
		},
		{
			name: "v2 on a hybrid host lives under unified",
			files: tree(smt2Way8CPUs(), map[string]string{
				"proc/self/cgroup":                       "3:cpuset:/\n0::/job\n",
				v1 + "cpuset.effective_cpus":             "0-7\n",
				v2 + "unified/job/cpuset.cpus.effective": "1,5\n",
				v2 + "unified/job/memory.max":            "1048576\n",
			}),
			cores:  [][]int{{1, 5}},
			memory: 1 << 20,
		},
		{
			name: "cpuset and affinity both narrow",
			files: tree(smt2Way8CPUs(), cgroupV2("/job"), map[string]string{
				v2 + "job/cpuset.cpus.effective": "0-3\n",
			}),
			affinity: []int{2, 3, 6, 7},
			cores:    [][]int{{2}, {3}},
		},
		{
			name: "v1 memory limit",
			files: tree(smt2Way8CPUs(), cgroupV1Hybrid("/job"), map[string]string{
				v1mem + "job/memory.limit_in_bytes": "1073741824\n",
			}),
			cores:  [][]int{{0, 4}, {1, 5}, {2, 6}, {3, 7}},
			memory: 1 << 30,
		},
		{
			name: "v1 unlimited memory keeps MemTotal",
			files: tree(smt2Way8CPUs(), cgroupV1Hybrid("/job"), map[string]string{
				v1mem + "job/memory.limit_in_bytes": "9223372036854771712\n",
			}),
			cores: [][]int{{0, 4}, {1, 5}, {2, 6}, {3, 7}},
		},
		{
			name: "v1 memory limit on a parent applies",
			files: tree(smt2Way8CPUs(), cgroupV1Hybrid("/job/step"), map[string]string{
				v1mem + "job/memory.limit_in_bytes":      "2147483648\n",
				v1mem + "job/step/memory.limit_in_bytes": "9223372036854771712\n",
			}),
			cores:  [][]int{{0, 4}, {1, 5}, {2, 6}, {3, 7}},
			memory: 2 << 30,
		},
		{
			name: "v2 memory.max",
			files: tree(smt2Way8CPUs(), cgroupV2("/job/step"), map[string]string{
				v2 + "job/memory.max":      "max\n",
				v2 + "job/step/memory.max": "3221225472\n",
			}),
			cores:  [][]int{{0, 4}, {1, 5}, {2, 6}, {3, 7}},
			memory: 3 << 30,
		},
		{
			name: "v2 memory.max of max keeps MemTotal",
			files: tree(smt2Way8CPUs(), cgroupV2("/job"), map[string]string{
				v2 + "job/memory.max": "max\n",
			}),
			cores: [][]int{{0, 4}, {1, 5}, {2, 6}, {3, 7}},
		},
		{
			name: "v2 tighter parent memory.max wins over the leaf",
			files: tree(smt2Way8CPUs(), cgroupV2("/job/step"), map[string]string{
				v2 + "job/memory.max":      "1073741824\n",
				v2 + "job/step/memory.max": "3221225472\n",
			}),
			cores:  [][]int{{0, 4}, {1, 5}, {2, 6}, {3, 7}},
			memory: 1 << 30,
		},
		{
			name: "memory limit above MemTotal does not raise it",
			files: tree(smt2Way8CPUs(), cgroupV2("/job"), map[string]string{
				v2 + "job/memory.max": "68719476736\n",
			}),
			cores: [][]int{{0, 4}, {1, 5}, {2, 6}, {3, 7}},
		},
		{
			name: "empty result says why",
			files: tree(noTopologyFiles4CPUs(), cgroupV2("/job"), map[string]string{
				v2 + "job/cpuset.cpus.effective": "0-3\n",
			}),
			affinity: []int{8, 9},
			wantErr:  "detect resources: no usable hardware threads (online 0-3, affinity 8-9, cpuset 0-3)",
		},
		{
			name:     "empty result without a cpuset",
			files:    noTopologyFiles4CPUs(),
			affinity: []int{},
			wantErr:  "detect resources: no usable hardware threads (online 0-3, affinity none, cpuset unrestricted)",
		},
		{
			name: "v1 and v2 cpusets that do not overlap",
			files: tree(noTopologyFiles4CPUs(), map[string]string{
				"proc/self/cgroup":             "3:cpuset:/a\n0::/b\n",
				v1 + "a/cpuset.effective_cpus": "0-1\n",
				v2 + "b/cpuset.cpus.effective": "2-3\n",
			}),
			wantErr: "detect resources: no usable hardware threads (online 0-3, affinity 0-63, cpuset none)",
		},
		{
			name:    "missing meminfo",
			files:   map[string]string{cpuSys + "online": "0\n"},
			wantErr: "detect resources: read ROOT/proc/meminfo: no such file or directory",
		},
		{
			name:    "missing cpu directory",
			files:   meminfo16GiB(),
			wantErr: "detect resources: read ROOT/sys/devices/system/cpu: no such file or directory",
		},
		{
			name:    "malformed online file",
			files:   tree(meminfo16GiB(), map[string]string{cpuSys + "online": "0-x\n"}),
			wantErr: `detect resources: read ROOT/sys/devices/system/cpu/online: parse cpu list "0-x\n": invalid cpu id "x"`,
		},
		{
			name:    "malformed cgroup file",
			files:   tree(smt2Way8CPUs(), map[string]string{"proc/self/cgroup": "garbage\n"}),
			wantErr: `detect resources: read ROOT/proc/self/cgroup: malformed line "garbage"`,
		},
		{
			name: "malformed memory limit",
			files: tree(smt2Way8CPUs(), cgroupV2("/job"), map[string]string{
				v2 + "job/memory.max": "lots\n",
			}),
			wantErr: `detect resources: read ROOT/sys/fs/cgroup/job/memory.max: invalid memory limit "lots"`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := writeTree(t, tc.files)
			affinity := tc.affinity
			if affinity == nil {
				affinity = allCPUs
			}
			got, err := Detect(Options{Root: root, Affinity: affinity, Hostname: "node1", Env: noEnv})
			if tc.wantErr != "" {
				want := strings.ReplaceAll(tc.wantErr, "ROOT", root)
				if err == nil || err.Error() != want {
					t.Fatalf("Detect() = %+v, %v; want error %q", got, err, want)
				}
				return
			}
			if err != nil {
				t.Fatalf("Detect(): %v", err)
			}
			memory := tc.memory
			if memory == 0 {
				memory = memTotal16GiB
			}
			want := Resources{Node: "node1", Cores: tc.cores, MemoryBytes: memory, GPUs: []GPU{}}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Detect() = %+v, want %+v", got, want)
			}
		})
	}
}

func TestDetectErrorsWrapCause(t *testing.T) {
	root := writeTree(t, map[string]string{cpuSys + "online": "0\n"})
	_, err := Detect(Options{Root: root, Affinity: []int{0}, Hostname: "node1"})
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Detect() error %v does not wrap fs.ErrNotExist", err)
	}
}

func TestDetectDefaultsHostname(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Skipf("no hostname: %v", err)
	}
	got, err := Detect(Options{Root: writeTree(t, smt2Way8CPUs()), Affinity: []int{0}})
	if err != nil {
		t.Fatal(err)
	}
	if got.Node != host {
		t.Errorf("Node = %q, want %q", got.Node, host)
	}
}

func TestDetectRealMachine(t *testing.T) {
	got, err := Detect(Options{})
	if err != nil {
		t.Fatalf("Detect(Options{}): %v", err)
	}
	t.Logf("%+v", got)
	if len(got.Cores) == 0 {
		t.Fatal("no cores")
	}
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	seen := make(map[int]bool)
	for _, core := range got.Cores {
		if len(core) == 0 {
			t.Errorf("empty core in %v", got.Cores)
		}
	}
	for _, cpu := range got.HWThreads() {
		if !set.IsSet(cpu) {
			t.Errorf("hwthread %d is not in this process's affinity", cpu)
		}
		if seen[cpu] {
			t.Errorf("hwthread %d listed twice", cpu)
		}
		seen[cpu] = true
	}
	if got.MemoryBytes <= 0 {
		t.Errorf("MemoryBytes = %d", got.MemoryBytes)
	}
	if got.Node == "" {
		t.Error("empty Node")
	}
}
