package jobfile

import (
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestParseResourceKeys(t *testing.T) {
	src := "jobs:\n  - name: a\n    command: [x]\n    gpus: 2\n    memory: 4G\n    resources: {license: 1, fpga: 0}\n" +
		"  - name: b\n    command: [x]\n    memory: 1.5GiB\n  - name: c\n    command: [x]\n    memory: 512m\n  - name: d\n    command: [x]\n    memory: 1048576\n    resources:\n"
	f, err := Parse("jobs.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	a := f.Jobs[0]
	if a.GPUs != 2 || a.Memory != 4<<30 || !reflect.DeepEqual(a.Resources, map[string]int64{"license": 1, "fpga": 0}) {
		t.Errorf("job a: gpus %d memory %d resources %v", a.GPUs, a.Memory, a.Resources)
	}
	for i, want := range []int64{3 << 29, 512 << 20, 1 << 20} {
		if got := f.Jobs[i+1].Memory; got != want {
			t.Errorf("job %s: memory %d, want %d", f.Jobs[i+1].Name, got, want)
		}
	}
}

func TestParseResourceKeyErrors(t *testing.T) {
	for _, tc := range []struct{ name, src, want string }{
		{"negative gpus", "jobs:\n  - name: a\n    command: [x]\n    gpus: -1\n",
			"jobs.yaml:4:11: gpus must be a whole number >= 0, got -1"},
		{"gpus not a number", "jobs:\n  - name: a\n    command: [x]\n    gpus: two\n",
			`jobs.yaml:4:11: gpus must be a whole number >= 0, got "two"`},
		{"memory lots", "jobs:\n  - name: a\n    command: [x]\n    memory: lots\n",
			`jobs.yaml:4:13: memory must be an amount such as 4G, 512M or 1073741824 (bytes), got "lots"`},
		{"memory zero", "jobs:\n  - name: a\n    command: [x]\n    memory: 0\n",
			`jobs.yaml:4:13: memory must be above zero, got "0"`},
		{"memory huge", "jobs:\n  - name: a\n    command: [x]\n    memory: 99999999T\n",
			`jobs.yaml:4:13: memory "99999999T" is too large`},
		{"memory a list", "jobs:\n  - name: a\n    command: [x]\n    memory: [4G]\n",
			`jobs.yaml:4:13: memory must be an amount such as 4G, 512M or 1073741824 (bytes), got a list`},
		{"resources a list", "jobs:\n  - name: a\n    command: [x]\n    resources: [license]\n",
			`jobs.yaml:4:16: resources must be a mapping of NAME: amount, such as {license: 1}, got a list`},
		{"resource negative", "jobs:\n  - name: a\n    command: [x]\n    resources:\n      license: -2\n",
			"jobs.yaml:5:16: resources license must be a whole number >= 0, got -2"},
		{"resource bad name", "jobs:\n  - name: a\n    command: [x]\n    resources: {\"2x\": 1}\n",
			`jobs.yaml:4:17: resource name "2x" must start with a letter and be letters, digits, "_", "." and "-", at most 64`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := parseErrs(t, tc.src)
			if !slices.Contains(got, tc.want) {
				t.Errorf("errors:\n%s\nwant among them:\n%s", got, tc.want)
			}
		})
	}
}

func TestValidateResourceKeys(t *testing.T) {
	j := Job{Name: "a", Command: []string{"x"}, GPUs: -1, Memory: -5, Resources: map[string]int64{"license": -1}}
	err := j.Validate()
	if err == nil {
		t.Fatal("Validate accepted negative gpus, memory and resources")
	}
	for _, want := range []string{"gpus must be a whole number >= 0, got -1", "memory must be above zero, got -5", "resources license must be a whole number from 0"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v; want %q", err, want)
		}
	}
}

func TestParseMemoryUnits(t *testing.T) {
	for in, want := range map[string]int64{"1048576": 1 << 20, "1B": 1, "2K": 2048, "2KiB": 2048, "3kb": 3072, "1M": 1 << 20, "4G": 4 << 30, "4GB": 4 << 30, "1T": 1 << 40, "0.5G": 1 << 29} {
		if got, err := ParseMemory(in); err != nil || got != want {
			t.Errorf("ParseMemory(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "lots", "-1G", "4X", "G", "4 G B", "0", "0.1", "1.5", "4", "1000", "1.5B"} {
		if got, err := ParseMemory(in); err == nil {
			t.Errorf("ParseMemory(%q) = %d, want an error", in, got)
		}
	}
	for b, want := range map[int64]string{4 << 30: "4G", 3 << 29: "1.5G", 512 << 20: "512M", 1000: "1000 bytes", 1 << 40: "1T"} {
		if got := FormatMemory(b); got != want {
			t.Errorf("FormatMemory(%d) = %q, want %q", b, got, want)
		}
	}
}
