package privdir_test

import (
	"errors"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/drover-hpc/drover/internal/privdir"
)

func nobody(t *testing.T) int {
	t.Helper()
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		t.Fatal("these tests chown to nobody: run them as root")
	}
	return uid
}

func mode(t *testing.T, p string) os.FileMode {
	t.Helper()
	st, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode()
}

func TestEnsure(t *testing.T) {
	uid := nobody(t)
	base := t.TempDir()

	fresh := filepath.Join(base, "a", "fresh")
	if narrowed, err := privdir.Ensure(fresh, false); err != nil || narrowed {
		t.Fatalf("fresh: %v %v", narrowed, err)
	}
	if m := mode(t, fresh); !m.IsDir() || m.Perm() != 0o700 {
		t.Errorf("fresh: mode %v, want a 0700 directory", m)
	}

	readable := filepath.Join(base, "readable")
	if err := os.Mkdir(readable, 0o755); err != nil {
		t.Fatal(err)
	}
	if narrowed, err := privdir.Ensure(readable, false); err != nil || narrowed {
		t.Fatalf("ours, 0755: %v %v", narrowed, err)
	}

	loose := filepath.Join(base, "loose")
	if err := os.Mkdir(loose, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(loose, 0o777)
	if narrowed, err := privdir.Ensure(loose, false); err != nil || !narrowed {
		t.Fatalf("ours but 0777: %v %v", narrowed, err)
	}
	if m := mode(t, loose); m.Perm() != 0o700 {
		t.Errorf("ours but 0777: left %v", m)
	}

	// The probe: made beforehand by another user, 0777.
	theirs := filepath.Join(base, "theirs")
	if err := os.Mkdir(theirs, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(theirs, 0o777)
	if err := os.Chown(theirs, uid, uid); err != nil {
		t.Fatal(err)
	}
	if _, err := privdir.Ensure(theirs, false); !errors.Is(err, privdir.ErrNotOwned) {
		t.Errorf("another user's dir: %v, want ErrNotOwned", err)
	}
	if m := mode(t, theirs); m.Perm() != 0o777 {
		t.Errorf("another user's dir was changed: %v", m)
	}

	link := filepath.Join(base, "link")
	if err := os.Symlink(loose, link); err != nil {
		t.Fatal(err)
	}
	if _, err := privdir.Ensure(link, false); !errors.Is(err, privdir.ErrNotDir) {
		t.Errorf("symlink, not followed: %v, want ErrNotDir", err)
	}
	if _, err := privdir.Ensure(link, true); err != nil {
		t.Errorf("symlink to our own dir, followed: %v", err)
	}
	theirLink := filepath.Join(base, "their-link")
	if err := os.Symlink(theirs, theirLink); err != nil {
		t.Fatal(err)
	}
	if _, err := privdir.Ensure(theirLink, true); !errors.Is(err, privdir.ErrNotOwned) {
		t.Errorf("symlink to another user's dir, followed: %v, want ErrNotOwned", err)
	}

	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := privdir.Ensure(file, true); !errors.Is(err, privdir.ErrNotDir) {
		t.Errorf("a file: %v, want ErrNotDir", err)
	}
}
