//go:build linux

package nofollow

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// both runs fn with openat2 and with the component walk.
func both(t *testing.T, fn func(t *testing.T)) {
	t.Run("openat2", func(t *testing.T) {
		if noOpenat2.Load() {
			t.Fatal("openat2 is missing on this kernel: only the fallback can be tested")
		}
		fn(t)
	})
	t.Run("walk", func(t *testing.T) {
		noOpenat2.Store(true)
		t.Cleanup(func() { noOpenat2.Store(false) })
		fn(t)
	})
}

func TestOpenRefusesSymlinks(t *testing.T) {
	both(t, func(t *testing.T) {
		root, elsewhere := t.TempDir(), t.TempDir()
		victim := filepath.Join(elsewhere, "victim")
		if err := os.WriteFile(victim, []byte("keep me"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(filepath.Join(root, "a"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(victim, filepath.Join(root, "a", "stdout")); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(elsewhere, filepath.Join(root, "b")); err != nil {
			t.Fatal(err)
		}
		for _, rel := range []string{"a/stdout", "b/victim", "b/new"} {
			f, err := OpenFile(root, rel, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
			if err == nil {
				f.Close()
				t.Errorf("open %s through a symlink succeeded", rel)
			} else if !errors.Is(err, ErrSymlink) {
				t.Errorf("open %s: %v, want ErrSymlink", rel, err)
			}
		}
		if data, _ := os.ReadFile(victim); string(data) != "keep me" {
			t.Errorf("the symlink's target now holds %q", data)
		}
		if _, err := os.Lstat(filepath.Join(elsewhere, "new")); err == nil {
			t.Error("a file was created through the symlinked dir")
		}
		if err := MkdirAll(root, "b/sub", 0o755); !errors.Is(err, ErrSymlink) {
			t.Errorf("MkdirAll through a symlinked dir: %v, want ErrSymlink", err)
		}
		if _, err := os.Lstat(filepath.Join(elsewhere, "sub")); err == nil {
			t.Error("MkdirAll made a dir through the symlink")
		}
		// Plain paths work, and ".." cannot leave the root.
		if err := MkdirAll(root, "c/d", 0o755); err != nil {
			t.Fatal(err)
		}
		f, err := OpenFile(root, "c/d/out", os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		if _, err := Open(root, "../x", unix.O_RDONLY, 0); err == nil {
			t.Error(`"../x" was opened`)
		}
	})
}

func TestWithin(t *testing.T) {
	for _, c := range []struct {
		dir, p, rel string
		ok          bool
	}{
		{"/out/a", "/out/a/stdout", "stdout", true},
		{"/out", "/out/a/attempt-1/stdout", "a/attempt-1/stdout", true},
		{"/out/a", "/out/b/stdout", "", false},
		{"/out/a", "/out/a", "", false},
		{"", "/out/a/stdout", "", false},
	} {
		rel, ok := Within(c.dir, c.p)
		if rel != c.rel || ok != c.ok {
			t.Errorf("Within(%q, %q) = %q, %v; want %q, %v", c.dir, c.p, rel, ok, c.rel, c.ok)
		}
	}
}
