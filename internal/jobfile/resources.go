package jobfile

import (
	"fmt"
	"maps"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/goccy/go-yaml/ast"

	"github.com/drover-hpc/drover/internal/topology"
)

// The keys gpus, memory and resources: what an instance reserves on its
// node besides cores.

const maxGPUs = 1024

// memoryRE is an amount of memory: a whole or decimal number and an
// optional unit, K, M, G or T (powers of 1024), optionally followed by
// "i" and/or "B" (4G, 4GB, 4GiB); no unit (or B alone) means bytes.
var memoryRE = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)\s*(?:([KMGTkmgt])(?:i?[Bb])?|[Bb])?$`)

// ParseMemory reads an amount of memory such as "4G", "512M", "1.5GiB" or
// "1073741824" (bytes); units are powers of 1024. Without a unit it must
// be a whole number of at least a mebibyte.
func ParseMemory(s string) (int64, error) {
	m := memoryRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return 0, fmt.Errorf("memory must be an amount such as 4G, 512M or 1073741824 (bytes), got %s", quote(s))
	}
	shift := 0
	if m[2] != "" {
		shift = 10 * (1 + strings.Index("KMGT", strings.ToUpper(m[2])))
	}
	n, err := strconv.ParseFloat(m[1], 64)
	bytes := n * float64(int64(1)<<shift)
	switch {
	case err != nil || bytes >= math.MaxInt64:
		return 0, fmt.Errorf("memory %s is too large", quote(s))
	case bytes < 1:
		return 0, fmt.Errorf("memory must be above zero, got %s", quote(s))
	case shift == 0 && bytes != math.Trunc(bytes):
		return 0, fmt.Errorf("memory %s is a fraction of a byte; write a unit, such as %sG", quote(s), m[1])
	case shift == 0 && bytes < 1<<20 && !strings.HasSuffix(strings.ToUpper(strings.TrimSpace(s)), "B"):
		// No instance runs in less than a mebibyte: a small number with no
		// unit at all is a forgotten unit ("1B" says bytes on purpose).
		return 0, fmt.Errorf("memory %s means %s bytes; write a unit, such as %sG", quote(s), m[1], m[1])
	}
	return int64(bytes), nil
}

// FormatMemory writes bytes in the largest unit that keeps it readable.
func FormatMemory(b int64) string {
	for _, u := range []struct {
		shift int
		name  string
	}{{40, "T"}, {30, "G"}, {20, "M"}, {10, "K"}} {
		if b >= 1<<u.shift && b%(1<<(u.shift-10)) == 0 {
			v := float64(b) / float64(int64(1)<<u.shift)
			return strconv.FormatFloat(v, 'f', -1, 64) + u.name
		}
	}
	return strconv.FormatInt(b, 10) + " bytes"
}

// resourceField decodes gpus, memory and resources.
func (d *decoder) resourceField(j *Job, key string, v ast.Node, at pos) bool {
	var ok bool
	switch key {
	case "gpus":
		j.GPUs, ok = d.integer(key, v, at)
	case "memory":
		var text string
		switch x := v.(type) {
		case *ast.IntegerNode, *ast.StringNode, *ast.FloatNode:
			text, _ = scalar(x)
		default:
			d.r.at(at, "memory must be an amount such as 4G, 512M or 1073741824 (bytes), got %s", describe(v))
			return false
		}
		n, err := ParseMemory(text)
		if err != nil {
			d.r.at(at, "%v", err)
			return false
		}
		j.Memory, ok = n, true
	case "resources":
		j.Resources, ok = d.resources(v, at)
	}
	return ok
}

// resources decodes a mapping of resource names to whole amounts; null is
// none. Entries in error are reported at their place and left out.
func (d *decoder) resources(v ast.Node, at pos) (map[string]int64, bool) {
	m, ok := d.mapping(v, at, "resources must be a mapping of NAME: amount, such as {license: 1}")
	if m == nil {
		return nil, ok
	}
	out := make(map[string]int64)
	for _, e := range d.entries(m) {
		if !d.spend(e.keyAt) {
			return out, false
		}
		if !topology.ResourceNameOK(e.key) {
			d.r.at(e.keyAt, "resource name %s %s", quote(e.key), topology.ResourceNameRule)
			continue
		}
		val := d.resolve(e.value)
		if val == nil {
			continue
		}
		n, ok := d.integer("resources "+e.key, val, d.valuePos(e))
		if ok {
			out[e.key] = int64(n)
		}
	}
	return out, true
}

// checkResources checks gpus, memory and resources of a job built in code
// (a file's were checked as they were decoded).
func (j *Job) checkResources(r *reporter, l *locs) {
	if l.ok("gpus") {
		if msg := rangeMsg("gpus", int64(j.GPUs), 0, maxGPUs, strconv.Itoa(j.GPUs)); msg != "" {
			r.at(l.val("gpus"), "%s", msg)
		}
	}
	if j.Memory < 0 {
		r.at(l.val("memory"), "memory must be above zero, got %d", j.Memory)
	}
	for _, k := range slices.Sorted(maps.Keys(j.Resources)) {
		switch n := j.Resources[k]; {
		case !topology.ResourceNameOK(k):
			r.at(l.val("resources"), "resource name %s %s", quote(k), topology.ResourceNameRule)
		case n < 0 || n > maxResource:
			r.at(l.val("resources"), "resources %s must be a whole number from 0 to %d, got %d", k, maxResource, n)
		}
	}
}

const maxResource = 1 << 40
