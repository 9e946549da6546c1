package jobfile

import (
	"fmt"
	"slices"
	"strings"
)

// Dependencies: a job's after lists jobs every instance of which must
// succeed before any instance of it starts. The names must be jobs of
// the same file, not the job itself, and the jobs must not wait for each
// other in a cycle.

// checkAfter checks the after lists of a file's jobs.
func checkAfter(r *reporter, jobs []Job, ls []*locs) {
	after := make([][]string, len(jobs))
	names := make([]string, len(jobs))
	for i := range jobs {
		names[i] = jobs[i].Name
		if ls[i].ok("after") {
			after[i] = jobs[i].After
		}
	}
	afterProblems(names, after, func(i, k int) bool { return ls[i].itemOK("after", k) },
		func(i, k int, msg string) { r.at(ls[i].item("after", k), "%s", msg) })
}

// CheckAfter checks the after lists of jobs built in code, as Parse does
// those of a file: every name is one of jobs, none its own, no cycle.
func CheckAfter(jobs []*Job) error {
	r := &reporter{}
	after := make([][]string, len(jobs))
	names := make([]string, len(jobs))
	for i, j := range jobs {
		names[i], after[i] = j.Name, j.After
	}
	afterProblems(names, after, func(int, int) bool { return true }, func(i, k int, msg string) {
		r.at(pos{jobs[i].Line, jobs[i].Col}, "%s", msg)
	})
	return r.err()
}

// afterProblems reports, through report(job, item, message), each after
// item that names no job, names its own job or repeats, and one item
// closing each cycle. ok tells the items worth checking.
func afterProblems(names []string, after [][]string, ok func(i, k int) bool, report func(i, k int, msg string)) {
	index := make(map[string]int, len(names))
	for i, n := range names {
		if _, dup := index[n]; !dup {
			index[n] = i
		}
	}
	// edges[i] are the valid items of after[i]: (item, job) pairs.
	type edge struct{ item, to int }
	edges := make([][]edge, len(names))
	for i := range after {
		seen := make(map[string]bool)
		for k, a := range after[i] {
			if !ok(i, k) {
				continue
			}
			to, known := index[a]
			switch {
			case a == "":
				report(i, k, itemName("after", k)+" must not be empty")
			case a == names[i]:
				report(i, k, fmt.Sprintf("%s: job %s cannot wait for itself", itemName("after", k), quote(a)))
			case !known:
				report(i, k, fmt.Sprintf("%s names no job %s%s", itemName("after", k), quote(a), suggest(a, names)))
			case seen[a]:
				report(i, k, fmt.Sprintf("%s repeats %s", itemName("after", k), quote(a)))
			default:
				seen[a] = true
				edges[i] = append(edges[i], edge{k, to})
			}
		}
	}
	// A depth-first walk in file order; an edge back to a job on the
	// stack closes a cycle, reported at that edge's item.
	const (
		unseen = iota
		onStack
		done
	)
	state := make([]int, len(names))
	var stack []int
	var walk func(i int)
	walk = func(i int) {
		state[i] = onStack
		stack = append(stack, i)
		for _, e := range edges[i] {
			switch state[e.to] {
			case unseen:
				walk(e.to)
			case onStack:
				from := slices.Index(stack, e.to)
				var chain []string
				for _, s := range stack[from:] {
					chain = append(chain, quote(names[s]))
				}
				chain = append(chain, quote(names[e.to]))
				report(i, e.item, fmt.Sprintf("%s closes a cycle of jobs waiting for each other: %s",
					itemName("after", e.item), strings.Join(chain, " after ")))
			}
		}
		stack = stack[:len(stack)-1]
		state[i] = done
	}
	for i := range names {
		if state[i] == unseen {
			walk(i)
		}
	}
}

// Stages groups the jobs of a valid file by when they may start: stage 0
// waits for nothing, stage n for jobs of stages below n, at least one of
// them in stage n-1. Each stage lists job names in file order.
func (f *File) Stages() [][]string {
	index := make(map[string]int, len(f.Jobs))
	for i := range f.Jobs {
		index[f.Jobs[i].Name] = i
	}
	stage := make([]int, len(f.Jobs))
	for i := range stage {
		stage[i] = -1
	}
	var of func(i int) int
	of = func(i int) int {
		if stage[i] >= 0 {
			return stage[i]
		}
		stage[i] = 0 // a cycle (not in a valid file) ends here
		s := 0
		for _, a := range f.Jobs[i].After {
			if p, ok := index[a]; ok {
				s = max(s, of(p)+1)
			}
		}
		stage[i] = s
		return s
	}
	var out [][]string
	for i := range f.Jobs {
		s := of(i)
		for len(out) <= s {
			out = append(out, nil)
		}
		out[s] = append(out[s], f.Jobs[i].Name)
	}
	return out
}
