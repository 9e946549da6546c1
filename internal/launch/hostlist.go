package launch

import (
	"fmt"
	"strconv"
	"strings"
)

// MaxHostlist bounds how many names one hostlist may expand to, so a short
// malformed or hostile string (n[0-999999999]) cannot eat the memory.
const MaxHostlist = 1 << 17

// ParseHostlist expands a Slurm hostlist such as SLURM_JOB_NODELIST:
// comma-separated entries at the top level, each a name with any number
// of bracket groups ("rack[0-3]_blade[01-42]" is the cartesian product,
// the leftmost group varying slowest); a group is a comma list of numbers
// and ranges ("n[1-3,7]"); a range keeps the width of its lower bound
// when that has leading zeros ("n[001-010]"). Names come out in order,
// duplicates kept.
func ParseHostlist(s string) ([]string, error) {
	var out []string
	entries, err := splitTop(s)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if e == "" {
			continue // "a,,b" and a trailing comma: nothing there
		}
		names, err := expandEntry(e, MaxHostlist-len(out))
		if err != nil {
			return nil, fmt.Errorf("hostlist %q: %w", s, err)
		}
		out = append(out, names...)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("hostlist %q: no hosts", s)
	}
	return out, nil
}

// splitTop splits at the commas outside brackets.
func splitTop(s string) ([]string, error) {
	var parts []string
	depth, start := 0, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '[':
			if depth > 0 {
				return nil, fmt.Errorf("hostlist %q: nested '[' at offset %d", s, i)
			}
			depth++
		case ']':
			if depth == 0 {
				return nil, fmt.Errorf("hostlist %q: ']' without '[' at offset %d", s, i)
			}
			depth--
		case ',':
			if depth == 0 {
				parts = append(parts, strings.TrimSpace(s[start:i]))
				start = i + 1
			}
		case ' ', '\t', '\n', '\r':
			if depth > 0 {
				return nil, fmt.Errorf("hostlist %q: white space inside brackets", s)
			}
		}
	}
	if depth != 0 {
		return nil, fmt.Errorf("hostlist %q: '[' without ']'", s)
	}
	return append(parts, strings.TrimSpace(s[start:])), nil
}

// expandEntry expands one top-level entry (no top-level commas, balanced
// brackets) into at most limit names.
func expandEntry(e string, limit int) ([]string, error) {
	if strings.ContainsAny(e, " \t\n\r") {
		return nil, fmt.Errorf("white space in host name %q", e)
	}
	names := []string{""}
	for e != "" {
		open := strings.IndexByte(e, '[')
		if open < 0 {
			for i := range names {
				names[i] += e
			}
			break
		}
		prefix := e[:open]
		end := strings.IndexByte(e, ']') // splitTop checked the nesting
		group, err := expandGroup(e[open+1 : end])
		if err != nil {
			return nil, err
		}
		if len(names)*len(group) > limit || len(group) > limit {
			return nil, fmt.Errorf("expands to more than %d hosts", MaxHostlist)
		}
		next := make([]string, 0, len(names)*len(group))
		for _, n := range names {
			for _, g := range group {
				next = append(next, n+prefix+g)
			}
		}
		names = next
		e = e[end+1:]
	}
	return names, nil
}

// maxDigits keeps range bounds within int on every platform.
const maxDigits = 9

// expandGroup expands the inside of one bracket group: "1-3,07,10-12".
func expandGroup(g string) ([]string, error) {
	if g == "" {
		return nil, fmt.Errorf("empty brackets")
	}
	var out []string
	for part := range strings.SplitSeq(g, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		if !isDigits(lo) || (isRange && !isDigits(hi)) {
			return nil, fmt.Errorf("bad range %q in [%s]", part, g)
		}
		if !isRange {
			out = append(out, lo)
			if len(out) > MaxHostlist {
				return nil, fmt.Errorf("expands to more than %d hosts", MaxHostlist)
			}
			continue
		}
		a, _ := strconv.Atoi(lo)
		b, _ := strconv.Atoi(hi)
		if b < a {
			return nil, fmt.Errorf("range %q runs backwards", part)
		}
		if b-a+1 > MaxHostlist-len(out) {
			return nil, fmt.Errorf("expands to more than %d hosts", MaxHostlist)
		}
		width := 0
		if len(lo) > 1 && lo[0] == '0' {
			width = len(lo)
		}
		for i := a; i <= b; i++ {
			out = append(out, fmt.Sprintf("%0*d", width, i))
		}
	}
	return out, nil
}

func isDigits(s string) bool {
	if s == "" || len(s) > maxDigits {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// ParseCPUsPerNode expands SLURM_JOB_CPUS_PER_NODE ("72(x2),36") into one
// count per node, in the order of the job's node list.
func ParseCPUsPerNode(s string) ([]int, error) {
	var out []int
	for part := range strings.SplitSeq(strings.TrimSpace(s), ",") {
		count, reps := part, "1"
		if i := strings.IndexByte(part, '('); i >= 0 {
			inner, ok := strings.CutSuffix(part[i+1:], ")")
			r, ok2 := strings.CutPrefix(inner, "x")
			if !ok || !ok2 {
				return nil, fmt.Errorf("cpus per node %q: bad repeat in %q", s, part)
			}
			count, reps = part[:i], r
		}
		if !isDigits(count) || !isDigits(reps) {
			return nil, fmt.Errorf("cpus per node %q: bad entry %q", s, part)
		}
		n, _ := strconv.Atoi(count)
		r, _ := strconv.Atoi(reps)
		if r < 1 || r > MaxHostlist-len(out) {
			return nil, fmt.Errorf("cpus per node %q: bad repeat count in %q", s, part)
		}
		for range r {
			out = append(out, n)
		}
	}
	return out, nil
}
