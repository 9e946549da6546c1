package topology

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func noEnv(string) (string, bool) { return "", false }

func envOf(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

// nvidiaTwoGPUsTwoSockets is what the NVIDIA driver shows of two GPUs, one
// on each socket's PCI root, listed out of PCI order by the test's map.
func nvidiaTwoGPUsTwoSockets() map[string]string {
	files := map[string]string{}
	for i, gpu := range []struct{ bus, uuid, numa string }{
		{"0000:3b:00.0", "GPU-aaaaaaaa-1111-2222-3333-444444444444", "0"},
		{"0000:af:00.0", "GPU-bbbbbbbb-1111-2222-3333-444444444444", "1"},
	} {
		files["proc/driver/nvidia/gpus/"+gpu.bus+"/information"] = fmt.Sprintf(
			"Model: \t\t Tesla V100-SXM2-16GB\nIRQ:   \t\t 88\nGPU UUID: \t %s\nVideo BIOS: \t 88.00.4f.00.09\n"+
				"Bus Type: \t PCIe\nDMA Size: \t 47 bits\nBus Location: \t %s\nDevice Minor: \t %d\nGPU Excluded:\t No\n",
			gpu.uuid, gpu.bus, 1-i) // minors need not follow the PCI order
		files["sys/bus/pci/devices/"+gpu.bus+"/numa_node"] = gpu.numa + "\n"
		files[fmt.Sprintf("dev/nvidia%d", i)] = ""
	}
	files["dev/nvidiactl"] = ""
	return files
}

// amdOneCPUTwoGPUs is the KFD topology of one CPU node and two GPUs.
func amdOneCPUTwoGPUs() map[string]string {
	base := "sys/class/kfd/kfd/topology/nodes/"
	return map[string]string{
		base + "0/properties": "cpu_cores_count 64\nsimd_count 0\nmem_banks_count 1\nlocation_id 0\ndomain 0\nunique_id 0\n",
		base + "0/name":       "\n",
		// location_id 0xc100 = bus 0xc1, device 0, function 0.
		base + "1/properties":                        "cpu_cores_count 0\nsimd_count 440\nlocation_id 49408\ndomain 0\nunique_id 1311768467463790320\ndrm_render_minor 128\n",
		base + "1/name":                              "gfx90a\n",
		base + "2/properties":                        "cpu_cores_count 0\nsimd_count 440\nlocation_id 49664\ndomain 0\nunique_id 0\ndrm_render_minor 129\n",
		base + "2/name":                              "gfx90a\n",
		"sys/bus/pci/devices/0000:c1:00.0/numa_node": "3\n",
		"sys/bus/pci/devices/0000:c2:00.0/numa_node": "-1\n",
	}
}

// twoNUMANodes puts cores 0-1 (cpus 0,4 and 1,5) on node 0 and cores 2-3
// on node 1 of the 8-cpu fixture.
func twoNUMANodes() map[string]string {
	return map[string]string{
		"sys/devices/system/node/node0/cpulist": "0-1,4-5\n",
		"sys/devices/system/node/node1/cpulist": "2-3,6-7\n",
	}
}

var (
	v100a = GPU{Vendor: VendorNVIDIA, ID: "0", UUID: "GPU-aaaaaaaa-1111-2222-3333-444444444444", Model: "Tesla V100-SXM2-16GB", NUMA: 0}
	v100b = GPU{Vendor: VendorNVIDIA, ID: "1", UUID: "GPU-bbbbbbbb-1111-2222-3333-444444444444", Model: "Tesla V100-SXM2-16GB", NUMA: 1}
	mi0   = GPU{Vendor: VendorAMD, ID: "0", UUID: "GPU-123456789abcdef0", Model: "gfx90a", NUMA: 3}
	mi1   = GPU{Vendor: VendorAMD, ID: "1", Model: "gfx90a", NUMA: -1}
)

func withID(g GPU, id string) GPU { g.ID = id; return g }

func TestDetectGPUs(t *testing.T) {
	nvidia := tree(smt2Way8CPUs(), nvidiaTwoGPUsTwoSockets())
	amd := tree(smt2Way8CPUs(), amdOneCPUTwoGPUs())
	bare := smt2Way8CPUs()
	devOnly := tree(smt2Way8CPUs(), map[string]string{"dev/nvidia0": "", "dev/nvidia3": "", "dev/nvidiactl": "", "dev/nvidia-uvm": ""})
	for _, tc := range []struct {
		name  string
		files map[string]string
		env   map[string]string
		gpus  []string // Options.GPUs
		want  []GPU
	}{
		{name: "no GPU", files: bare, want: []GPU{}},
		{name: "NVIDIA from the driver, in PCI order, NUMA from the PCI device", files: nvidia, want: []GPU{v100a, v100b}},
		{name: "NVIDIA from device files alone", files: devOnly,
			want: []GPU{{Vendor: VendorNVIDIA, ID: "0", NUMA: -1}, {Vendor: VendorNVIDIA, ID: "3", NUMA: -1}}},
		{name: "AMD from KFD, CPU node skipped", files: amd, want: []GPU{mi0, mi1}},
		{name: "both vendors", files: tree(nvidia, amdOneCPUTwoGPUs()), want: []GPU{v100a, v100b, mi0, mi1}},
		{name: "CUDA_VISIBLE_DEVICES narrows, in its order", files: nvidia,
			env: map[string]string{EnvCUDA: "1"}, want: []GPU{v100b}},
		{name: "CUDA_VISIBLE_DEVICES by UUID", files: nvidia,
			env:  map[string]string{EnvCUDA: "GPU-bbbbbbbb-1111-2222-3333-444444444444,0"},
			want: []GPU{withID(v100b, "GPU-bbbbbbbb-1111-2222-3333-444444444444"), v100a}},
		{name: "CUDA_VISIBLE_DEVICES empty hides the NVIDIA GPUs only", files: tree(nvidia, amdOneCPUTwoGPUs()),
			env: map[string]string{EnvCUDA: ""}, want: []GPU{mi0, mi1}},
		{name: "CUDA_VISIBLE_DEVICES defines GPUs where none are visible", files: bare,
			env:  map[string]string{EnvCUDA: "2,3"},
			want: []GPU{{Vendor: VendorNVIDIA, ID: "2", NUMA: -1}, {Vendor: VendorNVIDIA, ID: "3", NUMA: -1}}},
		{name: "ROCR_VISIBLE_DEVICES narrows the AMD GPUs", files: amd,
			env: map[string]string{EnvROCR: "1", EnvHIP: "0"}, want: []GPU{mi1}},
		{name: "HIP_VISIBLE_DEVICES when ROCR is unset", files: amd,
			env: map[string]string{EnvHIP: "0"}, want: []GPU{mi0}},
		{name: "ROCR_VISIBLE_DEVICES defines AMD GPUs where none are visible", files: bare,
			env: map[string]string{EnvROCR: "0"}, want: []GPU{{Vendor: VendorAMD, ID: "0", NUMA: -1}}},
		{name: "SLURM_STEP_GPUS narrows", files: nvidia,
			env: map[string]string{envSlurmStep: "1", envSlurmJob: "0,1"}, want: []GPU{v100b}},
		{name: "SLURM_JOB_GPUS narrows", files: nvidia,
			env: map[string]string{envSlurmJob: "0"}, want: []GPU{v100a}},
		{name: "SLURM_JOB_GPUS on AMD hardware", files: amd,
			env: map[string]string{envSlurmJob: "1"}, want: []GPU{mi1}},
		{name: "SLURM_JOB_GPUS defines GPUs where none are visible", files: bare,
			env:  map[string]string{envSlurmJob: "4,5"},
			want: []GPU{{Vendor: VendorNVIDIA, ID: "4", NUMA: -1}, {Vendor: VendorNVIDIA, ID: "5", NUMA: -1}}},
		{name: "Slurm's NoDevFiles is none", files: nvidia,
			env: map[string]string{envSlurmJob: "NoDevFiles"}, want: []GPU{}},
		{name: "CUDA_VISIBLE_DEVICES wins over Slurm's lists", files: nvidia,
			env: map[string]string{EnvCUDA: "0", envSlurmJob: "1"}, want: []GPU{v100a}},
		{name: "--gpus wins over the environment", files: nvidia,
			env: map[string]string{EnvCUDA: "0"}, gpus: []string{"1"}, want: []GPU{v100b}},
		{name: "--gpus defines GPUs, vendor prefix", files: bare,
			gpus: []string{"0", "amd:1"},
			want: []GPU{{Vendor: VendorNVIDIA, ID: "0", NUMA: -1}, {Vendor: VendorAMD, ID: "1", NUMA: -1}}},
		{name: "--gpus none", files: nvidia, gpus: []string{}, want: []GPU{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := writeTree(t, tc.files)
			got, err := Detect(Options{Root: root, Affinity: []int{0, 1, 2, 3, 4, 5, 6, 7}, Hostname: "n", Env: envOf(tc.env), GPUs: tc.gpus})
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got.GPUs, tc.want) {
				t.Errorf("GPUs = %+v\nwant   %+v", got.GPUs, tc.want)
			}
		})
	}
}

func TestDetectCoreNUMA(t *testing.T) {
	root := writeTree(t, tree(smt2Way8CPUs(), twoNUMANodes()))
	got, err := Detect(Options{Root: root, Affinity: []int{1, 2, 3, 5, 6, 7}, Hostname: "n", Env: noEnv})
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{0, 1, 1}; !reflect.DeepEqual(got.NUMA, want) {
		t.Errorf("NUMA of cores %v = %v, want %v", got.Cores, got.NUMA, want)
	}
}

// TestDetectGPUsNvidiaSMI runs a stand-in nvidia-smi: a real program that
// prints what the real one does for -L.
func TestDetectGPUsNvidiaSMI(t *testing.T) {
	smi := filepath.Join(t.TempDir(), "nvidia-smi")
	script := "#!/bin/sh\n[ \"$1\" = -L ] || exit 9\n" +
		"echo 'GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-cccccccc-1111-2222-3333-444444444444)'\n" +
		"echo 'GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-dddddddd-1111-2222-3333-444444444444)'\n"
	if err := os.WriteFile(smi, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	devs := maps.Clone(smt2Way8CPUs())
	devs["dev/nvidia0"], devs["dev/nvidia1"] = "", ""
	for name, files := range map[string]map[string]string{"enriches device files": devs, "defines GPUs": smt2Way8CPUs()} {
		t.Run(name, func(t *testing.T) {
			got, err := Detect(Options{Root: writeTree(t, files), Affinity: []int{0}, Hostname: "n", Env: noEnv, NvidiaSMI: smi})
			if err != nil {
				t.Fatal(err)
			}
			want := []GPU{
				{Vendor: VendorNVIDIA, ID: "0", UUID: "GPU-cccccccc-1111-2222-3333-444444444444", Model: "NVIDIA A100-SXM4-40GB", NUMA: -1},
				{Vendor: VendorNVIDIA, ID: "1", UUID: "GPU-dddddddd-1111-2222-3333-444444444444", Model: "NVIDIA A100-SXM4-40GB", NUMA: -1},
			}
			if !reflect.DeepEqual(got.GPUs, want) {
				t.Errorf("GPUs = %+v\nwant   %+v", got.GPUs, want)
			}
		})
	}
}

func TestParseGPUList(t *testing.T) {
	for in, want := range map[string][]string{"0,1": {"0", "1"}, " 2 , amd:3": {"2", "amd:3"}, "none": {}, "GPU-abc": {"GPU-abc"}} {
		got, err := ParseGPUList(in)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("ParseGPUList(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", ",", "intel:0", "0;rm", "-1x"} {
		if got, err := ParseGPUList(in); err == nil {
			t.Errorf("ParseGPUList(%q) = %q, want an error", in, got)
		}
	}
}
