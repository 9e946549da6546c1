package cli_test

// Programs where the user is: a relative command (./sim) found in the
// caller's directory runs on every node, in place where the node shares
// the file system, shipped into the work dir where it does not (the bed's
// SSH agents never read the manager's paths); --files ships more; a
// command not found says where it was looked for. And no host holds the
// others back: one that accepts TCP and never speaks SSH is given up after
// --ssh-timeout while the others already work.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/testbed"
)

// tellingSim is a program that says how it was run: its argument, its $0,
// its work dir, its host and the staged data.txt if there is one.
const tellingSim = `#!/bin/sh
echo "sim $1"
echo "argv0 $0"
echo "pwd $(pwd)"
echo "host $(hostname)"
if [ -e data.txt ]; then cat data.txt; fi
`

// simDir makes a directory holding an executable ./sim and a data.txt.
func simDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "sim"), []byte(tellingSim), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "data.txt", "payload from the caller\n")
	return dir
}

// simSaid parses what an instance of tellingSim printed.
func simSaid(t *testing.T, stdout string) map[string]string {
	t.Helper()
	said := map[string]string{}
	for line := range strings.Lines(stdout) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), " ")
		said[k] = v
	}
	return said
}

func TestRelativeCommandRunsLocally(t *testing.T) {
	t.Parallel()
	dir := simDir(t)
	r := drover(t, dir, "run", "--progress", "none", "--repeat", "3", "--files", "data.txt", "--", "./sim", "{index}")
	wantCode(t, r, 0)
	for i := range 3 {
		said := simSaid(t, readFile(t, filepath.Join(dir, "drover-out", fmt.Sprintf("sim.%d", i), "stdout")))
		// This node shares the file system: the program runs in place,
		// in the instance's own work dir, with the file shipped there.
		if said["sim"] != fmt.Sprint(i) || said["argv0"] != filepath.Join(dir, "sim") || said["pwd"] == dir || said["payload"] != "from the caller" {
			t.Errorf("sim.%d said %v", i, said)
		}
	}

	// A job file's ./sim is the one beside the job file, wherever drover
	// runs; one its files: list runs as that staged copy.
	jobs := filepath.Join(dir, "jobs")
	if err := os.Mkdir(jobs, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(jobs, "sim2"), []byte(tellingSim), 0o755); err != nil {
		t.Fatal(err)
	}
	jf := writeFile(t, jobs, "j.yaml", `jobs:
  - name: beside
    command: [./sim2, b]
  - name: listed
    command: [./sim2, l]
    files: [sim2]
`)
	elsewhere := t.TempDir()
	r = drover(t, elsewhere, "run", "--progress", "none", "--out", "o", jf)
	wantCode(t, r, 0)
	if said := simSaid(t, readFile(t, filepath.Join(elsewhere, "o", "beside", "stdout"))); said["sim"] != "b" || said["argv0"] != filepath.Join(jobs, "sim2") {
		t.Errorf("beside said %v", said)
	}
	if said := simSaid(t, readFile(t, filepath.Join(elsewhere, "o", "listed", "stdout"))); said["sim"] != "l" || said["argv0"] != "./sim2" {
		t.Errorf("listed said %v", said)
	}
}

// A command that is nowhere says which work dir and which PATH were
// searched, in the summary and on stderr.
func TestCommandNotFoundSaysWhere(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	r := drover(t, dir, "run", "--progress", "none", "--", "./nosuch")
	wantCode(t, r, 1)
	in := readSummary(t, filepath.Join(dir, "drover-out")).instance(t, "nosuch")
	want := regexp.MustCompile(`^start nosuch on \S+: executable "\./nosuch" not found in (/\S+) \(work dir\); PATH=` + regexp.QuoteMeta(os.Getenv("PATH")) + `$`)
	m := want.FindStringSubmatch(in.Error)
	if in.State != "failed" || m == nil {
		t.Fatalf("summary: %+v, want an error matching %s", in, want)
	}
	if m[1] == dir {
		t.Errorf("looked in %s, the caller's directory, not the work dir", m[1])
	}
	if !strings.Contains(r.stderr, in.Error) {
		t.Errorf("stderr does not say %q:\n%s", in.Error, r)
	}
	r = drover(t, dir, "run", "--progress", "none", "--out", "o2", "--", "drover-no-such-program")
	wantCode(t, r, 1)
	in = readSummary(t, filepath.Join(dir, "o2")).instance(t, "drover-no-such-program")
	if !strings.Contains(in.Error, `executable "drover-no-such-program" not found in PATH=`+os.Getenv("PATH")+" (work dir /") {
		t.Errorf("summary: %+v", in)
	}
}

// --files names files below the current directory, checked before
// anything starts.
func TestRunFilesChecked(t *testing.T) {
	t.Parallel()
	dir := simDir(t)
	for _, c := range []struct{ arg, want string }{
		{"/etc/hostname", `--files "/etc/hostname": give a path below the current directory`},
		{"../x", `--files "../x": give a path below the current directory`},
		{"missing.txt", "--files missing.txt: stat " + filepath.Join(dir, "missing.txt") + ": no such file or directory"},
	} {
		r := drover(t, dir, "run", "--progress", "none", "--out", "o", "--files", c.arg, "--", "./sim")
		wantCode(t, r, 2)
		if !strings.Contains(r.stderr, c.want) {
			t.Errorf("--files %s: stderr lacks %q\n%s", c.arg, c.want, r)
		}
		wantNotExist(t, filepath.Join(dir, "o"))
	}
	jf := writeFile(t, dir, "j.yaml", "jobs:\n  - name: a\n    command: [./sim]\n")
	r := drover(t, dir, "run", "--progress", "none", "--out", "o", "--files", "data.txt", jf)
	wantCode(t, r, 2)
	if !strings.Contains(r.stderr, "--files are for ad-hoc mode") {
		t.Errorf("--files with a job file:\n%s", r)
	}
}

// drover start -- ./sim against a serve on this machine: the program in
// the caller's directory runs, in place.
func TestStartRelativeCommand(t *testing.T) {
	t.Parallel()
	home := filepath.Join(t.TempDir(), "home")
	startServe(t, home)
	dir := simDir(t)
	host, _ := os.Hostname()
	startAndRead(t, home, dir, host, func(said map[string]string) string {
		if said["sim"] != "7" || said["argv0"] != filepath.Join(dir, "sim") {
			return fmt.Sprintf("sim said %v", said)
		}
		return ""
	})
	r := droverHome(t, home, dir, "start", "--node", host, "--name", "nosuch", "--", "./nosuch")
	wantCode(t, r, 1)
	if !regexp.MustCompile(`start nosuch on \S+: executable "\./nosuch" not found in /\S+ \(work dir\); PATH=`).MatchString(r.stderr) {
		t.Errorf("start of a missing program:\n%s", r)
	}
}

// startAndRead starts ./sim 7 from dir on node, waits for its exit 0 and
// checks what it printed with check ("" when right).
func startAndRead(t *testing.T, home, dir, node string, check func(map[string]string) string) {
	t.Helper()
	r := droverHome(t, home, dir, "start", "--node", node, "--name", "sim", "--", "./sim", "7")
	wantCode(t, r, 0)
	eventually(t, func() string {
		if r := droverHome(t, home, dir, "poll", "sim"); r.stdout != "sim exit 0\n" {
			return fmt.Sprintf("poll sim: %s", r)
		}
		return ""
	})
	r = droverHome(t, home, dir, "logs", "sim")
	wantCode(t, r, 0)
	if msg := check(simSaid(t, r.stdout)); msg != "" {
		t.Error(msg)
	}
}

// Over SSH the bed's agents do not share the manager's file system: ./sim
// and --files go to each work dir by content, and the copy runs there.
func TestRelativeCommandShippedOverSSH(t *testing.T) {
	bed := testbed.Require(t)
	dir := simDir(t)
	hosts := bed.Names()[:2]
	r := drover(t, dir, "run", "--hosts", strings.Join(hosts, ","), "--ssh-config", bed.SSHConfig, "--progress", "none",
		"--repeat", "3", "--files", "data.txt", "--", "./sim", "{index}")
	wantCode(t, r, 0)
	for i := range 3 {
		said := simSaid(t, readFile(t, filepath.Join(dir, "drover-out", fmt.Sprintf("sim.%d", i), "stdout")))
		if said["sim"] != fmt.Sprint(i) || said["argv0"] != "./sim" || said["pwd"] == dir ||
			!slices.Contains(hosts, said["host"]) || said["payload"] != "from the caller" {
			t.Errorf("sim.%d said %v", i, said)
		}
	}

	// drover start against a serve whose node is a bed host.
	home := filepath.Join(t.TempDir(), "home")
	startServe(t, home, "--hosts", hosts[0], "--ssh-config", bed.SSHConfig)
	startAndRead(t, home, dir, hosts[0], func(said map[string]string) string {
		if said["sim"] != "7" || said["argv0"] != "./sim" || said["host"] != hosts[0] {
			return fmt.Sprintf("sim said %v", said)
		}
		return ""
	})
}

// silentHost listens on a loopback port and accepts connections but never
// says a word: an SSH client waits for the server's banner for ever.
func silentHost(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var conns []net.Conn
	go func() {
		defer close(done)
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		lis.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	return lis.Addr().String()
}

// One silent host among good ones: the good ones start their instances
// before the silent one is given up (--ssh-timeout 15s: ample for the bed's
// hosts to come up on a busy machine, where they took 4 s), it is reported with
// its reason on stderr and in events.jsonl while the run goes on, and the
// run succeeds with every instance on a good host.
func TestSilentHostHoldsNoOneBack(t *testing.T) {
	bed := testbed.Require(t)
	dir := t.TempDir()
	host, port, _ := net.SplitHostPort(silentHost(t))
	base, err := os.ReadFile(bed.SSHConfig)
	if err != nil {
		t.Fatal(err)
	}
	// Host blocks match first: "silent" is placed before the bed's own.
	cfg := writeFile(t, dir, "ssh_config", fmt.Sprintf("Host silent\n  HostName %s\n  Port %s\n\n%s", host, port, base))
	// Each instance holds its core until released: so the run is still
	// going when the silent host is given up, whatever the machine's load.
	release := filepath.Join(dir, "release")
	script := fmt.Sprintf("#!/bin/sh\nfor i in $(seq 1200); do [ -e %s ] && { echo \"$1 on $(hostname)\"; exit 0; }; sleep 0.1; done; exit 9\n", release)
	if err := os.WriteFile(filepath.Join(dir, "sim"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	good := bed.Names()[:2]
	out := filepath.Join(dir, "out")
	ctx, cancel := context.WithTimeout(context.Background(), backstop)
	defer cancel()
	cmd := exec.CommandContext(ctx, droverBin, "run", "--hosts", strings.Join(append(slices.Clone(good), "silent"), ","),
		"--ssh-config", cfg, "--ssh-timeout", "15s", "--progress", "none", "--out", out, "--repeat", "3", "--", "./sim", "{index}")
	cmd.Dir = dir
	cmd.Env = testEnv()
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGQUIT) }
	var stderr safeBuffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	t0 := time.Now() // for the log only
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	// Wait (bounded) for the silent host's node-failed event, then let the
	// instances end.
	var failedAt time.Time
	var failed event
	for failedAt.IsZero() {
		select {
		case err := <-exited:
			t.Fatalf("drover ended before the silent host was given up: %v\n%s", err, stderr.String())
		case <-time.After(100 * time.Millisecond):
		}
		for _, e := range readEventsIfAny(t, out) {
			if e.Event == "node-failed" && e.Node == "silent" {
				failed, failedAt = e, eventTime(t, e)
			}
		}
	}
	writeFile(t, dir, "release", "")
	if err := <-exited; err != nil {
		t.Fatalf("drover run: %v\n%s", err, stderr.String())
	}

	if !strings.Contains(failed.Error, "banner exchange") || !strings.HasSuffix(failed.Error, "(gave up after 15s: --ssh-timeout)") {
		t.Errorf("node-failed event %+v does not say ssh timed out waiting for the banner, after --ssh-timeout", failed)
	}
	if want := "drover: node silent not used: " + failed.Error; !strings.Contains(stderr.String(), want) {
		t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
	}
	evs := readEvents(t, out)
	t.Logf("from drover's start: silent host given up after %s", failedAt.Sub(t0).Round(time.Millisecond))
	started := 0
	for _, e := range evs {
		if e.Event != "started" {
			continue
		}
		started++
		t.Logf("from drover's start: %s started on %s after %s", e.Job, e.Node, eventTime(t, e).Sub(t0).Round(time.Millisecond))
		if !eventTime(t, e).Before(failedAt) {
			t.Errorf("%s started at %s, not before the silent host was given up at %s", e.Job, e.Time, failedAt)
		}
		if !slices.Contains(good, e.Node) {
			t.Errorf("%s started on %s", e.Job, e.Node)
		}
	}
	if started != 3 {
		t.Errorf("%d started events, want 3", started)
	}
	wantCounts(t, readSummary(t, out), 3, 3, 0, 0, 0)
}

func eventTime(t *testing.T, e event) time.Time {
	t.Helper()
	at, err := time.Parse(time.RFC3339Nano, e.Time)
	if err != nil {
		t.Fatalf("event %+v: %v", e, err)
	}
	return at
}

// readEventsIfAny reads OUT/events.jsonl as far as it is written; nothing
// when it is not there yet.
func readEventsIfAny(t *testing.T, out string) []event {
	t.Helper()
	f, err := os.Open(filepath.Join(out, "events.jsonl"))
	if err != nil {
		return nil
	}
	defer f.Close()
	var evs []event
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) == nil {
			evs = append(evs, e)
		}
	}
	return evs
}
