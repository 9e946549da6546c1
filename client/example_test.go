package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/drover-hpc/drover/client"
	"github.com/drover-hpc/drover/internal/e2e"
)

// Start a program on a node of the drover serve of $DROVER_HOME and wait
// for its exit. README.md shows this body as it is (a test there checks).
func Example() {
	ctx := context.Background()
	c, err := client.Dial(ctx, client.Options{Group: "my-sim"})
	if err != nil {
		log.Fatal(err) // errors.Is(err, client.ErrNoServe): start one with drover serve
	}
	defer c.Close()
	nodes, err := c.Nodes(ctx)
	if err != nil {
		log.Fatal(err)
	}
	_, err = c.Start(ctx, client.StartRequest{Node: nodes[0].Name, Name: "sim", Args: []string{"sh", "-c", "echo step 1; exit 3"}})
	if err != nil {
		log.Fatal(err) // a *client.SpawnError says why the program could not start
	}
	exits, err := c.Finished(ctx, time.Minute) // or c.WatchFinished(ctx, func(e client.Exit) error {...})
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range exits {
		fmt.Println(e.Name, e)
	}
	// Output:
	// sim exit 3
}

// TestMain runs the tests, and the examples against a drover serve of
// their own, then looks for leaked goroutines.
func TestMain(m *testing.M) {
	stop, err := startExampleServe()
	if err != nil {
		fmt.Fprintln(os.Stderr, "example serve:", err)
		os.Exit(1)
	}
	code := m.Run()
	if err := stop(); err != nil {
		fmt.Fprintln(os.Stderr, "example serve:", err)
		code = 1
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// startExampleServe starts the real drover serve (built for this test) in
// a fresh DROVER_HOME, which it sets, and waits for its serve.json. The
// serve is not a child of the test binary (sh starts it and exits): the
// in-process agents of other tests are subreapers that take a child they
// did not start for an orphan of theirs and end it.
func startExampleServe() (stop func() error, err error) {
	tmp, err := os.MkdirTemp("", "drover-example-")
	if err != nil {
		return nil, err
	}
	bin, err := e2e.Build(tmp)
	if err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	home, logFile := filepath.Join(tmp, "home"), filepath.Join(tmp, "serve.log")
	sh := exec.Command("sh", "-c", `"$0" serve </dev/null >"$1" 2>&1 & echo $!`, bin, logFile)
	sh.Dir = tmp
	sh.Env = append(e2e.Env(), "DROVER_HOME="+home)
	pidText, err := sh.Output()
	if err != nil {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("start drover serve: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(pidText)))
	if err != nil {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("start drover serve: pid %q: %w", pidText, err)
	}
	serveLog := func() string { b, _ := os.ReadFile(logFile); return string(b) }
	alive := func() bool { return syscall.Kill(pid, 0) == nil }
	stop = func() error {
		defer os.RemoveAll(tmp)
		_ = syscall.Kill(pid, syscall.SIGTERM)
		for deadline := time.Now().Add(2 * time.Minute); alive(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				return fmt.Errorf("drover serve did not stop on SIGTERM within 2m:\n%s", serveLog())
			}
		}
		return nil
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
		if info, err := client.ReadServeInfo(home); err == nil && info.PID == pid {
			break
		}
		if !alive() {
			os.RemoveAll(tmp)
			return nil, fmt.Errorf("drover serve exited before it was up:\n%s", serveLog())
		}
		if time.Now().After(deadline) {
			return nil, errors.Join(errors.New("drover serve wrote no serve.json within 2m"), stop())
		}
	}
	if err := os.Setenv("DROVER_HOME", home); err != nil {
		return nil, errors.Join(err, stop())
	}
	return stop, nil
}
