package jobfile

import (
	"regexp"
	"strings"
)

// Placeholders in command, shell and setup text: {NAME}, where NAME is an
// identifier ([A-Za-z_][A-Za-z0-9_]*), is {index} or a sweep parameter;
// {port:NAME} is kept for the agent, which reserves the ports; {{ and }}
// write one brace. Every other brace is text, so that shell such as
// awk '{print $1}', ${HOME} or {a,b} passes as written: a "{" right after
// a "$" starts no placeholder, since ${NAME} is the shell's.
var placeholderRE = regexp.MustCompile(`^\{(?:port:[^{}\s]*|[A-Za-z_][A-Za-z0-9_]*)\}`)

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
			if m := placeholderRE.FindString(s[i:]); m != "" {
				text(s[start:i])
				field(m[1 : len(m)-1])
				i += len(m)
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
