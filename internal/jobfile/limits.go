package jobfile

import (
	"fmt"
	"sort"
)

// Limits on a job file and on what it asks for. The YAML parser's memory
// and time grow with the nesting depth times the input (its node paths are
// strings rebuilt at every level), and with a large constant per byte: a
// cheap linear pre-scan refuses deep or large files before the parser
// sees them.
const (
	// MaxFileBytes is the largest job file read: parsing takes some 30
	// times its size in memory.
	MaxFileBytes = 8 << 20
	// MaxDepth is the deepest nesting of collections; a job file needs
	// about 6.
	MaxDepth = 64
	// MaxArgsEnvBytes bounds one instance's argv and env, as execve counts
	// them (each string and its NUL; env as NAME=value). It keeps a start
	// well inside the 4 MiB gRPC messages that carry it to a node, with
	// room for the rest of the command, and below Linux's usual 2 MiB for
	// argv and environment together.
	MaxArgsEnvBytes = 1 << 20
	// MaxInstances bounds the instances of a whole file: the queue keeps
	// a small record of each one that ends.
	MaxInstances = maxRepeat
	// maxShown is how many problems an Errors lists; the rest are counted.
	maxShown = 20
)

// ArgsEnvBytes is the size of args and env as execve counts them.
func ArgsEnvBytes(args []string, env map[string]string) int {
	n := 0
	for _, a := range args {
		n += len(a) + 1
	}
	for k, v := range env {
		n += len(k) + len(v) + 2
	}
	return n
}

// SizeString gives a byte count for messages: "3.2 MiB".
func SizeString(n int) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}

// prescan finds what would make the parser's work grow faster than the
// input: nesting deeper than MaxDepth. It reads the YAML loosely, in one
// pass, and errs on the side of counting too deep: flow collections ([ {)
// count where they can begin a value, block collections count by
// indentation and by "- " and "? " entries on one line. Quoted text,
// comments and block scalars (| and >) are skipped, so brackets in
// commands do not count.
func prescan(data []byte) (at pos, msg string) {
	var (
		line, col   = 1, 0
		indents     []int // indentation of the enclosing block lines
		flow        int   // open flow collections
		compact     int   // "- " and "? " entries on this line
		indent      int   // this line's indentation
		lineStart   = true
		start       = true // a value may begin here
		quote       byte   // in a quoted scalar: its quote
		comment     bool
		blockScalar = -1 // skipping a block scalar's lines indented beyond this
		scalarNext  bool // a | or > was seen on this line
	)
	depth := func() int { return len(indents) + compact + flow }
	for i := 0; i < len(data); i++ {
		c := data[i]
		if c&0xC0 != 0x80 {
			col++
		}
		if c == '\n' {
			if scalarNext && flow == 0 {
				blockScalar = indent
			}
			line, col, lineStart, start, comment, compact, scalarNext = line+1, 0, true, true, false, 0, false
			indent = 0
			continue
		}
		if comment {
			continue
		}
		if lineStart {
			if c == ' ' || c == '\t' || c == '\r' {
				indent++
				continue
			}
			lineStart = false
			if blockScalar >= 0 {
				if indent > blockScalar {
					comment = true // block scalar text: skip the line
					continue
				}
				blockScalar = -1
			}
			if quote == 0 && flow == 0 && c != '#' {
				for len(indents) > 0 && indents[len(indents)-1] >= indent {
					indents = indents[:len(indents)-1]
				}
				indents = append(indents, indent)
				if depth() > MaxDepth {
					return pos{line, col}, fmt.Sprintf("nesting deeper than %d levels", MaxDepth)
				}
			}
		}
		if quote != 0 {
			switch {
			case quote == '"' && c == '\\':
				i++ // the escaped character, never a newline that matters here
			case c == quote:
				if quote == '\'' && i+1 < len(data) && data[i+1] == '\'' {
					i++
				} else {
					quote, start = 0, false
				}
			}
			continue
		}
		space := i+1 == len(data) || data[i+1] == ' ' || data[i+1] == '\n' || data[i+1] == '\t' || data[i+1] == '\r'
		switch {
		case c == ' ' || c == '\t' || c == '\r':
			continue
		case c == '#' && (i == 0 || data[i-1] == ' ' || data[i-1] == '\t' || data[i-1] == '\n'):
			comment = true
		case start && (c == '"' || c == '\''):
			quote = c
		case (c == '[' || c == '{') && (start || flow > 0):
			flow++
			start = true
			if depth() > MaxDepth {
				return pos{line, col}, fmt.Sprintf("nesting deeper than %d levels", MaxDepth)
			}
		case (c == ']' || c == '}') && flow > 0:
			flow--
			start = false
		case c == ',' && flow > 0:
			start = true
		case start && flow == 0 && (c == '-' || c == '?') && space:
			compact++
			if depth() > MaxDepth {
				return pos{line, col}, fmt.Sprintf("nesting deeper than %d levels", MaxDepth)
			}
		case c == ':' && (space || flow > 0):
			start = true
		case start && (c == '&' || c == '!'):
			// An anchor or tag comes before the value: skip its name.
			for i+1 < len(data) && data[i+1] != ' ' && data[i+1] != '\n' && data[i+1] != '\t' && (flow == 0 || !isFlowIndicator(data[i+1])) {
				i++
				col++
			}
		case start && flow == 0 && (c == '|' || c == '>'):
			scalarNext = true
			start = false
		default:
			start = false
		}
	}
	return pos{}, ""
}

func isFlowIndicator(c byte) bool {
	return c == '[' || c == ']' || c == '{' || c == '}' || c == ','
}

// report adds e to r's errors, keeping the maxShown earliest in the file
// and counting the rest.
func (r *reporter) keep(e *Error) {
	if len(r.errs) < maxShown {
		r.errs = append(r.errs, e)
		return
	}
	r.more++
	last := 0
	for i, k := range r.errs {
		if (pos{r.errs[last].Line, r.errs[last].Col}).before(pos{k.Line, k.Col}) {
			last = i
		}
	}
	if (pos{e.Line, e.Col}).before(pos{r.errs[last].Line, r.errs[last].Col}) {
		r.errs[last] = e
	}
}

// sorted returns the kept problems in file order, followed by a line that
// counts the ones left out.
func (r *reporter) sorted() Errors {
	sort.SliceStable(r.errs, func(a, b int) bool {
		ea, eb := r.errs[a], r.errs[b]
		return pos{ea.Line, ea.Col}.before(pos{eb.Line, eb.Col})
	})
	if r.more == 0 {
		return r.errs
	}
	what := "problems"
	if r.more == 1 {
		what = "problem"
	}
	return append(r.errs, &Error{File: r.file, Msg: fmt.Sprintf("and %d more %s", r.more, what)})
}
