package jobfile

import (
	"testing"
)

// FuzzIndentProblem: the indentation scanner takes any text without
// panicking, and what it reports is a line of that text.
func FuzzIndentProblem(f *testing.F) {
	for _, s := range []string{
		"jobs:\n  - name: sim\n      command: [x]\n",
		"jobs:\n  -\n  x: 1\n",
		"jobs:\n- - a\n  - b\n -c\n",
		"a:\n  b: |\n   x\n\t y\n",
		"jobs:\n  - name: sim\n\tcommand: [x]\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		p, msg, ok := findIndentProblem(text)
		if ok && (p.line < 1 || msg == "") {
			t.Fatalf("problem at %v: %q", p, msg)
		}
	})
}
