// Package pytest runs the tests of the Python package (python/tests)
// against a real drover serve, with Debian's /usr/bin/python3 and its
// python3-grpcio and python3-protobuf: the runtime the package promises
// to need and nothing more.
package pytest

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/drover-hpc/drover/internal/e2e"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// python is Debian's interpreter; another python3 may come first on PATH.
const python = "/usr/bin/python3"

// aptLine installs what the Python tests need on Debian bookworm.
const aptLine = "apt-get install -y python3-grpcio python3-protobuf python3-pytest protobuf-compiler protobuf-compiler-grpc"

// missing lists what the Python tests need and this machine lacks.
func missing() []string {
	var out []string
	if _, err := os.Stat(python); err != nil {
		return []string{python}
	}
	for _, mod := range []string{"grpc", "google.protobuf", "pytest"} {
		if err := exec.Command(python, "-c", "import "+mod).Run(); err != nil {
			out = append(out, "python module "+mod)
		}
	}
	// The stubs test regenerates them with these.
	if _, err := exec.LookPath("protoc"); err != nil {
		out = append(out, "protoc")
	}
	if _, err := os.Stat("/usr/bin/grpc_python_plugin"); err != nil {
		out = append(out, "/usr/bin/grpc_python_plugin")
	}
	return out
}

// TestPython starts drover serve with a fresh DROVER_HOME and runs
// `python3 -m pytest python/tests` against it; the last of those tests
// shuts serve down, and serve must then exit 0.
func TestPython(t *testing.T) {
	if m := missing(); len(m) > 0 {
		if os.Geteuid() == 0 {
			t.Fatalf("missing %s; install them: %s", strings.Join(m, ", "), aptLine)
		}
		t.Skipf("missing %s (as root: %s)", strings.Join(m, ", "), aptLine)
	}
	root, err := e2e.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin, err := e2e.Build(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	serve := e2e.Start(t, bin, t.TempDir(), []string{"DROVER_HOME=" + home}, "serve", "--grace", "5s")
	waitServeJSON(t, serve, home)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "python/tests")
	cmd.Dir = root
	cmd.Env = append(e2e.Env(),
		"DROVER_HOME="+home,
		"PYTHONPATH="+filepath.Join(root, "python"),
		"PYTHONDONTWRITEBYTECODE=1",
		"DROVER_PYTEST_SHUTDOWN=1",
	)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("pytest did not finish within the backstop\n%s\n--- drover serve:\n%s", out, e2e.Tail(serve.Out.String()))
	}
	if err != nil {
		t.Fatalf("pytest: %v\n%s\n--- drover serve:\n%s", err, out, e2e.Tail(serve.Out.String()))
	}
	t.Logf("pytest:\n%s", out)
	if code := serve.Wait(t, time.Minute); code != 0 {
		t.Fatalf("drover serve exited %d after the shutdown test\n%s", code, e2e.Tail(serve.Out.String()))
	}
}

// waitServeJSON waits until serve has written its serve.json.
func waitServeJSON(t *testing.T, serve *e2e.Proc, home string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var info struct {
			PID int `json:"pid"`
		}
		data, err := os.ReadFile(filepath.Join(home, "serve.json"))
		if err == nil && json.Unmarshal(data, &info) == nil && info.PID == serve.PID() {
			return
		}
		if !serve.Running() || time.Now().After(deadline) {
			t.Fatalf("drover serve wrote no serve.json\n%s", e2e.Tail(serve.Out.String()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
