package launch

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/drover-hpc/drover/internal/creds"
)

func TestParseHostlist(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"h1", []string{"h1"}},
		{"h1,h2", []string{"h1", "h2"}},
		{"n[1-3,7]", []string{"n1", "n2", "n3", "n7"}},
		{"n[001-003]", []string{"n001", "n002", "n003"}},
		{"n[08-11]", []string{"n08", "n09", "n10", "n11"}},
		{"n[8-10]", []string{"n8", "n9", "n10"}},
		{"n[0]", []string{"n0"}},
		{"a,b[1-2]", []string{"a", "b1", "b2"}},
		{"b[1-2],a", []string{"b1", "b2", "a"}},
		{"rack[0-1]_blade[0-2]", []string{"rack0_blade0", "rack0_blade1", "rack0_blade2", "rack1_blade0", "rack1_blade1", "rack1_blade2"}},
		{"r[1-2]n[3,5]x", []string{"r1n3x", "r1n5x", "r2n3x", "r2n5x"}},
		{"h[1-3],login[01-02].ib", []string{"h1", "h2", "h3", "login01.ib", "login02.ib"}},
		{"node1,node10", []string{"node1", "node10"}},
		{"a,,b,", []string{"a", "b"}},
		{"[1-2]", []string{"1", "2"}},
	} {
		got, err := ParseHostlist(tc.in)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("ParseHostlist(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestParseHostlistErrors(t *testing.T) {
	for _, in := range []string{
		"", ",", "n[", "n]", "n[1-2", "n[]", "n[a-b]", "n[3-1]", "n[1-]", "n[-1]",
		"n[[1]]", "n[1 - 2]", "n[1-2]x[", "n[0-99999999]m[0-99999999]",
		"n[0-999999999]", "n[1234567890]", "a b",
	} {
		if got, err := ParseHostlist(in); err == nil {
			t.Errorf("ParseHostlist(%q) = %d names, want an error", in, len(got))
		}
	}
}

func TestParseCPUsPerNode(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []int
	}{
		{"72(x2),36", []int{72, 72, 36}},
		{"4", []int{4}},
		{"1(x3)", []int{1, 1, 1}},
		{"2,4(x2),8", []int{2, 4, 4, 8}},
	} {
		got, err := ParseCPUsPerNode(tc.in)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("ParseCPUsPerNode(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "x", "72(x)", "72(2)", "72(x2", "72(x0)", "-1", "72(x2)x", "1(x9999999)"} {
		if got, err := ParseCPUsPerNode(in); err == nil {
			t.Errorf("ParseCPUsPerNode(%q) = %v, want an error", in, got)
		}
	}
}

// FuzzParseHostlist checks that any input either fails or expands to
// names without list syntax in them, within the bound, and that the
// expansion of a list equals the concatenated expansions of its entries.
func FuzzParseHostlist(f *testing.F) {
	for _, s := range []string{"h1", "n[1-3,7]", "n[001-010]", "rack[0-63]_blade[0-41]", "a,b[1-2]", "x[1-2]y[3-4]z", "n[", "n[3-1]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		names, err := ParseHostlist(s)
		if err != nil {
			return
		}
		if len(names) == 0 || len(names) > MaxHostlist {
			t.Fatalf("%q: %d names", s, len(names))
		}
		for _, n := range names {
			if n == "" || strings.ContainsAny(n, "[],") {
				t.Fatalf("%q: bad name %q", s, n)
			}
		}
		entries, err := splitTop(s)
		if err != nil {
			t.Fatalf("%q parsed but does not split: %v", s, err)
		}
		var again []string
		for _, e := range entries {
			if e == "" {
				continue
			}
			part, err := ParseHostlist(e)
			if err != nil {
				t.Fatalf("%q parsed but its entry %q does not: %v", s, e, err)
			}
			again = append(again, part...)
		}
		if !slices.Equal(again, names) {
			t.Fatalf("%q: %d names, entries give %d", s, len(names), len(again))
		}
	})
}

func FuzzParseCPUsPerNode(f *testing.F) {
	for _, s := range []string{"72(x2),36", "4", "1(x3),2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		counts, err := ParseCPUsPerNode(s)
		if err != nil {
			return
		}
		if len(counts) == 0 || len(counts) > MaxHostlist {
			t.Fatalf("%q: %d counts", s, len(counts))
		}
		_ = fmt.Sprint(counts[0])
	})
}

func TestSlurmAllocation(t *testing.T) {
	env := map[string]string{"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "node[1,10]", "SLURM_JOB_CPUS_PER_NODE": "2(x2)"}
	a, err := SlurmAllocation(func(k string) string { return env[k] })
	if err != nil || !slices.Equal(a.Nodes, []string{"node1", "node10"}) || a.CPUs["node10"] != 2 || a.JobID != "7" {
		t.Fatalf("%+v %v", a, err)
	}
	env["SLURM_JOB_NODELIST"] = "n1,n1"
	if _, err := SlurmAllocation(func(k string) string { return env[k] }); err == nil {
		t.Error("duplicate node accepted")
	}
	if _, err := SlurmAllocation(func(string) string { return "" }); err == nil {
		t.Error("no allocation accepted")
	}
}

func TestSrun(t *testing.T) {
	for _, tc := range []struct {
		out          string
		major, minor int
	}{{"slurm 22.05.8\n", 22, 5}, {"slurm 20.11.9", 20, 11}, {"slurm-wlm 23.02.1", 23, 2}} {
		a, b, err := ParseSrunVersion(tc.out)
		if err != nil || a != tc.major || b != tc.minor {
			t.Errorf("ParseSrunVersion(%q) = %d %d %v", tc.out, a, b, err)
		}
	}
	if _, _, err := ParseSrunVersion("srun: fatal: no config"); err == nil {
		t.Error("garbage accepted")
	}
	args := strings.Join(SrunArgs(3, true, "/x/drover"), " ")
	for _, want := range []string{"--nodes=3", "--ntasks=3", "--ntasks-per-node=1", "--overlap", "--cpu-bind=none", "--kill-on-bad-exit=0", "--input=all", "/x/drover agent"} {
		if !strings.Contains(args, want) {
			t.Errorf("srun args %q lack %q", args, want)
		}
	}
	if strings.Contains(strings.Join(SrunArgs(1, false, "d"), " "), "overlap") {
		t.Error("--overlap without support")
	}
	env := SrunEnv([]string{"SLURM_JOB_ID=1", "SLURM_NTASKS_PER_CORE=1", "SLURM_CPUS_PER_TASK=4", "PATH=/bin"})
	if !slices.Equal(env, []string{"SLURM_JOB_ID=1", "PATH=/bin"}) {
		t.Errorf("SrunEnv = %q", env)
	}
	if m := taskExitRE.FindStringSubmatch("srun: error: h2: task 1: Exited with exit code 2"); m == nil || m[1] != "h2" {
		t.Errorf("task exit line: %q", m)
	}
}

func TestSelectMatchesExactly(t *testing.T) {
	c := &AgentConfig{Manager: "m:1", Nodes: map[string]*creds.Bundle{"node1": {Cert: "one"}, "node10": {Cert: "ten"}}, CPUs: map[string]int{"node10": 4}}
	got, err := c.Select("", "node10.example.org", "node10")
	if err != nil || got.Node != "node10" || got.Credentials.Cert != "ten" || got.ExpectCPUs != 4 || got.Nodes != nil {
		t.Fatalf("Select = %+v, %v", got, err)
	}
	if got, err := c.Select("node", "node100", "ode1"); err == nil {
		t.Errorf("Select matched %q by substring", got.Node)
	}
	single := &AgentConfig{Manager: "m:1", Node: "a", Credentials: &creds.Bundle{}}
	if got, err := single.Select("b"); err != nil || got != single {
		t.Errorf("single-node config: %v %v", got, err)
	}
}
