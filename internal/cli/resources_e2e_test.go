package cli_test

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestResourcesJSON(t *testing.T) {
	t.Parallel()
	r := drover(t, t.TempDir(), "resources", "--json")
	wantCode(t, r, 0)
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil {
		t.Fatalf("not one JSON object: %v\n%s", err, r)
	}
	for _, k := range []string{"node", "cores", "memory_bytes", "gpus"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("no %q in %s", k, r.stdout)
		}
	}
	var res resources
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	if res.Node == "" {
		t.Errorf("empty node name: %s", r.stdout)
	}
	if res.MemoryBytes <= 0 {
		t.Errorf("memory_bytes = %d", res.MemoryBytes)
	}
	if len(res.Cores) == 0 {
		t.Fatalf("no cores: %s", r.stdout)
	}
	aff := affinity(t)
	seen := map[int]bool{}
	for i, c := range res.Cores {
		if len(c) == 0 {
			t.Errorf("core %d has no hwthreads", i)
		}
		for _, h := range c {
			if seen[h] {
				t.Errorf("hwthread %d is listed twice", h)
			}
			seen[h] = true
			if !aff[h] {
				t.Errorf("hwthread %d (core %d) is outside this process's affinity %v", h, i, aff)
			}
		}
	}
}

func TestResourcesPlain(t *testing.T) {
	t.Parallel()
	res := localResources(t)
	r := drover(t, t.TempDir(), "resources")
	wantCode(t, r, 0)
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	head := regexp.MustCompile(`^node (\S+): (\d+) cores?, (\d+) hardware threads?, [0-9.]+ GiB memory, (\d+) GPUs?$`).FindStringSubmatch(lines[0])
	if head == nil {
		t.Fatalf("first line %q is not the readable summary\n%s", lines[0], r)
	}
	nHW := len(res.hwthreads())
	if head[1] != res.Node || head[2] != strconv.Itoa(len(res.Cores)) || head[3] != strconv.Itoa(nHW) {
		t.Errorf("%q disagrees with --json: node %s, %d cores, %d hwthreads", lines[0], res.Node, len(res.Cores), nHW)
	}
	if len(lines) != 1+len(res.Cores)+len(res.GPUs) || head[4] != strconv.Itoa(len(res.GPUs)) {
		t.Fatalf("want a line per core and per GPU:\n%s", r.stdout)
	}
	for i, c := range res.Cores {
		m := regexp.MustCompile(fmt.Sprintf(`^\s+core %d: hwthreads ([0-9,-]+)$`, i)).FindStringSubmatch(lines[1+i])
		if m == nil {
			t.Errorf("line %q, want core %d's hwthreads", lines[1+i], i)
			continue
		}
		if got := parseCPUList(t, m[1]); !slices.Equal(got, slices.Sorted(slices.Values(c))) {
			t.Errorf("core %d: %v, --json says %v", i, got, c)
		}
	}
	if r.stderr != "" {
		t.Errorf("stderr: %q", r.stderr)
	}
}
