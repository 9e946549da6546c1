package node

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestFindProgram(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{"sim", "bin/sim"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		arg0, in string
		want     *Program
	}{
		{"./sim", dir, &Program{Src: filepath.Join(dir, "sim"), Dst: "sim"}},
		{"bin/sim", dir, &Program{Src: filepath.Join(dir, "bin/sim"), Dst: "bin/sim"}},
		{"./bin/../sim", dir, &Program{Src: filepath.Join(dir, "sim"), Dst: "sim"}},
		{"../sim", sub, &Program{Src: filepath.Join(dir, "sim"), Dst: "sim"}}, // the copy goes beside the others
		{"sim", dir, nil},                     // a PATH lookup on the node
		{filepath.Join(dir, "sim"), dir, nil}, // the node's own path
		{"./missing", dir, nil},               // not here: left to the node
		{"./bin", dir, nil},                   // a directory
		{"./sim", "", nil},                    // no directory to look in
	} {
		got, ok := FindProgram(c.arg0, c.in)
		if ok != (c.want != nil) || (ok && got != *c.want) {
			t.Errorf("FindProgram(%q, %q) = %+v, %v; want %+v", c.arg0, c.in, got, ok, c.want)
		}
	}
}

func TestUseProgram(t *testing.T) {
	p := Program{Src: "/home/u/sim", Dst: "sim"}
	args := []string{"/bin/sh", "-c", "setup; exec \"$@\"", "drover-setup", "./sim", "3"}

	shared := ProcessSpec{Args: args}
	shared.UseProgram(4, p, true)
	if want := []string{"/bin/sh", "-c", "setup; exec \"$@\"", "drover-setup", "/home/u/sim", "3"}; !slices.Equal(shared.Args, want) || len(shared.Files) != 0 {
		t.Errorf("shared: %+v", shared)
	}

	remote := ProcessSpec{Args: args, Files: []StageFile{{Src: "/home/u/in.dat", Dst: "in.dat"}}}
	remote.UseProgram(4, p, false)
	if remote.Args[4] != "./sim" || !slices.Equal(remote.Files, []StageFile{{Src: "/home/u/in.dat", Dst: "in.dat"}, {Src: "/home/u/sim", Dst: "sim"}}) {
		t.Errorf("not shared: %+v", remote)
	}

	// Staged already (files: lists it): that copy runs, on any node.
	listed := ProcessSpec{Args: []string{"./sim"}, Files: []StageFile{{Src: "/home/u/sim", Dst: "sim"}}}
	listed.UseProgram(0, p, true)
	if listed.Args[0] != "./sim" || len(listed.Files) != 1 {
		t.Errorf("listed: %+v", listed)
	}
	if args[4] != "./sim" {
		t.Errorf("the caller's args changed: %q", args)
	}
}
