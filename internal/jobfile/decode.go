package jobfile

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
	"github.com/goccy/go-yaml/token"
)

// The keys of a job, in the order the contract lists them.
const jobKeys = "name command shell repeat cores env files outputs setup ports retries timeout node workdir" +
	" gpus memory resources after max_running matrix params"

// locs records where a job's values are in its file, for the checks in
// check.go, which also run on jobs built in code where every map is nil and
// every position is the job's.
type locs struct {
	job   pos
	vals  map[string]pos   // value of each key given
	items map[string][]pos // items of list values
	keys  map[string]pos   // env names
	// axes and axisVals are the matrix keys and their values.
	axes     []pos
	axisVals [][]pos
	// bad holds the values and list items that could not be decoded, and
	// so were reported already.
	bad map[slot]bool
}

// slot names a key's value (i < 0) or one item of its list.
type slot struct {
	key string
	i   int
}

func (l *locs) given(key string) bool { _, ok := l.vals[key]; return ok }

func (l *locs) ok(key string) bool { return !l.bad[slot{key, -1}] }

func (l *locs) itemOK(key string, i int) bool { return !l.bad[slot{key, i}] }

func (l *locs) val(key string) pos {
	if p, ok := l.vals[key]; ok {
		return p
	}
	return l.job
}

func (l *locs) item(key string, i int) pos {
	if ps := l.items[key]; i < len(ps) {
		return ps[i]
	}
	return l.val(key)
}

func (l *locs) envKey(name string) pos {
	if p, ok := l.keys[name]; ok {
		return p
	}
	return l.val("env")
}

func (l *locs) axis(i int) pos {
	if i < len(l.axes) {
		return l.axes[i]
	}
	return l.val("matrix")
}

func (l *locs) axisVal(i, k int) pos {
	if i < len(l.axisVals) && k < len(l.axisVals[i]) {
		return l.axisVals[i][k]
	}
	return l.axis(i)
}

func itemName(key string, i int) string { return fmt.Sprintf("%s[%d]", key, i) }

// decoder turns the YAML syntax tree into jobs, reporting what does not fit.
type decoder struct {
	*source
	r *reporter
	// targets maps each alias to the node its anchor names.
	targets map[*ast.AliasNode]ast.Node
	// merged memoizes the entries of mappings, so that merge keys reached
	// through aliases many times cost once.
	merged map[*ast.MappingNode][]entry
	// budget bounds the values decoded: aliases let a small file name a
	// huge number of values (the "billion laughs").
	budget int
}

// entry is one key of a mapping, merge keys resolved.
type entry struct {
	key   string
	keyAt pos
	value ast.Node // as written: alias or anchor, for its position
}

// parse decodes and checks the job file data; problems go to r.
func parse(r *reporter, data []byte, dir string) []Job {
	// A byte order mark is valid YAML but would otherwise read as part of
	// the first key.
	data = bytes.TrimPrefix(data, []byte("\ufeff"))
	t := newSource(data)
	f, err := parser.ParseBytes(data, 0, parser.AllowDuplicateMapKey())
	if err != nil {
		if !indentError(r, data, err) { // see indent.go
			t.syntaxError(r, err)
		}
		return nil
	}
	var body ast.Node
	for _, doc := range f.Docs {
		if doc == nil || doc.Body == nil {
			continue
		}
		if body != nil {
			r.at(t.pos(doc.Body, pos{1, 1}), "a job file holds one YAML document: remove this one or merge it into the first")
			continue
		}
		body = doc.Body
	}
	if body == nil {
		r.at(pos{1, 1}, `the file is empty: want a mapping with a "jobs" list`)
		return nil
	}

	d := &decoder{
		source:  t,
		r:       r,
		targets: make(map[*ast.AliasNode]ast.Node),
		merged:  make(map[*ast.MappingNode][]entry),
		budget:  len(data) + 1<<20,
	}
	d.anchors(body, make(map[string]ast.Node))

	jobs, ls := d.file(body)
	for i := range jobs {
		j, l := &jobs[i], ls[i]
		if l.ok("workdir") && j.Workdir != "" && !filepath.IsAbs(j.Workdir) {
			j.Workdir = filepath.Join(dir, j.Workdir)
		}
		if j.Params != nil && l.ok("params") {
			j.Params.load(r, l.val("params"), dir)
		}
		j.check(r, l)
	}
	checkNames(r, jobs, ls)
	checkAfter(r, jobs, ls)
	checkTotal(r, jobs, ls)
	return jobs
}

// syntaxError reports a parser error at its position.
func (t *source) syntaxError(r *reporter, err error) {
	var ye yaml.Error
	if !errors.As(err, &ye) {
		r.at(pos{}, "invalid YAML: %v", err)
		return
	}
	var at pos // the file as a whole, unless the parser says where
	if tk := ye.GetToken(); tk != nil {
		at, _ = t.tokenPos(tk.Position)
	}
	r.at(at, "invalid YAML: %s", ye.GetMessage())
}

// source maps the parser's token positions to the lines and columns users
// see. The parser miscounts columns on lines with tabs (common in JSON),
// but its offsets are right: on such lines the column is taken from the
// offset.
type source struct {
	starts []int  // offset in runes of each line's start
	tabs   []bool // whether each line has a tab
}

func newSource(data []byte) *source {
	t := &source{starts: []int{0}, tabs: []bool{false}}
	i := 0
	for _, c := range string(data) {
		i++
		switch c {
		case '\n':
			t.starts = append(t.starts, i)
			t.tabs = append(t.tabs, false)
		case '\t':
			t.tabs[len(t.tabs)-1] = true
		}
	}
	return t
}

// tokenPos converts a parser position; ok is false when there is none.
func (t *source) tokenPos(p *token.Position) (at pos, ok bool) {
	if p == nil || p.Line < 1 {
		return pos{}, false
	}
	at = pos{p.Line, max(p.Column, 1)}
	if p.Line > len(t.starts) || !t.tabs[p.Line-1] {
		return at, true
	}
	start, end := t.starts[p.Line-1], math.MaxInt
	if p.Line < len(t.starts) {
		end = t.starts[p.Line]
	}
	// Offset counts runes from 1.
	if o := p.Offset - 1; o >= start && o < end {
		at.col = o - start + 1
	}
	return at, true
}

// pos is where n starts in the file, or fallback when unknown.
func (t *source) pos(n ast.Node, fallback pos) pos {
	// A block mapping's token is the ':' after its first key; users see the
	// mapping start at that key.
	if m, ok := n.(*ast.MappingNode); ok && !m.IsFlowStyle && len(m.Values) > 0 && m.Values[0].Key != nil {
		n = m.Values[0].Key
	}
	if n == nil {
		return fallback
	}
	tk := n.GetToken()
	if tk == nil {
		return fallback
	}
	if p, ok := t.tokenPos(tk.Position); ok {
		return p
	}
	return fallback
}

// valuePos is where the value of e is, or its key when the value is left
// out: the parser places an implied null oddly, and the key is what the
// user will look for.
func (t *source) valuePos(e entry) pos {
	if n, ok := e.value.(*ast.NullNode); ok && n.Token != nil && n.Token.Type == token.ImplicitNullType {
		return e.keyAt
	}
	return t.pos(e.value, e.keyAt)
}

// anchors links every alias in n to its anchor's node, in document order.
// An anchor is recorded only after its own node is walked, so an alias
// inside the node it would name is unknown: aliases only reach finished
// nodes and the tree with aliases followed stays acyclic.
func (d *decoder) anchors(n ast.Node, defined map[string]ast.Node) {
	switch n := n.(type) {
	case *ast.MappingNode:
		for _, v := range n.Values {
			d.anchors(v, defined)
		}
	case *ast.MappingValueNode:
		d.anchors(n.Key, defined)
		d.anchors(n.Value, defined)
	case *ast.MappingKeyNode:
		d.anchors(n.Value, defined)
	case *ast.SequenceNode:
		for _, v := range n.Values {
			d.anchors(v, defined)
		}
	case *ast.TagNode:
		if !standardTag(n.Start.Value) {
			d.r.at(d.pos(n, pos{}), "unsupported tag %s", n.Start.Value)
		}
		d.anchors(n.Value, defined)
	case *ast.AnchorNode:
		d.anchors(n.Value, defined)
		if n.Value != nil {
			defined[n.Name.GetToken().Value] = n.Value
		}
	case *ast.AliasNode:
		name := n.Value.GetToken().Value
		if t, ok := defined[name]; ok {
			d.targets[n] = t
		} else {
			d.r.at(d.pos(n, pos{}), "alias *%s names no anchor &%s defined before it", name, name)
		}
	}
}

func standardTag(tag string) bool {
	switch tag {
	case "!!str", "!!int", "!!float", "!!bool", "!!null", "!!seq", "!!map":
		return true
	}
	return false
}

// resolve follows anchors, aliases and tags to the node that holds the
// value. It returns nil only for an unknown alias or an unsupported tag,
// which anchors reported already; a missing node is null.
func (d *decoder) resolve(n ast.Node) ast.Node {
	for {
		switch v := n.(type) {
		case nil:
			return &ast.NullNode{BaseNode: &ast.BaseNode{}}
		case *ast.AnchorNode:
			n = v.Value
		case *ast.AliasNode:
			t, ok := d.targets[v]
			if !ok {
				return nil
			}
			n = t
		case *ast.MappingKeyNode:
			n = v.Value
		case *ast.TagNode:
			if !standardTag(v.Start.Value) {
				return nil
			}
			n = d.resolve(v.Value)
			if v.Start.Value != "!!str" || n == nil {
				return n
			}
			// !!str makes any scalar text, as written; !!str alone is "".
			switch s := n.(type) {
			case *ast.NullNode:
				str := &ast.StringNode{BaseNode: &ast.BaseNode{}, Token: s.Token}
				if s.Token != nil && s.Token.Type != token.ImplicitNullType {
					str.Value = s.Token.Value
				}
				return str
			case *ast.StringNode, *ast.LiteralNode:
				return s
			}
			if text, ok := scalar(n); ok {
				return &ast.StringNode{BaseNode: &ast.BaseNode{}, Token: n.GetToken(), Value: text}
			}
			return n
		default:
			return n
		}
	}
}

// scalar returns the text of a scalar: strings after unquoting, numbers and
// booleans as written, so that 3 stays "3" rather than becoming 3.0.
func scalar(n ast.Node) (string, bool) {
	switch v := n.(type) {
	case *ast.StringNode:
		return v.Value, true
	case *ast.LiteralNode:
		if v.Value == nil {
			return "", true
		}
		return v.Value.Value, true
	case *ast.IntegerNode, *ast.FloatNode, *ast.BoolNode, *ast.InfinityNode, *ast.NanNode:
		return v.GetToken().Value, true
	}
	return "", false
}

// describe names a resolved value for a "got ..." in a message.
func describe(n ast.Node) string {
	switch n := n.(type) {
	case *ast.NullNode:
		return "nothing (null)"
	case *ast.MappingNode:
		return "a mapping"
	case *ast.SequenceNode:
		return "a list"
	case *ast.StringNode, *ast.LiteralNode:
		s, _ := scalar(n)
		return quote(s)
	}
	if s, ok := scalar(n); ok {
		return s
	}
	return "a " + n.Type().String()
}

// spend takes one value from the budget, reporting once when it runs out.
func (d *decoder) spend(at pos) bool {
	d.budget--
	if d.budget == -1 {
		d.r.at(at, "aliases expand the file to too many values")
	}
	return d.budget >= 0
}

// entries lists the keys of m, merge keys resolved: keys written in m win
// over merged ones, and earlier merged mappings over later ones.
func (d *decoder) entries(m *ast.MappingNode) []entry {
	if es, ok := d.merged[m]; ok {
		return es
	}
	var own, merged []entry
	first := make(map[string]pos)
	for _, mv := range m.Values {
		if mv == nil || mv.Key == nil {
			continue
		}
		if _, ok := mv.Key.(*ast.MergeKeyNode); ok {
			merged = append(merged, d.merge(mv.Value, d.pos(mv.Key, d.pos(m, pos{})))...)
			continue
		}
		at := d.pos(mv.Key, d.pos(m, pos{}))
		k := d.resolve(mv.Key)
		if k == nil {
			continue
		}
		key, ok := scalar(k)
		if !ok {
			d.r.at(at, "a key must be plain text, got %s", describe(k))
			continue
		}
		if p, dup := first[key]; dup {
			d.r.at(at, "duplicate key %s (first at line %d)", quote(key), p.line)
			continue
		}
		first[key] = at
		own = append(own, entry{key: key, keyAt: at, value: mv.Value})
	}
	for _, e := range merged {
		if _, ok := first[e.key]; !ok {
			first[e.key] = e.keyAt
			own = append(own, e)
		}
	}
	d.merged[m] = own
	return own
}

// merge returns the entries a merge key's value brings in.
func (d *decoder) merge(n ast.Node, at pos) []entry {
	const want = "a merge key (<<) takes a mapping or a list of mappings, such as *base"
	switch v := d.resolve(n).(type) {
	case nil:
		return nil
	case *ast.MappingNode:
		return d.entries(v)
	case *ast.SequenceNode:
		var out []entry
		for _, item := range v.Values {
			switch m := d.resolve(item).(type) {
			case nil:
			case *ast.MappingNode:
				out = append(out, d.entries(m)...)
			default:
				d.r.at(d.pos(item, at), "%s, got %s", want, describe(m))
			}
		}
		return out
	default:
		d.r.at(d.pos(n, at), "%s, got %s", want, describe(v))
		return nil
	}
}

// file decodes the top level: a mapping with a "jobs" list.
func (d *decoder) file(body ast.Node) ([]Job, []*locs) {
	at := d.pos(body, pos{1, 1})
	var m *ast.MappingNode
	switch v := d.resolve(body).(type) {
	case nil:
		return nil, nil
	case *ast.MappingNode:
		m = v
	case *ast.SequenceNode:
		d.r.at(at, `a job file is a mapping with a "jobs" list, got a list: put "jobs:" on a line before it`)
		return nil, nil
	default:
		d.r.at(at, `a job file is a mapping with a "jobs" list, got %s`, describe(v))
		return nil, nil
	}

	var list ast.Node
	var listAt pos
	for _, e := range d.entries(m) {
		if e.key != "jobs" {
			d.r.at(e.keyAt, "unknown key %s%s", quote(e.key), suggest(e.key, []string{"jobs"}))
			continue
		}
		list, listAt = e.value, d.valuePos(e)
	}
	if list == nil {
		d.r.at(at, `missing "jobs"`)
		return nil, nil
	}
	const want = `"jobs" must be a non-empty list of jobs`
	var items []ast.Node
	switch v := d.resolve(list).(type) {
	case nil:
		return nil, nil
	case *ast.SequenceNode:
		items = v.Values
	default:
		d.r.at(listAt, "%s, got %s", want, describe(v))
		return nil, nil
	}
	if len(items) == 0 {
		d.r.at(listAt, "%s, got an empty list", want)
		return nil, nil
	}

	var jobs []Job
	var ls []*locs
	for _, item := range items {
		at := d.pos(item, listAt)
		if !d.spend(at) {
			break
		}
		if j, l := d.job(item, at); l != nil {
			jobs = append(jobs, j)
			ls = append(ls, l)
		}
	}
	return jobs, ls
}

// job decodes one job mapping; a nil locs means it was no mapping at all.
func (d *decoder) job(n ast.Node, at pos) (Job, *locs) {
	j := Job{Line: at.line, Col: at.col}
	var m *ast.MappingNode
	switch v := d.resolve(n).(type) {
	case nil:
		return j, nil
	case *ast.MappingNode:
		m = v
	default:
		d.r.at(at, `a job must be a mapping with keys such as "name" and "command", got %s`, describe(v))
		return j, nil
	}
	l := &locs{
		job:   at,
		vals:  make(map[string]pos),
		items: make(map[string][]pos),
		keys:  make(map[string]pos),
		bad:   make(map[slot]bool),
	}
	for _, e := range d.entries(m) {
		if !slices.Contains(strings.Fields(jobKeys), e.key) {
			d.r.at(e.keyAt, "unknown key %s%s", quote(e.key), suggest(e.key, strings.Fields(jobKeys)))
			continue
		}
		vat := d.valuePos(e)
		l.vals[e.key] = vat
		if v := d.resolve(e.value); v == nil || !d.field(&j, l, e.key, v, vat) {
			l.bad[slot{e.key, -1}] = true
		}
	}
	return j, l
}

// field decodes the value v of key into j, reporting at at when the value
// has the wrong type; ranges and the like are left to check.
func (d *decoder) field(j *Job, l *locs, key string, v ast.Node, at pos) bool {
	ok := true
	switch key {
	case "name":
		j.Name, ok = d.text(key, v, at)
	case "command":
		if _, isNull := v.(*ast.NullNode); isNull {
			d.r.at(at, `command must be a non-empty list of arguments, such as [./sim, --seed, "{index}"], got nothing (null)`)
			return false
		}
		if s, isText := scalar(v); isText {
			d.r.at(at, `command must be a list of arguments, such as [./sim, --seed, "{index}"], got %s; use "shell" for a command line`, quote(s))
			return false
		}
		j.Command, ok = d.list(l, key, v, at, true)
	case "shell":
		j.Shell, ok = d.text(key, v, at)
	case "repeat":
		j.Repeat, ok = d.integer(key, v, at)
	case "cores":
		j.Cores, ok = d.integer(key, v, at)
	case "retries":
		var n int
		if n, ok = d.integer(key, v, at); ok {
			j.Retries = &n
		}
	case "timeout":
		j.Timeout, ok = d.duration(v, at)
	case "env":
		j.Env, ok = d.env(l, v, at)
	case "files":
		j.Files, ok = d.list(l, key, v, at, true)
	case "outputs":
		j.Outputs, ok = d.list(l, key, v, at, true)
	case "setup":
		j.Setup, ok = d.list(l, key, v, at, true)
	case "ports":
		j.Ports, ok = d.list(l, key, v, at, false)
	case "node":
		j.Node, ok = d.text(key, v, at)
	case "workdir":
		j.Workdir, ok = d.text(key, v, at)
	case "after":
		j.After, ok = d.list(l, key, v, at, true)
	case "max_running":
		j.MaxRunning, ok = d.integer(key, v, at)
	case "matrix":
		j.Matrix, ok = d.matrix(l, v, at)
	case "params":
		var file string
		if file, ok = d.text(key, v, at); ok {
			j.Params = &Table{File: file}
		}
	case "gpus", "memory", "resources":
		ok = d.resourceField(j, key, v, at)
	}
	return ok
}

// text decodes a scalar as text.
func (d *decoder) text(key string, v ast.Node, at pos) (string, bool) {
	s, ok := scalar(v)
	if !ok {
		d.r.at(at, "%s must be text, got %s", key, describe(v))
	}
	return s, ok
}

// list decodes a list of scalars; null is an empty list except for
// "command", which is required. Items that are not scalars are marked bad
// and left "", so the indexes of the rest stay right. numbers tells
// whether numeric items are taken as text.
func (d *decoder) list(l *locs, key string, v ast.Node, at pos, numbers bool) ([]string, bool) {
	var items []ast.Node
	switch s := v.(type) {
	case *ast.NullNode:
		return nil, true
	case *ast.SequenceNode:
		items = s.Values
	default:
		d.r.at(at, "%s must be a list, got %s", key, describe(v))
		return nil, false
	}
	out := make([]string, 0, len(items))
	ps := make([]pos, 0, len(items))
	for i, item := range items {
		iat := d.pos(item, at)
		if !d.spend(iat) {
			return out, false
		}
		out = append(out, "")
		ps = append(ps, iat)
		iv := d.resolve(item)
		if iv == nil {
			l.bad[slot{key, i}] = true
			continue
		}
		s, ok := scalar(iv)
		_, isString := iv.(*ast.StringNode)
		_, isLiteral := iv.(*ast.LiteralNode)
		switch {
		case !ok:
			if _, isNull := iv.(*ast.NullNode); isNull {
				d.r.at(iat, "%s is empty (null); quote it for text: \"\" or \"null\"", itemName(key, i))
			} else {
				d.r.at(iat, "%s must be text, got %s", itemName(key, i), describe(iv))
			}
			l.bad[slot{key, i}] = true
		case !numbers && !isString && !isLiteral:
			d.r.at(iat, "%s must be a port name, got %s: drover picks a free port for each name", itemName(key, i), s)
			l.bad[slot{key, i}] = true
		default:
			out[i] = s
		}
	}
	l.items[key] = ps
	return out, true
}

// mapping is v as a mapping; null is none (nil, true). Anything else is
// reported as "what, got ..." (nil, false).
func (d *decoder) mapping(v ast.Node, at pos, what string) (*ast.MappingNode, bool) {
	switch m := v.(type) {
	case *ast.NullNode:
		return nil, true
	case *ast.MappingNode:
		return m, true
	}
	d.r.at(at, "%s, got %s", what, describe(v))
	return nil, false
}

// env decodes the env mapping; null is an empty one. Names whose values
// are wrong are left out, having been reported.
func (d *decoder) env(l *locs, v ast.Node, at pos) (map[string]string, bool) {
	m, ok := d.mapping(v, at, "env must be a mapping of NAME: value")
	if m == nil {
		return nil, ok
	}
	env := make(map[string]string)
	for _, e := range d.entries(m) {
		if !d.spend(e.keyAt) {
			return env, false
		}
		l.keys[e.key] = e.keyAt
		vat := d.valuePos(e)
		val := d.resolve(e.value)
		if val == nil {
			continue
		}
		s, ok := scalar(val)
		if !ok {
			if _, isNull := val.(*ast.NullNode); isNull {
				d.r.at(vat, "env %s has no value; write %s: \"\" for an empty one", e.key, e.key)
			} else {
				d.r.at(vat, "env %s must be text, got %s", e.key, describe(val))
			}
			continue
		}
		env[e.key] = s
	}
	return env, true
}

// integer decodes a whole number within the limits of key, also from
// quoted digits.
func (d *decoder) integer(key string, v ast.Node, at pos) (int, bool) {
	min, max := limits(key)
	var n int64
	got := describe(v)
	switch x := v.(type) {
	case *ast.IntegerNode:
		got = x.GetToken().Value
		switch i := x.Value.(type) {
		case int64:
			n = i
		case uint64:
			n = math.MaxInt64
			if i <= math.MaxInt64 {
				n = int64(i)
			}
		}
	case *ast.StringNode:
		i, err := strconv.ParseInt(x.Value, 10, 64)
		switch {
		case err == nil:
			n = i
		case errors.Is(err, strconv.ErrRange):
			n = math.MaxInt64
			if strings.HasPrefix(x.Value, "-") {
				n = math.MinInt64
			}
		default:
			d.r.at(at, "%s must be a whole number >= %d, got %s", key, min, got)
			return 0, false
		}
	default:
		d.r.at(at, "%s must be a whole number >= %d, got %s", key, min, got)
		return 0, false
	}
	if msg := rangeMsg(key, n, min, max, got); msg != "" {
		d.r.at(at, "%s", msg)
		return 0, false
	}
	return int(n), true
}

// duration decodes a timeout: a Go duration or whole seconds, above zero.
func (d *decoder) duration(v ast.Node, at pos) (time.Duration, bool) {
	const maxSeconds = math.MaxInt64 / int64(time.Second)
	bad := func() (time.Duration, bool) {
		d.r.at(at, `timeout must be a duration above zero, such as "90s", "10m" or 3600 (seconds), got %s`, describe(v))
		return 0, false
	}
	var text string
	switch x := v.(type) {
	case *ast.IntegerNode:
		text = fmt.Sprint(x.Value)
	case *ast.StringNode:
		text = x.Value
	default:
		return bad()
	}
	if secs, err := strconv.ParseInt(text, 10, 64); err == nil {
		if secs <= 0 || secs > maxSeconds {
			return bad()
		}
		return time.Duration(secs) * time.Second, true
	}
	t, err := time.ParseDuration(text)
	if err != nil || t <= 0 {
		return bad()
	}
	return t, true
}
