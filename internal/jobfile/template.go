package jobfile

import (
	"strings"
)

// Placeholders in command, shell and setup text: {NAME}, where NAME is an
// identifier ([A-Za-z_][A-Za-z0-9_]*), is {index} or a sweep parameter;
// {port:NAME} is kept for the agent, which reserves the ports; {{ and }}
// write one brace. Every other brace is text, so that shell such as
// awk '{print $1}', ${HOME} or {a,b} passes as written: a "{" right after
// a "$" starts no placeholder, since ${NAME} is the shell's.

// placeholderLen is the length of the placeholder at the start of s
// (which starts with "{"), or 0 when none starts there. A port's name is
// taken loosely (up to the "}"), so that a misspelt one is reported
// rather than left alone.
func placeholderLen(s string) int {
	if rest, ok := strings.CutPrefix(s[1:], "port:"); ok {
		for i := 0; i < len(rest); i++ {
			switch c := rest[i]; {
			case c == '}':
				return len("{port:") + i + 1
			case c == '{' || c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f':
				return 0
			}
		}
		return 0
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '}' && i > 1:
			return i + 1
		case c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || i > 1 && '0' <= c && c <= '9':
		default:
			return 0
		}
	}
	return 0
}

// scanText splits s into literal text, given to text (escapes resolved),
// and placeholders, whose names (without braces, "port:NAME" for ports)
// are given to field.
func scanText(s string, text func(string), field func(name string)) {
	start := 0 // of the literal text not yet given
	for i := 0; i < len(s); {
		switch s[i] {
		case '{':
			if strings.HasPrefix(s[i:], "{{") {
				text(s[start : i+1])
				i += 2
				start = i
				continue
			}
			if i > 0 && s[i-1] == '$' {
				break
			}
			if n := placeholderLen(s[i:]); n > 0 {
				text(s[start:i])
				field(s[i+1 : i+n-1])
				i += n
				start = i
				continue
			}
		case '}':
			if strings.HasPrefix(s[i:], "}}") {
				text(s[start : i+1])
				i += 2
				start = i
				continue
			}
		}
		i++
	}
	text(s[start:])
}

// expandText replaces the placeholders of s with what value gives for
// them; {port:NAME}, and a name value does not know, stay as written.
func expandText(s string, value func(name string) (string, bool)) string {
	if !strings.ContainsAny(s, "{}") {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	scanText(s, func(t string) { b.WriteString(t) }, func(name string) {
		if v, ok := value(name); ok && !strings.HasPrefix(name, "port:") {
			b.WriteString(v)
			return
		}
		b.WriteString("{" + name + "}")
	})
	return b.String()
}

// placeholders lists the names of the placeholders in s, in order.
func placeholders(s string) []string {
	if !strings.ContainsAny(s, "{}") {
		return nil
	}
	var out []string
	scanText(s, func(string) {}, func(name string) { out = append(out, name) })
	return out
}
