package jobfile

import (
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/goccy/go-yaml/ast"
)

// Sweeps: a job with a matrix or params runs one instance per set of
// parameter values. Instance i of a matrix takes the combination that
// nested loops over the axes would reach i-th, the first axis outermost
// and the last one changing fastest; instance i of params takes the
// table's row i (the first row after the header is 0). Either way the
// instance is named like a repeated one ("sim.3"; "sim" when there is
// just one), {NAME} is replaced by the value in command, shell and setup,
// and the instance's environment has DROVER_PARAM_NAME (upper-cased).
// repeat does not combine with either: replicas are one more axis, such
// as seed: [1, 2, 3].

// Axis is one key of a matrix: a parameter and its values.
type Axis struct {
	Name   string
	Values []string
}

// Table is a params table: a CSV file whose header names the parameters
// and whose rows are their values, one instance per row.
type Table struct {
	File  string // as written in the job file
	Names []string
	Rows  [][]string
}

// Param is one parameter's value for an instance.
type Param struct{ Name, Value string }

// EnvName is the environment variable that carries the parameter.
func (p Param) EnvName() string { return "DROVER_PARAM_" + strings.ToUpper(p.Name) }

// ParamNames lists the job's sweep parameters in order; nil without a
// sweep.
func (j *Job) ParamNames() []string {
	if j.Params != nil {
		return j.Params.Names
	}
	var out []string
	for _, a := range j.Matrix {
		out = append(out, a.Name)
	}
	return out
}

// ParamsOf gives the sweep parameters of instance i; nil without a sweep.
func (j *Job) ParamsOf(i int) []Param {
	if t := j.Params; t != nil {
		if i < 0 || i >= len(t.Rows) {
			return nil
		}
		out := make([]Param, len(t.Names))
		for k, n := range t.Names {
			out[k] = Param{n, t.Rows[i][k]}
		}
		return out
	}
	if len(j.Matrix) == 0 {
		return nil
	}
	out := make([]Param, len(j.Matrix))
	for a := len(j.Matrix) - 1; a >= 0; a-- {
		ax := j.Matrix[a]
		n := max(len(ax.Values), 1)
		v := ""
		if len(ax.Values) > 0 {
			v = ax.Values[i%n]
		}
		out[a] = Param{ax.Name, v}
		i /= n
	}
	return out
}

// sweepSize is the number of instances the sweep makes, at most
// maxRepeat+1 (too many); 0 without a sweep.
func (j *Job) sweepSize() int {
	if j.Params != nil {
		return min(len(j.Params.Rows), maxRepeat+1)
	}
	if j.Matrix == nil {
		return 0
	}
	n := 1
	for _, a := range j.Matrix {
		n = min(n*len(a.Values), maxRepeat+1)
	}
	return n
}

// longestParams gives each parameter its longest value, for bounding the
// size of any instance's argv and env.
func (j *Job) longestParams() []Param {
	var out []Param
	if t := j.Params; t != nil {
		for k, n := range t.Names {
			p := Param{Name: n}
			for _, row := range t.Rows {
				if len(row[k]) > len(p.Value) {
					p.Value = row[k]
				}
			}
			out = append(out, p)
		}
		return out
	}
	for _, a := range j.Matrix {
		p := Param{Name: a.Name}
		for _, v := range a.Values {
			if len(v) > len(p.Value) {
				p.Value = v
			}
		}
		out = append(out, p)
	}
	return out
}

// matrix decodes the matrix mapping; its problems of type are reported
// here, the rest by checkSweep.
func (d *decoder) matrix(l *locs, v ast.Node, at pos) ([]Axis, bool) {
	m, ok := v.(*ast.MappingNode)
	if !ok {
		d.r.at(at, "matrix must be a mapping of parameter names to lists of values, such as {x: [1, 2, 3], y: [a, b]}, got %s", describe(v))
		return nil, false
	}
	// An axis with a bad value is kept, marked bad, so that the others
	// are checked at the right indexes.
	axes := []Axis{}
	for i, e := range d.entries(m) {
		if !d.spend(e.keyAt) {
			return axes, false
		}
		vat := d.valuePos(e)
		ax := Axis{Name: e.key}
		var ps []pos
		ok := true
		switch s := d.resolve(e.value).(type) {
		case nil:
			ok = false
		case *ast.SequenceNode:
			for k, item := range s.Values {
				iat := d.pos(item, vat)
				if !d.spend(iat) {
					return axes, false
				}
				iv := d.resolve(item)
				if iv == nil {
					ok = false
					continue
				}
				text, isScalar := scalar(iv)
				if !isScalar {
					d.r.at(iat, "matrix %s[%d] must be text or a number, got %s", e.key, k, describe(iv))
					ok = false
					continue
				}
				ax.Values = append(ax.Values, text)
				ps = append(ps, iat)
			}
		default:
			d.r.at(vat, "matrix %s must be a list of values, such as [1, 2, 3], got %s", e.key, describe(s))
			ok = false
		}
		if !ok {
			l.bad[slot{"matrix", i}] = true
		}
		axes = append(axes, ax)
		l.axes = append(l.axes, e.keyAt)
		l.axisVals = append(l.axisVals, ps)
	}
	return axes, true
}

// checkSweep checks matrix and params and sets Repeat to the number of
// instances they make.
func (j *Job) checkSweep(r *reporter, l *locs) {
	hasMatrix := j.Matrix != nil || l.given("matrix")
	hasParams := j.Params != nil || l.given("params")
	if !hasMatrix && !hasParams {
		return
	}
	if hasMatrix && hasParams {
		at := l.val("params")
		if at.before(l.val("matrix")) {
			at = l.val("matrix")
		}
		r.at(at, "give either matrix or params, not both")
		return
	}
	key := "matrix"
	if hasParams {
		key = "params"
	}
	if l.given("repeat") || (l.vals == nil && j.Repeat > 1 && j.Repeat != j.sweepSize()) {
		r.at(l.val("repeat"), "repeat does not go with %s: for replicas, add a parameter such as seed: [1, 2, 3] to the matrix", key)
	}
	if !l.ok(key) {
		return
	}
	if hasMatrix {
		if len(j.Matrix) == 0 {
			r.at(l.val("matrix"), "matrix must name at least one parameter, such as {x: [1, 2, 3]}")
			return
		}
		names := make([]string, len(j.Matrix))
		for i, a := range j.Matrix {
			names[i] = a.Name
		}
		bad := checkParamNames(r, names, func(i int) pos { return l.axis(i) }, func(i int) string { return "matrix key" })
		complete := true
		for i, a := range j.Matrix {
			if !l.itemOK("matrix", i) {
				complete = false
				continue
			}
			if bad[i] {
				continue
			}
			if len(a.Values) == 0 {
				r.at(l.axis(i), "matrix %s has no values: give at least one, such as %s: [1, 2]", a.Name, a.Name)
				continue
			}
			first := make(map[string]int)
			for k, v := range a.Values {
				if strings.ContainsRune(v, 0) {
					r.at(l.axisVal(i, k), "matrix %s[%d] contains a NUL byte", a.Name, k)
				}
				if f, dup := first[v]; dup {
					r.at(l.axisVal(i, k), "matrix %s[%d] repeats the value %s of %s[%d]", a.Name, k, quote(v), a.Name, f)
					continue
				}
				first[v] = k
			}
		}
		if !complete {
			return // what is wrong was said; the number of instances is unknown
		}
	} else if j.Params.Names != nil {
		at := func(int) pos { return l.val("params") }
		checkParamNames(r, j.Params.Names, at, func(int) string { return "params " + j.Params.File + ": column" })
	}
	n := j.sweepSize()
	switch {
	case n == 0:
		// Reported: an empty axis or table.
	case n > maxRepeat:
		r.at(l.val(key), "%s makes more than %d instances, the most a job may have", key, maxRepeat)
	default:
		j.Repeat = n
	}
}

// checkParamNames checks parameter names: identifiers, not "index", and
// distinct in their environment variables. It reports what is bad.
func checkParamNames(r *reporter, names []string, at func(i int) pos, what func(i int) string) []bool {
	bad := make([]bool, len(names))
	first := make(map[string]string) // env name → the name that took it
	for i, n := range names {
		bad[i] = true
		switch {
		case !envRE.MatchString(n):
			r.at(at(i), `%s %s must be letters, digits and "_", not starting with a digit, so that {%s} can name it`, what(i), quote(n), n)
		case n == "index":
			r.at(at(i), "%s %q is taken: {index} is the instance's index", what(i), n)
		default:
			env := Param{Name: n}.EnvName()
			if prev, dup := first[env]; dup {
				r.at(at(i), "%s %s repeats %s: both would be %s", what(i), quote(n), quote(prev), env)
				continue
			}
			first[env] = n
			bad[i] = false
		}
	}
	return bad
}

// load reads the CSV file of t, relative to dir, reporting its
// problems at at (where params is in the job file).
func (t *Table) load(r *reporter, at pos, dir string) {
	if t.File == "" {
		r.at(at, "params must name a CSV file")
		return
	}
	if strings.ContainsRune(t.File, 0) {
		r.at(at, "params contains a NUL byte")
		return
	}
	p := t.File
	if !filepath.IsAbs(p) {
		p = filepath.Join(dir, p)
	}
	data, err := ReadFile(p)
	if err != nil {
		r.at(at, "params: %v", err)
		return
	}
	if len(data) > MaxFileBytes {
		r.at(at, "params %s is larger than %s; drover reads at most %s", t.File, SizeString(MaxFileBytes), SizeString(MaxFileBytes))
		return
	}
	cr := csv.NewReader(bytes.NewReader(bytes.TrimPrefix(data, []byte("\ufeff"))))
	cr.FieldsPerRecord = -1 // ragged rows are reported below, naming them
	cr.TrimLeadingSpace = true
	header, err := cr.Read()
	if errors.Is(err, io.EOF) {
		r.at(at, "params %s is empty: its first line must name the parameters, such as x,y", t.File)
		return
	}
	if err != nil {
		r.at(at, "params %s: %v", t.File, err)
		return
	}
	var rows [][]string
	ok := true
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			r.at(at, "params %s: %v", t.File, err)
			return
		}
		line, _ := cr.FieldPos(0)
		switch {
		case len(rec) != len(header):
			r.at(at, "params %s: the row on line %d has %d fields, the header has %d", t.File, line, len(rec), len(header))
			ok = false
		case strings.ContainsRune(strings.Join(rec, ""), 0):
			r.at(at, "params %s: the row on line %d contains a NUL byte", t.File, line)
			ok = false
		}
		rows = append(rows, rec)
		if len(rows) > maxRepeat {
			r.at(at, "params %s has more than %d rows, the most instances a job may have", t.File, maxRepeat)
			return
		}
	}
	if len(rows) == 0 {
		r.at(at, "params %s has a header but no rows: add one row of values per instance", t.File)
		return
	}
	if ok {
		t.Names, t.Rows = header, rows
	}
}

// SweepString describes the sweep for a plan: "matrix x(3) × y(2)" or
// "params sweep.csv (4 rows)"; "" without one.
func (j *Job) SweepString() string {
	if t := j.Params; t != nil {
		return fmt.Sprintf("params %s (%d rows: %s)", t.File, len(t.Rows), strings.Join(t.Names, ", "))
	}
	var parts []string
	for _, a := range j.Matrix {
		parts = append(parts, fmt.Sprintf("%s(%d)", a.Name, len(a.Values)))
	}
	if len(parts) == 0 {
		return ""
	}
	return "matrix " + strings.Join(parts, " × ")
}
