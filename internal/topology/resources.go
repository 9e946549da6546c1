// Package topology finds the hardware threads a process on this node may
// use, grouped by physical core, the memory it may use, and its GPUs.
package topology

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Resources is what one node offers: logical hwthread ids (as Linux numbers
// them) grouped by core, memory, GPUs, and the counted resources its agent
// was told it has.
type Resources struct {
	Node        string  `json:"node"`
	Cores       [][]int `json:"cores"`
	MemoryBytes int64   `json:"memory_bytes"`
	GPUs        []GPU   `json:"gpus"`
	// NUMA is the NUMA node of each core (of its first hwthread), in the
	// order of Cores; empty when the kernel does not say.
	NUMA []int `json:"numa,omitempty"`
	// Custom holds counted resources the node declares (drover agent
	// --resource license=2): names to amounts.
	Custom map[string]int64 `json:"custom,omitempty"`
}

// GPU is one whole GPU of a node.
type GPU struct {
	Vendor string `json:"vendor"` // VendorNVIDIA or VendorAMD
	// ID is what the vendor's runtime takes in CUDA_VISIBLE_DEVICES or
	// ROCR_VISIBLE_DEVICES for this GPU: its index, or the UUID or index
	// the allocation named it by.
	ID    string `json:"id"`
	UUID  string `json:"uuid,omitempty"`
	Model string `json:"model,omitempty"`
	NUMA  int    `json:"numa"` // NUMA node; -1 when unknown
}

// GPU vendors.
const (
	VendorNVIDIA = "nvidia"
	VendorAMD    = "amd"
)

// HWThreads returns every hwthread of every core, in core order.
func (r Resources) HWThreads() []int {
	var all []int
	for _, c := range r.Cores {
		all = append(all, c...)
	}
	return all
}

// CoreNUMA is the NUMA node of core i, or -1 when unknown.
func (r Resources) CoreNUMA(i int) int {
	if i < len(r.NUMA) {
		return r.NUMA[i]
	}
	return -1
}

// resourceNameRE is what a counted resource may be called: it appears in
// job files, flags and metrics labels.
var resourceNameRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_.-]{0,63}$`)

// ResourceNameRule says what ResourceNameOK wants, for messages.
const ResourceNameRule = `must start with a letter and be letters, digits, "_", "." and "-", at most 64`

// ResourceNameOK reports whether name may name a counted resource.
func ResourceNameOK(name string) bool { return resourceNameRE.MatchString(name) }

// ParseResourceList reads counted resources as drover agent --resource
// takes them: NAME=N pairs separated by commas, N a whole number >= 0.
// A name given twice is an error.
func ParseResourceList(s string) (map[string]int64, error) {
	out := make(map[string]int64)
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		k, v, ok := strings.Cut(item, "=")
		k = strings.TrimSpace(k)
		if !ok {
			return nil, fmt.Errorf("resource %q: want NAME=N, such as license=2", item)
		}
		if !ResourceNameOK(k) {
			return nil, fmt.Errorf("resource name %q %s", k, ResourceNameRule)
		}
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("resource %s: want a whole number >= 0, got %q", k, v)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("resource %s is given twice", k)
		}
		out[k] = n
	}
	return out, nil
}
