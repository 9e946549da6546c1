package topology

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// maxCPUID bounds the ids ParseCPUList accepts. It is far above any kernel's
// NR_CPUS (8192 at most today) and keeps a hostile list such as
// "0-4000000000" from forcing a huge allocation.
const maxCPUID = 1 << 16

// ParseCPUList parses the Linux cpu-list syntax used in sysfs and cgroup
// files, e.g. "0-3,8,10-11". The empty string is an empty list, and
// surrounding whitespace (such as the trailing newline of a sysfs file) is
// ignored. The result is sorted and has no duplicates.
func ParseCPUList(s string) ([]int, error) {
	list := strings.TrimSpace(s)
	if list == "" {
		return nil, nil
	}
	type span struct{ lo, hi int }
	var spans []span
	for elem := range strings.SplitSeq(list, ",") {
		loText, hiText, isRange := strings.Cut(elem, "-")
		lo, err := parseCPUID(loText)
		if err != nil {
			return nil, fmt.Errorf("parse cpu list %q: %w", s, err)
		}
		hi := lo
		if isRange {
			if hi, err = parseCPUID(hiText); err != nil {
				return nil, fmt.Errorf("parse cpu list %q: %w", s, err)
			}
			if hi < lo {
				return nil, fmt.Errorf("parse cpu list %q: range %q ends before it starts", s, elem)
			}
		}
		spans = append(spans, span{lo, hi})
	}

	// Merging sorted spans before expanding them keeps the work proportional
	// to the number of distinct ids, however often the input repeats them.
	slices.SortFunc(spans, func(a, b span) int { return a.lo - b.lo })
	var cpus []int
	next := 0 // lowest id not yet emitted
	for _, sp := range spans {
		for id := max(sp.lo, next); id <= sp.hi; id++ {
			cpus = append(cpus, id)
		}
		next = max(next, sp.hi+1)
	}
	return cpus, nil
}

// parseCPUID accepts only plain decimal digits: strconv.Atoi alone would
// also take signs.
func parseCPUID(text string) (int, error) {
	if text == "" {
		return 0, errors.New("empty cpu id")
	}
	for _, r := range text {
		if r < '0' || r > '9' {
			return 0, fmt.Errorf("invalid cpu id %q", text)
		}
	}
	id, err := strconv.Atoi(text)
	if err != nil || id >= maxCPUID {
		return 0, fmt.Errorf("cpu id %q out of range (max %d)", text, maxCPUID-1)
	}
	return id, nil
}

// FormatCPUList renders ids in the compact cpu-list syntax, e.g. "0-3,8",
// the inverse of ParseCPUList. Order and duplicates in ids do not matter;
// ids are expected to be non-negative.
func FormatCPUList(ids []int) string {
	sorted := slices.Clone(ids)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)

	var b strings.Builder
	for i := 0; i < len(sorted); {
		j := i
		for j+1 < len(sorted) && sorted[j+1] == sorted[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(sorted[i]))
		if j > i {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(sorted[j]))
		}
		i = j + 1
	}
	return b.String()
}
