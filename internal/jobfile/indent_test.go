package jobfile

import (
	"strings"
	"testing"
)

// A mis-indented line is named, with the indentation the keys around it
// have, instead of the parser's "value is not allowed in this context".
func TestMisindentedLine(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"key under a list item too deep",
			"jobs:\n  - name: sim\n      command: [x]\n",
			`jobs.yaml:3:7: this line is indented 6 spaces, but the keys of job "sim" above are indented 4 spaces, and "name" has its value on its line, so nothing can go below it`},
		{"key under a list item too shallow",
			"jobs:\n  - name: sim\n   command: [x]\n",
			`jobs.yaml:3:4: this line is indented 3 spaces, but the keys of job "sim" above are indented 4 spaces and the items of "jobs" 2 spaces`},
		{"tab",
			"jobs:\n  - name: sim\n\tcommand: [x]\n",
			`jobs.yaml:3:1: this line is indented with a tab, but YAML indents with spaces only (the keys of job "sim" above are indented 4 spaces)`},
		{"too deep after a list value",
			"jobs:\n  - name: sim\n    command: [x]\n     repeat: 2\n",
			`jobs.yaml:4:6: this line is indented 5 spaces, but the keys of job "sim" above are indented 4 spaces, and "command" has its value on its line, so nothing can go below it`},
		{"env key between levels",
			"jobs:\n  - name: sim\n    command: [x]\n    env:\n      A: b\n     B: c\n",
			`jobs.yaml:6:6: this line is indented 5 spaces, but the keys of "env" above are indented 6 spaces and the keys of job "sim" 4 spaces`},
		{"list item too shallow",
			"jobs:\n  - name: sim\n    command:\n    - x\n   - y\n",
			`jobs.yaml:5:4: this line is indented 3 spaces, but the items of "command" above are indented 4 spaces and the items of "jobs" 2 spaces`},
		{"unindented list, too deep",
			"jobs:\n- name: sim\n  command: [x]\n   repeat: 2\n",
			`jobs.yaml:4:4: this line is indented 3 spaces, but the keys of job "sim" above are indented 2 spaces, and "command" has its value on its line, so nothing can go below it`},
		{"after a block scalar",
			"jobs:\n  - name: sim\n    shell: |\n      a\n        b\n    repeat: 2\n      cores: 1\n",
			`jobs.yaml:7:7: this line is indented 6 spaces, but the keys of job "sim" above are indented 4 spaces, and "repeat" has its value on its line, so nothing can go below it`},
		{"list item at the level of the keys",
			"jobs:\n  - name: a\n    command: [x]\n- name: b\n",
			`jobs.yaml:4:1: this line is indented 0 spaces, but the items of "jobs" above are indented 2 spaces`},
		{"second job, name not yet seen",
			"jobs:\n  - name: a\n    command: [x]\n  - command: [y]\n      name: b\n",
			`jobs.yaml:5:7: this line is indented 6 spaces, but the keys of job 2 above are indented 4 spaces, and "command" has its value on its line, so nothing can go below it`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("jobs.yaml", []byte(tc.yaml))
			if err == nil || err.Error() != tc.want {
				t.Errorf("got  %v\nwant %s", err, tc.want)
			}
		})
	}
}

// Other syntax errors keep the parser's message, and valid files with
// lines this scanner does not follow (plain values over several lines,
// flow values) are not reported.
func TestIndentScannerLeavesOtherErrors(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"unclosed flow", "jobs:\n  - name: sim\n    command: [x\n", "invalid YAML"},
		{"valid, plain value over lines", "jobs:\n  - name: sim\n    shell: echo a\n      b c\n", ""},
		{"valid, flow value over lines", "jobs:\n  - name: sim\n    command: [a,\n        b]\n", ""},
		{"valid JSON", `{"jobs": [{"name": "sim",` + "\n\t\"command\": [\"x\"]}]}\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("jobs.yaml", []byte(tc.yaml))
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("valid file refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("got %v, want a message with %q", err, tc.want)
			}
		})
	}
}
