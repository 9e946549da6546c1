// Package topology finds the hardware threads a process on this node may
// use, grouped by physical core, and the memory it may use.
package topology

// Resources is what one node offers: logical hwthread ids (as Linux numbers
// them) grouped by core, and memory.
type Resources struct {
	Node        string  `json:"node"`
	Cores       [][]int `json:"cores"`
	MemoryBytes int64   `json:"memory_bytes"`
}

// HWThreads returns every hwthread of every core, in core order.
func (r Resources) HWThreads() []int {
	var all []int
	for _, c := range r.Cores {
		all = append(all, c...)
	}
	return all
}
