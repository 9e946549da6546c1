package topology

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The environment variables through which an allocation hands a process
// its GPUs, in the order they are consulted.
const (
	EnvCUDA      = "CUDA_VISIBLE_DEVICES"
	EnvROCR      = "ROCR_VISIBLE_DEVICES"
	EnvHIP       = "HIP_VISIBLE_DEVICES"
	envSlurmStep = "SLURM_STEP_GPUS"
	envSlurmJob  = "SLURM_JOB_GPUS"
)

// detectGPUs finds the GPUs the process may use: the hardware it sees,
// narrowed (or, where no hardware is visible, defined) by what the
// allocation put in its environment; opts.GPUs, when set, wins over both.
func detectGPUs(opts Options, root string) ([]GPU, error) {
	hw, err := hardwareGPUs(opts, root)
	if err != nil {
		return nil, err
	}
	if opts.GPUs != nil {
		return pickGPUs(hw, opts.GPUs, VendorNVIDIA, true), nil
	}
	lookup := opts.Env
	if lookup == nil {
		lookup = os.LookupEnv
	}
	var out []GPU
	restricted := false
	byVendor := func(vendor string, vars ...string) {
		for _, v := range vars {
			if val, ok := lookup(v); ok {
				restricted = true
				out = append(out, pickGPUs(ofVendor(hw, vendor), splitGPUList(val), vendor, false)...)
				return
			}
		}
		out = append(out, ofVendor(hw, vendor)...)
	}
	byVendor(VendorNVIDIA, EnvCUDA)
	byVendor(VendorAMD, EnvROCR, EnvHIP)
	if restricted {
		return out, nil
	}
	// Slurm's lists name GPUs by index without a vendor: the node's own
	// vendor, NVIDIA when it shows none.
	for _, v := range []string{envSlurmStep, envSlurmJob} {
		if val, ok := lookup(v); ok {
			vendor := VendorNVIDIA
			if len(hw) > 0 {
				vendor = hw[0].Vendor
			}
			return pickGPUs(hw, splitGPUList(val), vendor, false), nil
		}
	}
	return hw, nil
}

// ParseGPUList splits a list of GPUs as --gpus takes it: ids or UUIDs,
// each optionally prefixed by its vendor ("amd:0"), separated by commas;
// "none" is no GPU at all.
func ParseGPUList(s string) ([]string, error) {
	s = strings.TrimSpace(s)
	if s == "none" {
		return []string{}, nil
	}
	items := splitGPUList(s)
	if len(items) == 0 {
		return nil, fmt.Errorf("GPU list %q is empty; write \"none\" for no GPUs", s)
	}
	for _, it := range items {
		vendor, id, ok := strings.Cut(it, ":")
		if !ok {
			id = vendor
		} else if vendor != VendorNVIDIA && vendor != VendorAMD {
			return nil, fmt.Errorf("GPU %q: the vendor before \":\" must be %s or %s", it, VendorNVIDIA, VendorAMD)
		}
		if !gpuIDRE.MatchString(id) {
			return nil, fmt.Errorf("GPU %q: want an index such as 0 or a UUID such as GPU-8f3e...", it)
		}
	}
	return items, nil
}

var gpuIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:/-]*$`)

// splitGPUList splits a comma list, dropping blanks. Slurm writes
// "NoDevFiles" when a job has none; CUDA stops at the first invalid index,
// which "-1" is by convention: both mean no GPU.
func splitGPUList(s string) []string {
	var out []string
	for it := range strings.SplitSeq(s, ",") {
		it = strings.TrimSpace(it)
		if it == "NoDevFiles" || it == "-1" {
			break
		}
		if it != "" {
			out = append(out, it)
		}
	}
	return out
}

// pickGPUs returns the GPUs named by items, in their order: the hardware
// GPU an item names (by id or UUID) with what is known of it, or a GPU
// defined by the item alone, of vendor unless withVendor lets the item
// say ("amd:1").
func pickGPUs(hw []GPU, items []string, vendor string, withVendor bool) []GPU {
	out := []GPU{}
	seen := make(map[string]bool)
	for _, it := range items {
		v, id := "", it
		if withVendor {
			if pre, rest, ok := strings.Cut(it, ":"); ok && (pre == VendorNVIDIA || pre == VendorAMD) {
				v, id = pre, rest
			}
		}
		i := slices.IndexFunc(hw, func(g GPU) bool {
			return (v == "" || g.Vendor == v) && (g.ID == id || (g.UUID != "" && strings.EqualFold(g.UUID, id)))
		})
		g := GPU{Vendor: v, ID: id, NUMA: -1}
		switch {
		case i >= 0:
			g = hw[i]
			g.ID = id // as the allocation names it: that is what its runtime takes
		case v == "":
			g.Vendor = vendor
		}
		if key := g.Vendor + "\x00" + g.ID; !seen[key] {
			seen[key] = true
			out = append(out, g)
		}
	}
	return out
}

func ofVendor(gpus []GPU, vendor string) []GPU {
	var out []GPU
	for _, g := range gpus {
		if g.Vendor == vendor {
			out = append(out, g)
		}
	}
	return out
}

// hardwareGPUs lists the GPUs the node shows: NVIDIA ones first, then
// AMD ones, each in the order their runtime numbers them.
func hardwareGPUs(opts Options, root string) ([]GPU, error) {
	nv, err := nvidiaGPUs(root)
	if err != nil {
		return nil, err
	}
	smi := opts.NvidiaSMI
	if smi == "" && opts.Root == "" {
		smi, _ = exec.LookPath("nvidia-smi")
	}
	if smi != "" {
		nv = withSMI(nv, smi)
	}
	amd, err := amdGPUs(root)
	if err != nil {
		return nil, err
	}
	return append(nv, amd...), nil
}

// nvidiaGPUs reads the driver's /proc/driver/nvidia/gpus/<PCI address>/
// information, one directory per GPU. CUDA's default order among equal
// GPUs, and nvidia-smi's, is that of the PCI address, so the index there
// is the id. Without that directory (a container given only the device
// files) each /dev/nvidiaN is GPU N.
func nvidiaGPUs(root string) ([]GPU, error) {
	dir := filepath.Join(root, "proc/driver/nvidia/gpus")
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fileError("read", dir, err)
	}
	var out []GPU
	for _, e := range entries { // ReadDir sorts by name: PCI address order
		info, err := readFile(filepath.Join(dir, e.Name(), "information"))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		fields := keyValues(info, ":")
		g := GPU{Vendor: VendorNVIDIA, ID: strconv.Itoa(len(out)), UUID: fields["GPU UUID"], Model: fields["Model"], NUMA: -1}
		if strings.HasPrefix(g.UUID, "?") { // the driver's placeholder before the GPU is initialised
			g.UUID = ""
		}
		bus := fields["Bus Location"]
		if bus == "" {
			bus = e.Name()
		}
		g.NUMA = pciNUMA(root, bus)
		out = append(out, g)
	}
	if len(out) > 0 {
		return out, nil
	}
	devs, err := filepath.Glob(filepath.Join(root, "dev/nvidia[0-9]*"))
	if err != nil {
		return nil, err
	}
	var minors []int
	for _, d := range devs {
		if n, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), "nvidia")); err == nil && n >= 0 {
			minors = append(minors, n)
		}
	}
	slices.Sort(minors)
	for _, n := range minors {
		out = append(out, GPU{Vendor: VendorNVIDIA, ID: strconv.Itoa(n), NUMA: -1})
	}
	return out, nil
}

// smiLine is a line of nvidia-smi -L: "GPU 0: NAME (UUID: GPU-...)".
var smiLine = regexp.MustCompile(`^GPU (\d+): (.*?) \(UUID: ([^)]+)\)`)

// withSMI fills in UUIDs and models from nvidia-smi -L, or defines the
// GPUs from it when the files showed none. A failing nvidia-smi (no
// driver loaded) changes nothing.
func withSMI(gpus []GPU, smi string) []GPU {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, smi, "-L").Output()
	if err != nil {
		return gpus
	}
	define := len(gpus) == 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		m := smiLine.FindStringSubmatch(strings.TrimSpace(sc.Text()))
		if m == nil {
			continue
		}
		if define {
			gpus = append(gpus, GPU{Vendor: VendorNVIDIA, ID: m[1], Model: m[2], UUID: m[3], NUMA: -1})
			continue
		}
		for i := range gpus {
			if gpus[i].ID == m[1] {
				gpus[i].UUID, gpus[i].Model = m[3], m[2]
			}
		}
	}
	return gpus
}

// amdGPUs reads the KFD topology: one node per CPU socket and per GPU,
// numbered as the ROCm runtime enumerates them; CPU nodes have no SIMD
// units. ROCR_VISIBLE_DEVICES indexes the GPU nodes in that order.
func amdGPUs(root string) ([]GPU, error) {
	dir := filepath.Join(root, "sys/class/kfd/kfd/topology/nodes")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fileError("read", dir, err)
	}
	var nodes []int
	for _, e := range entries {
		if n, err := strconv.Atoi(e.Name()); err == nil {
			nodes = append(nodes, n)
		}
	}
	slices.Sort(nodes)
	var out []GPU
	for _, n := range nodes {
		props, err := readFile(filepath.Join(dir, strconv.Itoa(n), "properties"))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		p := keyValues(props, " ")
		if simd, _ := strconv.ParseInt(p["simd_count"], 10, 64); simd <= 0 {
			continue
		}
		g := GPU{Vendor: VendorAMD, ID: strconv.Itoa(len(out)), NUMA: -1}
		if id, err := strconv.ParseUint(p["unique_id"], 10, 64); err == nil && id != 0 {
			g.UUID = fmt.Sprintf("GPU-%016x", id)
		}
		if name, err := readFile(filepath.Join(dir, strconv.Itoa(n), "name")); err == nil {
			g.Model = strings.TrimSpace(name)
		}
		// location_id packs the PCI bus, device and function (bus<<8 |
		// device<<3 | function); domain is the PCI domain.
		if loc, err := strconv.ParseUint(p["location_id"], 10, 32); err == nil {
			domain, _ := strconv.ParseUint(p["domain"], 10, 32)
			g.NUMA = pciNUMA(root, fmt.Sprintf("%04x:%02x:%02x.%x", domain, loc>>8&0xff, loc>>3&0x1f, loc&7))
		}
		out = append(out, g)
	}
	return out, nil
}

// pciNUMA is the NUMA node of the PCI device at address, or -1.
func pciNUMA(root, address string) int {
	text, err := readFile(filepath.Join(root, "sys/bus/pci/devices", strings.ToLower(address), "numa_node"))
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(text))
	if err != nil || n < 0 {
		return -1
	}
	return n
}

// keyValues reads "key<sep> value" lines; the first sep splits.
func keyValues(text, sep string) map[string]string {
	out := make(map[string]string)
	for line := range strings.Lines(text) {
		k, v, ok := strings.Cut(line, sep)
		if ok {
			out[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return out
}

// coreNUMA gives each core the NUMA node of its first hwthread, from
// /sys/devices/system/node/nodeN/cpulist; nil when the kernel shows no
// NUMA nodes.
func coreNUMA(root string, cores [][]int) ([]int, error) {
	dirs, err := filepath.Glob(filepath.Join(root, "sys/devices/system/node/node[0-9]*"))
	if err != nil || len(dirs) == 0 {
		return nil, err
	}
	nodeOf := make(map[int]int)
	for _, d := range dirs {
		n, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), "node"))
		if err != nil {
			continue
		}
		cpus, err := readCPUList(filepath.Join(d, "cpulist"))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, c := range cpus {
			nodeOf[c] = n
		}
	}
	out := make([]int, len(cores))
	for i, c := range cores {
		n, ok := nodeOf[c[0]]
		if !ok {
			n = -1
		}
		out[i] = n
	}
	return out, nil
}

// GPUEnv is the environment that hands a process the GPUs gpus:
// CUDA_VISIBLE_DEVICES with the NVIDIA ones; ROCR_VISIBLE_DEVICES with the
// AMD ones, and HIP_VISIBLE_DEVICES numbering them 0..n-1 as HIP sees them
// once ROCR has narrowed the view (HIP's indices count what ROCR lets
// through); DROVER_GPUS with every id. Nothing for no GPUs.
func GPUEnv(gpus []GPU) map[string]string {
	if len(gpus) == 0 {
		return nil
	}
	var all, nv, amd, hip []string
	for _, g := range gpus {
		all = append(all, g.ID)
		switch g.Vendor {
		case VendorAMD:
			hip = append(hip, strconv.Itoa(len(amd)))
			amd = append(amd, g.ID)
		default:
			nv = append(nv, g.ID)
		}
	}
	env := map[string]string{"DROVER_GPUS": strings.Join(all, ",")}
	if len(nv) > 0 {
		env[EnvCUDA] = strings.Join(nv, ",")
	}
	if len(amd) > 0 {
		env[EnvROCR] = strings.Join(amd, ",")
		env[EnvHIP] = strings.Join(hip, ",")
	}
	return env
}
