package droverpb

// Helpers for the repeated int32 fields, shared by every adapter.

// Int32s converts ids for a repeated int32 field; nil stays nil.
func Int32s(v []int) []int32 {
	if v == nil {
		return nil
	}
	out := make([]int32, len(v))
	for i, x := range v {
		out[i] = int32(x)
	}
	return out
}

// Ints converts a repeated int32 field back; nil stays nil.
func Ints(v []int32) []int {
	if v == nil {
		return nil
	}
	out := make([]int, len(v))
	for i, x := range v {
		out[i] = int(x)
	}
	return out
}

// NewResources builds the message of a node's resources: hwthreads grouped
// by core.
func NewResources(node string, cores [][]int, memoryBytes int64) *Resources {
	out := &Resources{Node: node, MemoryBytes: memoryBytes}
	for _, c := range cores {
		out.Cores = append(out.Cores, &Core{Hwthreads: Int32s(c)})
	}
	return out
}

// CoreLists returns the hwthreads grouped by core.
func (r *Resources) CoreLists() [][]int {
	var out [][]int
	for _, c := range r.GetCores() {
		out = append(out, Ints(c.GetHwthreads()))
	}
	return out
}
