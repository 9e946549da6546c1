package topology

import (
	"slices"
	"strings"
	"testing"
)

func TestParseCPUList(t *testing.T) {
	tests := []struct {
		in   string
		want []int
	}{
		{"", nil},
		{"\n", nil},
		{"0", []int{0}},
		{"0-3,8,10-11\n", []int{0, 1, 2, 3, 8, 10, 11}},
		{"7-7", []int{7}},
		{"5,3,3,1-2", []int{1, 2, 3, 5}},
		{"0-3,2-5,4", []int{0, 1, 2, 3, 4, 5}},
		{"0-2,0-2,0-2", []int{0, 1, 2}},
		{" 1,2 \n", []int{1, 2}},
		{"65535", []int{65535}},
	}
	for _, tc := range tests {
		got, err := ParseCPUList(tc.in)
		if err != nil {
			t.Errorf("ParseCPUList(%q): %v", tc.in, err)
			continue
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("ParseCPUList(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestParseCPUListErrors(t *testing.T) {
	tests := []struct {
		in, wantErr string
	}{
		{"x", `parse cpu list "x": invalid cpu id "x"`},
		{"1-", `parse cpu list "1-": empty cpu id`},
		{"-1", `parse cpu list "-1": empty cpu id`},
		{"3-1", `parse cpu list "3-1": range "3-1" ends before it starts`},
		{"1,,2", `parse cpu list "1,,2": empty cpu id`},
		{"1,", `parse cpu list "1,": empty cpu id`},
		{"+1", `parse cpu list "+1": invalid cpu id "+1"`},
		{"1-2-3", `parse cpu list "1-2-3": invalid cpu id "2-3"`},
		{"0x1", `parse cpu list "0x1": invalid cpu id "0x1"`},
		{"1 ,2", `parse cpu list "1 ,2": invalid cpu id "1 "`},
		{"0-7:2", `parse cpu list "0-7:2": invalid cpu id "7:2"`},
		{"65536", `parse cpu list "65536": cpu id "65536" out of range (max 65535)`},
		{"0-99999999999999999999", `parse cpu list "0-99999999999999999999": cpu id "99999999999999999999" out of range (max 65535)`},
	}
	for _, tc := range tests {
		got, err := ParseCPUList(tc.in)
		if err == nil {
			t.Errorf("ParseCPUList(%q) = %v, want error %q", tc.in, got, tc.wantErr)
			continue
		}
		if err.Error() != tc.wantErr {
			t.Errorf("ParseCPUList(%q) error = %q, want %q", tc.in, err, tc.wantErr)
		}
	}
}

func TestFormatCPUList(t *testing.T) {
	tests := []struct {
		in   []int
		want string
	}{
		{nil, ""},
		{[]int{}, ""},
		{[]int{0}, "0"},
		{[]int{10, 11}, "10-11"},
		{[]int{0, 1, 2, 3, 8}, "0-3,8"},
		{[]int{8, 3, 0, 1, 2, 3}, "0-3,8"},
		{[]int{1, 3, 5}, "1,3,5"},
		{[]int{0, 2, 3, 4, 7, 9, 10}, "0,2-4,7,9-10"},
	}
	for _, tc := range tests {
		in := slices.Clone(tc.in)
		if got := FormatCPUList(in); got != tc.want {
			t.Errorf("FormatCPUList(%v) = %q, want %q", tc.in, got, tc.want)
		}
		if !slices.Equal(in, tc.in) {
			t.Errorf("FormatCPUList modified its argument: %v, was %v", in, tc.in)
		}
	}
}

func TestCPUListRoundTrip(t *testing.T) {
	// Canonical strings survive Parse then Format unchanged.
	for _, s := range []string{"", "0", "0-1", "0-3,8,10-11", "1,3,5", "0,2-4,7,9-10", "4095", "0-65535"} {
		cpus, err := ParseCPUList(s)
		if err != nil {
			t.Errorf("ParseCPUList(%q): %v", s, err)
			continue
		}
		if got := FormatCPUList(cpus); got != s {
			t.Errorf("FormatCPUList(ParseCPUList(%q)) = %q", s, got)
		}
	}
	// Any set of ids survives Format then Parse, coming back sorted and
	// deduplicated.
	for _, ids := range [][]int{{0}, {3, 1, 2}, {9, 9, 0, 5, 6, 7}, {100, 2, 50, 51}} {
		want := slices.Compact(slices.Sorted(slices.Values(ids)))
		got, err := ParseCPUList(FormatCPUList(ids))
		if err != nil {
			t.Errorf("ParseCPUList(FormatCPUList(%v)): %v", ids, err)
			continue
		}
		if !slices.Equal(got, want) {
			t.Errorf("ParseCPUList(FormatCPUList(%v)) = %v, want %v", ids, got, want)
		}
	}
}

func FuzzParseCPUList(f *testing.F) {
	for _, s := range []string{"", "\n", "0", "0-3,8,10-11\n", "5,3,3,1-2", "0-3,2-5", "3-1", "1,,2", "-1", "+1", "65535", "0-65535", "0-7:2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cpus, err := ParseCPUList(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "parse cpu list ") {
				t.Fatalf("ParseCPUList(%q) error %q lacks the parse cpu list prefix", s, err)
			}
			return
		}
		for i, cpu := range cpus {
			if cpu < 0 || cpu >= maxCPUID || (i > 0 && cpu <= cpus[i-1]) {
				t.Fatalf("ParseCPUList(%q) = %v: not ascending ids in [0,%d)", s, cpus, maxCPUID)
			}
		}
		formatted := FormatCPUList(cpus)
		again, err := ParseCPUList(formatted)
		if err != nil {
			t.Fatalf("ParseCPUList(FormatCPUList(%v) = %q): %v", cpus, formatted, err)
		}
		if !slices.Equal(again, cpus) {
			t.Fatalf("ParseCPUList(%q) = %v, but its formatting %q parses to %v", s, cpus, formatted, again)
		}
		if f2 := FormatCPUList(again); f2 != formatted {
			t.Fatalf("FormatCPUList not canonical: %q then %q", formatted, f2)
		}
	})
}
