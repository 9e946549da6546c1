package topology

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Options tells Detect where to look; the zero value inspects this process
// on this machine.
type Options struct {
	Root     string // filesystem root under which /sys and /proc are read; "" means "/". Tests point it at a fake tree.
	Affinity []int  // the process's allowed CPUs; nil means read this process's affinity with sched_getaffinity
	Hostname string // "" means os.Hostname()
	// IgnoreAffinity leaves the affinity mask out: the usable threads are
	// the online ones in the cgroup cpuset. An agent whose launcher gave
	// it a narrower mask than its allocation (srun binding one task to one
	// core) uses this to see the whole allocation; it can bind its
	// children anywhere in its cpuset.
	IgnoreAffinity bool
	// Env looks up the process's environment, where an allocation names
	// the GPUs it gives (CUDA_VISIBLE_DEVICES and the like); nil is
	// os.LookupEnv.
	Env func(string) (string, bool)
	// GPUs, when not nil, are the node's GPUs whatever the hardware and
	// the environment say (drover agent --gpus): ids or UUIDs, matched
	// against the hardware for what else is known, optionally prefixed by
	// the vendor ("amd:1"). Empty means none.
	GPUs []string
	// NvidiaSMI is the nvidia-smi to ask for GPU UUIDs and models; ""
	// looks for one in PATH when Root is "" (this machine), and asks none
	// for a fake tree.
	NvidiaSMI string
}

// Detect reports the hardware threads this process may run on, grouped by
// physical core, and the memory it may use. A thread is usable when it is
// online, in the affinity mask and in the cgroup cpuset; a core is listed
// with its usable threads only, and not at all when it has none. Memory is
// MemTotal, lowered to the cgroup memory limit when there is one. GPUs are
// those the hardware shows, narrowed (or, without visible hardware,
// defined) by CUDA_VISIBLE_DEVICES, ROCR_VISIBLE_DEVICES or
// HIP_VISIBLE_DEVICES, else SLURM_STEP_GPUS or SLURM_JOB_GPUS; Options.GPUs
// wins over all of them.
func Detect(opts Options) (Resources, error) {
	res, err := detect(opts)
	if err != nil {
		return Resources{}, fmt.Errorf("detect resources: %w", err)
	}
	return res, nil
}

func detect(opts Options) (Resources, error) {
	root := opts.Root
	if root == "" {
		root = "/"
	}
	online, err := onlineCPUs(root)
	if err != nil {
		return Resources{}, err
	}
	cores, err := physicalCores(root, online)
	if err != nil {
		return Resources{}, err
	}
	affinity := opts.Affinity
	if opts.IgnoreAffinity {
		affinity = online
	}
	if affinity == nil {
		if affinity, err = processAffinity(); err != nil {
			return Resources{}, err
		}
	}
	cgroups, err := readCgroupPaths(root)
	if err != nil {
		return Resources{}, err
	}
	cpuset, restricted, err := cgroupCPUs(root, cgroups)
	if err != nil {
		return Resources{}, err
	}

	usable := setOf(affinity)
	if restricted {
		inCpuset := setOf(cpuset)
		for cpu := range usable {
			if !inCpuset[cpu] {
				delete(usable, cpu)
			}
		}
	}
	var kept [][]int
	for _, core := range cores {
		var threads []int
		for _, cpu := range core {
			if usable[cpu] {
				threads = append(threads, cpu)
			}
		}
		if len(threads) > 0 {
			kept = append(kept, threads)
		}
	}
	if len(kept) == 0 {
		cpusetText := "unrestricted"
		if restricted {
			cpusetText = listOrNone(cpuset)
		}
		return Resources{}, fmt.Errorf("no usable hardware threads (online %s, affinity %s, cpuset %s)",
			listOrNone(online), listOrNone(affinity), cpusetText)
	}
	// Dropping threads can change which core has the lowest thread, so the
	// order is settled only now.
	slices.SortFunc(kept, func(a, b []int) int { return a[0] - b[0] })

	memory, err := memoryBytes(root, cgroups)
	if err != nil {
		return Resources{}, err
	}
	node := opts.Hostname
	if node == "" {
		if node, err = os.Hostname(); err != nil {
			return Resources{}, fmt.Errorf("hostname: %w", err)
		}
	}
	numa, err := coreNUMA(root, kept)
	if err != nil {
		return Resources{}, err
	}
	gpus, err := detectGPUs(opts, root)
	if err != nil {
		return Resources{}, err
	}
	if gpus == nil {
		gpus = []GPU{}
	}
	return Resources{Node: node, Cores: kept, MemoryBytes: memory, GPUs: gpus, NUMA: numa}, nil
}

func cpuDir(root string) string { return filepath.Join(root, "sys/devices/system/cpu") }

// onlineCPUs lists the online CPUs in ascending order.
func onlineCPUs(root string) ([]int, error) {
	online, err := readCPUList(filepath.Join(cpuDir(root), "online"))
	if !errors.Is(err, fs.ErrNotExist) {
		return online, err
	}

	// Without the summary file, each cpuN directory is a CPU, offline when
	// its own online file says 0. The boot CPU usually cannot be taken
	// offline and so often has no online file at all.
	entries, err := os.ReadDir(cpuDir(root))
	if err != nil {
		return nil, fileError("read", cpuDir(root), err)
	}
	online = nil
	for _, e := range entries {
		digits, ok := strings.CutPrefix(e.Name(), "cpu")
		if !ok || !e.IsDir() {
			continue
		}
		cpu, err := parseCPUID(digits)
		if err != nil {
			continue // cpufreq, cpuidle and the like
		}
		state, err := readFile(filepath.Join(cpuDir(root), e.Name(), "online"))
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return nil, err
		case strings.TrimSpace(state) == "0":
			continue
		}
		online = append(online, cpu)
	}
	if len(online) == 0 {
		return nil, fmt.Errorf("read %s: no cpuN directories", cpuDir(root))
	}
	slices.Sort(online)
	return online, nil
}

// physicalCores groups cpus, which must be ascending, into physical cores.
// The cores come out ordered by their lowest thread.
func physicalCores(root string, cpus []int) ([][]int, error) {
	index := make(map[string]int)
	var cores [][]int
	for _, cpu := range cpus {
		key, err := coreKey(root, cpu)
		if err != nil {
			return nil, err
		}
		i, seen := index[key]
		if !seen {
			i = len(cores)
			index[key] = i
			cores = append(cores, nil)
		}
		cores[i] = append(cores[i], cpu)
	}
	return cores, nil
}

// coreKey returns a string shared by exactly the hwthreads of cpu's core,
// from the best topology information the kernel offers for it.
func coreKey(root string, cpu int) (string, error) {
	topo := filepath.Join(cpuDir(root), "cpu"+strconv.Itoa(cpu), "topology")
	siblings, err := readCPUList(filepath.Join(topo, "thread_siblings_list"))
	if err == nil {
		return "siblings " + FormatCPUList(append(siblings, cpu)), nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}

	// core_id repeats across sockets, so it only names a core together with
	// the package.
	pkg, pkgErr := readFile(filepath.Join(topo, "physical_package_id"))
	core, coreErr := readFile(filepath.Join(topo, "core_id"))
	if pkgErr == nil && coreErr == nil {
		return "package " + strings.TrimSpace(pkg) + " core " + strings.TrimSpace(core), nil
	}
	for _, err := range []error{pkgErr, coreErr} {
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
	}
	return "cpu " + strconv.Itoa(cpu), nil
}

// processAffinity reads the calling thread's affinity mask, which is the
// process's unless someone pinned individual threads.
func processAffinity() ([]int, error) {
	// The syscall fails with EINVAL when the mask is smaller than the
	// kernel's, so start at the usual 1024 CPUs and grow on big machines.
	for size := 1024; ; size *= 2 {
		set := unix.NewCPUSet(size)
		err := unix.SchedGetaffinityDynamic(0, set)
		if errors.Is(err, unix.EINVAL) && size < maxCPUID {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("sched_getaffinity: %w", err)
		}
		var cpus []int
		for cpu, left := 0, set.Count(); left > 0; cpu++ {
			if set.IsSet(cpu) {
				cpus = append(cpus, cpu)
				left--
			}
		}
		return cpus, nil
	}
}

// cgroupPaths is where this process sits in the cgroup hierarchies that
// limit CPUs or memory; "" means it is in no such hierarchy.
type cgroupPaths struct {
	unified string // cgroup v2
	cpuset  string // v1 cpuset controller
	memory  string // v1 memory controller
}

func readCgroupPaths(root string) (cgroupPaths, error) {
	var paths cgroupPaths
	file := filepath.Join(root, "proc/self/cgroup")
	text, err := readFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return paths, nil
	}
	if err != nil {
		return paths, err
	}
	// Each line is "hierarchy-id:controllers:path"; v2 is "0::path".
	for line := range strings.Lines(text) {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		id, rest, ok1 := strings.Cut(line, ":")
		controllers, cgPath, ok2 := strings.Cut(rest, ":")
		if !ok1 || !ok2 {
			return paths, fmt.Errorf("read %s: malformed line %q", file, line)
		}
		// Cleaning as an absolute path keeps ".." from leading out of the
		// cgroup mount.
		cgPath = path.Clean("/" + cgPath)
		if id == "0" && controllers == "" {
			paths.unified = cgPath
			continue
		}
		for c := range strings.SplitSeq(controllers, ",") {
			switch c {
			case "cpuset":
				paths.cpuset = cgPath
			case "memory":
				paths.memory = cgPath
			}
		}
	}
	return paths, nil
}

func v1Mount(root, controller string) string {
	return filepath.Join(root, "sys/fs/cgroup", controller)
}

// unifiedMount finds the cgroup v2 hierarchy: /sys/fs/cgroup itself, or on
// a hybrid host, where /sys/fs/cgroup is a tmpfs holding the v1
// hierarchies, its unified/ subdirectory.
func unifiedMount(root string) string {
	base := filepath.Join(root, "sys/fs/cgroup")
	if _, err := os.Stat(filepath.Join(base, "cgroup.controllers")); err == nil {
		return base
	}
	hybrid := filepath.Join(base, "unified")
	if fi, err := os.Stat(hybrid); err == nil && fi.IsDir() {
		return hybrid
	}
	return base
}

// cgroupCPUs returns the CPUs the process's cpusets allow; restricted is
// false when no cpuset applies.
func cgroupCPUs(root string, cg cgroupPaths) (cpus []int, restricted bool, err error) {
	var found [][]int
	if cg.cpuset != "" {
		// effective_cpus accounts for the ancestors' limits but only
		// exists on newer kernels; cpuset.cpus is the fallback.
		list, ok, err := nearestCPUList(v1Mount(root, "cpuset"), cg.cpuset, "cpuset.effective_cpus", "cpuset.cpus")
		if err != nil {
			return nil, false, err
		}
		if ok {
			found = append(found, list)
		}
	}
	if cg.unified != "" {
		list, ok, err := nearestCPUList(unifiedMount(root), cg.unified, "cpuset.cpus.effective")
		if err != nil {
			return nil, false, err
		}
		if ok {
			found = append(found, list)
		}
	}
	if len(found) == 0 {
		return nil, false, nil
	}
	cpus = found[0]
	for _, other := range found[1:] {
		inOther := setOf(other)
		cpus = slices.DeleteFunc(cpus, func(cpu int) bool { return !inOther[cpu] })
	}
	return cpus, true, nil
}

// nearestCPUList reads the first non-empty file among names in cgPath or,
// failing that, its closest ancestor that has one. A cgroup without the
// files (cpuset not enabled there, or a container that sees only part of
// the tree) runs on its parent's CPUs.
func nearestCPUList(mount, cgPath string, names ...string) ([]int, bool, error) {
	for dir := cgPath; ; dir = path.Dir(dir) {
		for _, name := range names {
			list, err := readCPUList(filepath.Join(mount, dir, name))
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return nil, false, err
			}
			if len(list) > 0 {
				return list, true, nil
			}
		}
		if dir == "/" {
			return nil, false, nil
		}
	}
}

// memoryBytes is MemTotal lowered to the tightest cgroup memory limit.
func memoryBytes(root string, cg cgroupPaths) (int64, error) {
	memory, err := memTotal(root)
	if err != nil {
		return 0, err
	}
	type limitFile struct{ mount, cgPath, name string }
	var files []limitFile
	if cg.memory != "" {
		files = append(files, limitFile{v1Mount(root, "memory"), cg.memory, "memory.limit_in_bytes"})
	}
	if cg.unified != "" {
		files = append(files, limitFile{unifiedMount(root), cg.unified, "memory.max"})
	}
	for _, f := range files {
		// Every ancestor's limit caps the cgroup too, so look at all of
		// them rather than stopping at the first.
		for dir := f.cgPath; ; dir = path.Dir(dir) {
			limit, err := readMemoryLimit(filepath.Join(f.mount, dir, f.name))
			if err != nil {
				return 0, err
			}
			memory = min(memory, limit)
			if dir == "/" {
				break
			}
		}
	}
	return memory, nil
}

// readMemoryLimit returns math.MaxInt64 when file sets no limit: when it is
// missing or says "max". v1 spells "no limit" as a huge page-rounded number
// such as 9223372036854771712, which is far above any MemTotal and so is
// ignored by the caller's minimum without special handling.
func readMemoryLimit(file string) (int64, error) {
	text, err := readFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return math.MaxInt64, nil
	}
	if err != nil {
		return 0, err
	}
	text = strings.TrimSpace(text)
	if text == "max" {
		return math.MaxInt64, nil
	}
	limit, err := strconv.ParseUint(text, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("read %s: invalid memory limit %q", file, text)
	}
	return int64(min(limit, math.MaxInt64)), nil
}

func memTotal(root string) (int64, error) {
	file := filepath.Join(root, "proc/meminfo")
	text, err := readFile(file)
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(text) {
		fields := strings.Fields(line)
		if len(fields) != 3 || fields[0] != "MemTotal:" || fields[2] != "kB" {
			continue
		}
		kib, err := strconv.ParseInt(fields[1], 10, 64)
		if err != nil || kib < 0 || kib > math.MaxInt64/1024 {
			return 0, fmt.Errorf("read %s: invalid MemTotal %q", file, fields[1])
		}
		return kib * 1024, nil
	}
	return 0, fmt.Errorf("read %s: no \"MemTotal: N kB\" line", file)
}

func readCPUList(file string) ([]int, error) {
	text, err := readFile(file)
	if err != nil {
		return nil, err
	}
	list, err := ParseCPUList(text)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	return list, nil
}

func readFile(file string) (string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return "", fileError("read", file, err)
	}
	return string(data), nil
}

// fileError names the operation and the file once; the *fs.PathError from
// package os would repeat the path after a less telling "open".
func fileError(op, file string, err error) error {
	if pe, ok := errors.AsType[*fs.PathError](err); ok {
		err = pe.Err
	}
	return fmt.Errorf("%s %s: %w", op, file, err)
}

func setOf(cpus []int) map[int]bool {
	set := make(map[int]bool, len(cpus))
	for _, cpu := range cpus {
		set[cpu] = true
	}
	return set
}

func listOrNone(cpus []int) string {
	if len(cpus) == 0 {
		return "none"
	}
	return FormatCPUList(cpus)
}
