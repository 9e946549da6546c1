// Package topology finds the hardware threads a process on this node may
// use, grouped by physical core, the memory it may use, and its GPUs.
package topology

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
