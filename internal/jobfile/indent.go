package jobfile

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/goccy/go-yaml"
)

// indentError explains a YAML syntax error that a mis-indented line
// caused, at that line and in terms of the keys around it, and reports
// true; it reports false, saying nothing, when it finds no such line.
// The parser only says "value is not allowed in this context", often on
// the line before the culprit (a line indented too deep continues the
// value above it).
func indentError(r *reporter, data []byte, err error) bool {
	parserLine := 0 // unknown: accept a culprit anywhere
	var ye yaml.Error
	if errors.As(err, &ye) {
		if tk := ye.GetToken(); tk != nil && tk.Position != nil {
			parserLine = tk.Position.Line
		}
	}
	p, msg, ok := findIndentProblem(string(data))
	// The culprit is at or before where the parser stopped, or just after
	// it when the line above took it for a continuation of its value.
	if !ok || parserLine > 0 && p.line > parserLine+1 {
		return false
	}
	r.at(p, "%s", msg)
	return true
}

// frame is an open block collection while scanning: a mapping whose keys
// start at col, or a sequence whose dashes are at col.
type frame struct {
	col    int
	seq    bool
	desc   string // "the keys of job \"sim\"", "the items of jobs"
	key    string // the mapping's last key, or the key holding the sequence
	open   bool   // the last key or item has no value on its line: a block may follow, deeper
	items  int    // a sequence's items so far
	parent *frame
	isJob  bool // a mapping that is an item of the top-level jobs
}

// findIndentProblem scans the block structure of a YAML text line by line
// and returns the first line whose indentation fits no open block. It
// understands the block YAML job files are written in (keys, "- " items,
// block scalars, values on one line) and gives up, finding nothing, at
// anything else.
func findIndentProblem(text string) (pos, string, bool) {
	var stack []*frame
	top := func() *frame {
		if len(stack) == 0 {
			return nil
		}
		return stack[len(stack)-1]
	}
	push := func(f *frame) *frame {
		f.parent = top()
		f.describe()
		stack = append(stack, f)
		return f
	}
	scalarAbove := -1 // in a block scalar: its lines are deeper than this
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSuffix(line, "\r")
		lineNo := n + 1
		body := strings.TrimLeft(line, " \t")
		lead := line[:len(line)-len(body)]
		indent := len(lead)
		if scalarAbove >= 0 {
			if body == "" || !strings.Contains(lead, "\t") && indent > scalarAbove {
				continue
			}
			scalarAbove = -1
		}
		if body == "" || body[0] == '#' || n == 0 && strings.HasPrefix(line, "---") {
			continue
		}
		if strings.Contains(lead, "\t") {
			msg := "this line is indented with a tab, but YAML indents with spaces only"
			if f := innermostMapping(top()); f != nil {
				msg += fmt.Sprintf(" (%s above are indented %s)", f.desc, spaces(f.col))
			}
			return pos{lineNo, 1}, msg, true
		}

		// Where does this line go: a new block below an open key or item,
		// or the next key or item of an open block?
		dash := isDash(body)
		t := top()
		switch {
		case t == nil || t.open && (indent > t.col || !t.seq && dash && indent == t.col):
			push(&frame{col: indent, seq: dash})
		default:
			i := len(stack) - 1
			for ; i >= 0 && stack[i].col > indent; i-- {
			}
			switch {
			case i >= 0 && stack[i].col == indent && stack[i].seq == dash:
				stack = stack[:i+1]
			case indent > t.col && !dash && !t.seq && !isKey(body):
				continue // a plain value going on over several lines
			case i >= 0 && stack[i].col == indent && !stack[i].seq && !slices.ContainsFunc(stack[i+1:], func(f *frame) bool { return f.seq }):
				return pos{}, "", false // an item where keys are, and no list it could belong to
			default:
				return pos{lineNo, indent + 1}, misplaced(stack, indent, dash), true
			}
		}

		// Read the line: the dashes of (nested) items, then a key or a value.
		col, rest := indent, body
		for isDash(rest) {
			seq := top()
			if !seq.seq || seq.col != col {
				seq = push(&frame{col: col, seq: true})
			}
			seq.items++
			skip := 1 + len(rest[1:]) - len(strings.TrimLeft(rest[1:], " "))
			col, rest = col+skip, stripComment(rest[skip:])
			seq.open = rest == ""
			switch {
			case rest == "":
			case rest[0] == '|' || rest[0] == '>':
				scalarAbove = seq.col
				rest = ""
			case !isDash(rest) && isKey(rest):
				push(&frame{col: col})
			case !isDash(rest):
				if unbalanced(rest) {
					return pos{}, "", false // a flow value over several lines
				}
				rest = "" // a value
			}
		}
		if rest == "" {
			continue
		}
		key, value, ok := splitKey(rest)
		m := top()
		if !ok || m.seq {
			return pos{}, "", false // not a block we understand
		}
		value = stripComment(value)
		m.key, m.open = key, value == ""
		if key == "name" && m.isJob && value != "" {
			m.desc = fmt.Sprintf("the keys of job %q", strings.Trim(value, `"'`))
		}
		switch {
		case strings.HasPrefix(value, "|") || strings.HasPrefix(value, ">"):
			scalarAbove = m.col
		case unbalanced(value):
			return pos{}, "", false // a flow value over several lines
		}
	}
	return pos{}, "", false
}

func isDash(s string) bool { return s == "-" || strings.HasPrefix(s, "- ") }

func isKey(s string) bool { _, _, ok := splitKey(s); return ok }

// describe names the block for messages, after the key that holds it.
func (f *frame) describe() {
	p := f.parent
	switch {
	case p == nil && f.seq:
		f.desc = "the top-level items"
	case p == nil:
		f.desc = "the top-level keys"
	case f.seq:
		f.key = p.key
		f.desc = fmt.Sprintf("the items of %q", p.key)
	case p.seq && p.parent == nil:
		f.desc = "the keys of the item"
	case p.seq:
		f.isJob = p.key == "jobs" && p.parent.parent == nil
		f.desc = fmt.Sprintf("the keys of %s[%d]", p.key, p.items-1)
		if f.isJob {
			f.desc = fmt.Sprintf("the keys of job %d", p.items)
		}
	default:
		f.desc = fmt.Sprintf("the keys of %q", p.key)
	}
}

// misplaced says why a line indented indent fits none of the open blocks.
func misplaced(stack []*frame, indent int, dash bool) string {
	msg := fmt.Sprintf("this line is indented %s, but", spaces(indent))
	t := stack[len(stack)-1]
	if indent > t.col {
		f := innermostMapping(t)
		if f == nil {
			f = t
		}
		msg += fmt.Sprintf(" %s above are indented %s", f.desc, spaces(f.col))
		if !t.seq && t.key != "" {
			msg += fmt.Sprintf(", and %q has its value on its line, so nothing can go below it", t.key)
		}
		return msg
	}
	// Between two levels: name the one above and the one below.
	// The one above: the nearest of the kind the line is (an item or a
	// key), else the shallowest deeper one.
	var inner, outer, like *frame
	for i := len(stack) - 1; i >= 0; i-- {
		if stack[i].col > indent {
			inner = stack[i]
			if like == nil && stack[i].seq == dash {
				like = stack[i]
			}
		} else {
			outer = stack[i]
			break
		}
	}
	switch {
	case like != nil:
		inner = like
	case inner == nil: // level with a block of the other kind
		inner, outer = outer, nil
	}
	msg += fmt.Sprintf(" %s above are indented %s", inner.desc, spaces(inner.col))
	if outer != nil && outer.col != indent {
		msg += fmt.Sprintf(" and %s %s", outer.desc, spaces(outer.col))
	}
	return msg
}

func innermostMapping(f *frame) *frame {
	for ; f != nil; f = f.parent {
		if !f.seq {
			return f
		}
	}
	return nil
}

func spaces(n int) string {
	if n == 1 {
		return "1 space"
	}
	return fmt.Sprintf("%d spaces", n)
}

// splitKey splits "key: value" (the key plain or quoted); ok is false for
// a line that is no key.
func splitKey(s string) (key, value string, ok bool) {
	if s == "" || strings.ContainsRune("[{&*!|>%@`", rune(s[0])) {
		return "", "", false
	}
	if q := s[0]; q == '"' || q == '\'' {
		end := strings.IndexByte(s[1:], q)
		if end < 0 {
			return "", "", false
		}
		key, s = s[1:end+1], s[end+2:]
		if !strings.HasPrefix(s, ":") || len(s) > 1 && s[1] != ' ' {
			return "", "", false
		}
		return key, strings.TrimSpace(s[1:]), true
	}
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '#' && i > 0 && s[i-1] == ' ':
			return "", "", false
		case s[i] == ':' && (i+1 == len(s) || s[i+1] == ' '):
			return strings.TrimSpace(s[:i]), strings.TrimSpace(s[i+1:]), true
		}
	}
	return "", "", false
}

// stripComment drops a trailing " # comment" outside quotes.
func stripComment(v string) string {
	var quote byte
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '#' && (i == 0 || v[i-1] == ' '):
			return strings.TrimSpace(v[:i])
		}
	}
	return v
}

// unbalanced reports whether a value opens a flow collection or a quoted
// string that goes on past its line.
func unbalanced(v string) bool {
	depth := 0
	var quote byte
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			if i == 0 || strings.ContainsRune(" [{,:", rune(v[i-1])) {
				quote = c
			}
		case c == '[' || c == '{':
			depth++
		case c == ']' || c == '}':
			depth--
		}
	}
	return depth > 0 || quote != 0
}
