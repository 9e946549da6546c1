package chaos_test

// Shared machinery of the chaos suite: one build of drover (made unique to
// this test process, so its agents are told apart from any other run's),
// running it in the background, reading events.jsonl and summary.json,
// cutting a host's link, and looking for leftovers on every host over ssh.
//
// Network: only loopback and the bed's addresses (10.231.0.0/24).

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/drover-hpc/drover/internal/e2e"
	"github.com/drover-hpc/drover/internal/testbed"
)

var (
	droverBin string // this test process's own copy of drover
	droverSHA string // its SHA-256: the name of its cache dir on the hosts
)

// backstop bounds a run that should take well under it.
const backstop = 5 * time.Minute

// vethPrefix is scripts/testbed's host-side veth name prefix (drvtb-h1...).
const vethPrefix = "drvtb-"

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "drover-chaos-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	built, err := e2e.Build(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 1
	}
	// A copy with a trailer that only this process wrote: its SHA-256,
	// and so its agents' path on the hosts (~/.cache/drover/SHA/drover),
	// is ours alone, and pgrep for it finds no other run's agents.
	data, err := os.ReadFile(built)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 1
	}
	data = append(data, fmt.Sprintf("\nchaos-%d-%d\n", os.Getpid(), time.Now().UnixNano())...)
	sum := sha256.Sum256(data)
	droverSHA = hex.EncodeToString(sum[:])
	droverBin = filepath.Join(dir, "bin", "drover")
	if err := os.MkdirAll(filepath.Dir(droverBin), 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 1
	}
	if err := os.WriteFile(droverBin, data, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 1
	}
	// The hosts share this file system and log in as root: the remote
	// copies land in this machine's cache.
	if home, err := os.UserHomeDir(); err == nil {
		defer os.RemoveAll(filepath.Join(home, ".cache", "drover", droverSHA))
	}
	return m.Run()
}

var seq atomic.Int64

// newMarker returns a string unique to this test process and call, to
// put in the command lines of a run's job processes.
func newMarker(what string) string {
	return fmt.Sprintf("chaos%s-%d-%d", what, os.Getpid(), seq.Add(1))
}

// pattern makes a pgrep pattern of marker that does not match itself.
func pattern(marker string) string { return "[" + marker[:1] + "]" + marker[1:] }

// markedSleep copies sleep(1) to DIR/MARKER/sleep: every process that runs
// it, and the shell that starts it, has the marker in its command line.
// The hosts share this file system, so the path works on each.
func markedSleep(t *testing.T, dir, marker string) string {
	t.Helper()
	src, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	d := filepath.Join(dir, marker)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(d, "sleep")
	if err := os.WriteFile(p, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

type proc = e2e.Proc

// startRun starts `drover run --hosts h1,h2,h3 --ssh-config ... ARGS` in
// dir. env is added to the environment. The cleanup kills it if it runs.
func startRun(t *testing.T, bed *testbed.Bed, dir string, env []string, args ...string) *proc {
	t.Helper()
	full := append([]string{"--log-level", "info", "run", "--hosts", strings.Join(bed.Names(), ","),
		"--ssh-config", bed.SSHConfig, "--progress", "none"}, args...)
	return e2e.Start(t, droverBin, dir, env, full...)
}

// startSallocRun starts `drover run` inside `salloc -N<every host>`: the
// agents are the tasks of one srun step, running drover where it is (the
// hosts share this machine's file system).
func startSallocRun(t *testing.T, bed *testbed.Bed, dir string, args ...string) *proc {
	t.Helper()
	if _, err := exec.LookPath("salloc"); err != nil {
		t.Skip("no salloc")
	}
	full := append([]string{fmt.Sprintf("-N%d", len(bed.Hosts)), "--time=5", droverBin,
		"--log-level", "info", "run", "--progress", "none"}, args...)
	return e2e.Start(t, "salloc", dir, []string{"SLURM_CONF=" + bed.SlurmConf}, full...)
}

var tail = e2e.Tail

// event is one line of events.jsonl.
type event struct {
	Time     time.Time `json:"time"`
	Event    string    `json:"event"`
	Job      string    `json:"job"`
	Node     string    `json:"node"`
	Attempt  int       `json:"attempt"`
	ExitCode *int      `json:"exit_code"`
	Signal   string    `json:"signal"`
	Error    string    `json:"error"`
	PID      int       `json:"pid"`
}

func (e event) final() bool {
	return e.Event == "finished" || e.Event == "failed" || e.Event == "lost"
}

func (e event) String() string {
	s := fmt.Sprintf("%s %s %s", e.Time.Format("15:04:05.000"), e.Event, e.Job)
	if e.Node != "" {
		s += " node=" + e.Node
	}
	if e.Attempt != 0 {
		s += " attempt=" + strconv.Itoa(e.Attempt)
	}
	if e.ExitCode != nil {
		s += " exit=" + strconv.Itoa(*e.ExitCode)
	}
	if e.Signal != "" {
		s += " signal=" + e.Signal
	}
	if e.Error != "" {
		s += " error=" + strconv.Quote(e.Error)
	}
	return s
}

// readEvents reads OUT/events.jsonl; every line must be a whole event.
func readEvents(t *testing.T, out string) []event {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(out, "events.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if len(data) == 0 || data[len(data)-1] != '\n' {
		t.Fatalf("events.jsonl is empty or its last line is torn")
	}
	var evs []event
	for i, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		var e event
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("events.jsonl line %d: %v: %s", i+1, err, line)
		}
		evs = append(evs, e)
	}
	return evs
}

// eventsSoFar reads the events written so far, tolerating a line being
// written.
func eventsSoFar(out string) []event {
	data, _ := os.ReadFile(filepath.Join(out, "events.jsonl"))
	var evs []event
	for line := range strings.Lines(string(data)) {
		var e event
		if strings.HasSuffix(line, "\n") && json.Unmarshal([]byte(line), &e) == nil {
			evs = append(evs, e)
		}
	}
	return evs
}

// waitEvents waits, while drover runs and at most within, until cond holds
// of the events written so far, and returns them.
func waitEvents(t *testing.T, p *proc, out string, within time.Duration, what string, cond func([]event) bool) []event {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		evs := eventsSoFar(out)
		if cond(evs) {
			return evs
		}
		if !p.Running() {
			t.Fatalf("drover exited before %s\n%s", what, tail(p.Out.String()))
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %s\n%s", what, within, tail(p.Out.String()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type instanceResult struct {
	Name     string `json:"name"`
	State    string `json:"state"`
	Node     string `json:"node"`
	Attempts int    `json:"attempts"`
	ExitCode *int   `json:"exit_code"`
	Signal   string `json:"signal"`
	Error    string `json:"error"`
}

type summary struct {
	Total     int              `json:"total"`
	Succeeded int              `json:"succeeded"`
	Failed    int              `json:"failed"`
	Lost      int              `json:"lost"`
	Cancelled int              `json:"cancelled"`
	Skipped   int              `json:"skipped"`
	Instances []instanceResult `json:"instances"`
}

func readSummary(t *testing.T, out string) summary {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(out, "summary.json"))
	if err != nil {
		t.Fatal(err)
	}
	var s summary
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatalf("summary.json: %v", err)
	}
	return s
}

func instanceNames(job string, n int) []string {
	if n == 1 {
		return []string{job}
	}
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("%s.%d", job, i)
	}
	return names
}

// accounted is what checkAccounting found: each instance's one final
// event and its summary entry.
type accounted struct {
	evs     []event
	finals  map[string]event
	sum     summary
	entries map[string]instanceResult
}

// checkAccounting checks that every instance in names has exactly one
// final event in OUT/events.jsonl and exactly one entry in summary.json,
// that nothing else has either, that the summary's state agrees with the
// final event and its counts add up, and that no attempt started twice.
func checkAccounting(t *testing.T, out string, names []string) accounted {
	t.Helper()
	return checkResumed(t, out, names, time.Time{}, nil)
}

// checkResumed is checkAccounting for a run resumed at since in the same
// OUT: only the events from since on count, and the instances in done
// (succeeded before) have none of them and are "skipped" in the summary.
func checkResumed(t *testing.T, out string, names []string, since time.Time, done map[string]bool) accounted {
	t.Helper()
	a := accounted{finals: map[string]event{}, entries: map[string]instanceResult{}}
	for _, e := range readEvents(t, out) {
		if !e.Time.Before(since) {
			a.evs = append(a.evs, e)
		}
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	all := map[string][]event{}
	starts := map[string]int{}
	for _, e := range a.evs {
		if e.final() {
			all[e.Job] = append(all[e.Job], e)
		}
		if e.Event == "started" {
			starts[fmt.Sprintf("%s attempt %d", e.Job, e.Attempt)]++
			if done[e.Job] {
				t.Errorf("%s had succeeded before the resume, yet started again: %v", e.Job, e)
			}
		}
	}
	for _, n := range names {
		switch fs := all[n]; {
		case done[n]:
			if len(fs) > 0 {
				t.Errorf("instance %s had succeeded before the resume, yet has final events: %v", n, fs)
			}
		case len(fs) == 1:
			a.finals[n] = fs[0]
		default:
			t.Errorf("instance %s has %d final events, want exactly 1: %v", n, len(fs), fs)
		}
	}
	for n, fs := range all {
		if !want[n] {
			t.Errorf("final events of an unexpected instance %q: %v", n, fs)
		}
	}
	for k, n := range starts {
		if n > 1 {
			t.Errorf("%s has %d started events", k, n)
		}
	}

	a.sum = readSummary(t, out)
	s := a.sum
	if s.Total != len(names) || len(s.Instances) != len(names) {
		t.Errorf("summary: total %d, %d instances listed, want %d", s.Total, len(s.Instances), len(names))
	}
	if s.Succeeded+s.Failed+s.Lost+s.Cancelled+s.Skipped != s.Total {
		t.Errorf("summary counts do not add up: %+v", s)
	}
	counts := map[string]int{}
	for _, in := range s.Instances {
		if _, dup := a.entries[in.Name]; dup {
			t.Errorf("summary lists %s twice", in.Name)
		}
		a.entries[in.Name] = in
		counts[in.State]++
		if !want[in.Name] {
			t.Errorf("summary lists an unexpected instance %+v", in)
			continue
		}
		f, ok := a.finals[in.Name]
		if done[in.Name] {
			if in.State != "skipped" {
				t.Errorf("summary says %s is %s, want skipped: it had succeeded before the resume", in.Name, in.State)
			}
			continue
		}
		if !ok {
			continue
		}
		var wantState string
		switch {
		case f.Event == "finished" && f.ExitCode != nil && *f.ExitCode == 0 && f.Error == "":
			wantState = "succeeded"
		case f.Event == "lost":
			wantState = "lost"
		default:
			wantState = "failed"
		}
		if in.State != wantState {
			t.Errorf("summary says %s is %s, its final event %v says %s", in.Name, in.State, f, wantState)
		}
	}
	for _, n := range names {
		if _, ok := a.entries[n]; !ok {
			t.Errorf("summary lacks %s", n)
		}
	}
	if counts["succeeded"] != s.Succeeded || counts["failed"] != s.Failed || counts["lost"] != s.Lost || counts["skipped"] != s.Skipped {
		t.Errorf("summary counts %+v disagree with its instances %v", s, counts)
	}
	return a
}

// pgrep lists the processes on host whose command line matches pat
// (made with pattern, so the pgrep does not find itself): "PID CMDLINE"
// lines. The bed's hosts share this machine's pid namespace, so a pgrep
// on one host sees every host's processes: the remote script keeps those
// in the host's own network namespace.
func pgrep(t *testing.T, bed *testbed.Bed, host, pat string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := bed.SSH(ctx, host, hostProcs(pat, "echo \"$p $(tr '\\0' ' ' </proc/$p/cmdline 2>/dev/null)\"")).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh %s pgrep: %v: %s", host, err, out)
	}
	if s := strings.TrimSpace(string(out)); s != "" {
		return strings.Split(s, "\n")
	}
	return nil
}

// hostProcs is a remote shell script that runs do, with $p set, for each
// process matching pat in the remote shell's network namespace.
func hostProcs(pat, do string) string {
	return "{ me=$(readlink /proc/$$/ns/net); for p in $(pgrep -f '" + pat + "'); do " +
		"[ \"$(readlink /proc/$p/ns/net 2>/dev/null)\" = \"$me\" ] && " + do + "; done; true; }"
}

// leftovers waits up to within until no process matching pat is left on
// any host (over ssh) and returns what is still there, by host.
func leftovers(t *testing.T, bed *testbed.Bed, pat string, within time.Duration) map[string][]string {
	t.Helper()
	deadline := time.Now().Add(within)
	left := map[string][]string{}
	for _, h := range bed.Names() {
		if ps := waitNone(t, bed, h, pat, deadline); len(ps) > 0 {
			left[h] = ps
		}
	}
	return left
}

// waitNone waits, until deadline, until no process matching pat is left
// on host, and returns what is still there.
func waitNone(t *testing.T, bed *testbed.Bed, host, pat string, deadline time.Time) []string {
	t.Helper()
	for {
		ps := pgrep(t, bed, host, pat)
		if len(ps) == 0 || time.Now().After(deadline) {
			return ps
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// agentPattern matches this test process's drover agents on the hosts.
func agentPattern() string {
	return "([.]cache/drover/" + droverSHA + "/drover|^" + regexp.QuoteMeta(droverBin) + ") agent"
}

// agentProper finds the pid of the agent on host. An agent may run as two
// processes with the same command line prefix, a guard and below it the
// agent proper: that is the one whose parent matches too, else the only
// one.
func agentProper(t *testing.T, bed *testbed.Bed, host string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := bed.SSH(ctx, host, hostProcs(agentPattern(), "echo $p $(ps -o ppid= -p $p)")).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh %s: find the agent: %v: %s", host, err, out)
	}
	parent := map[int]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var pid, ppid int
		if _, err := fmt.Sscan(line, &pid, &ppid); err == nil {
			parent[pid] = ppid
		}
	}
	var deepest []int
	for pid, ppid := range parent {
		if _, ok := parent[ppid]; ok {
			deepest = append(deepest, pid)
		}
	}
	switch {
	case len(deepest) == 1:
		return deepest[0]
	case len(deepest) == 0 && len(parent) == 1:
		for pid := range parent {
			return pid
		}
	}
	t.Fatalf("on %s, no single agent proper among the agent processes (pid: parent) %v", host, parent)
	return 0
}

// sendSignal sends sig (a kill(1) name) to pid on host over ssh and returns
// when, as the host's clock says (the hosts share this machine's), not when
// ssh came back: the time just before the kill, for what the signal causes
// (the node lost, its instances failed) may be logged before a clock read
// after it.
func sendSignal(t *testing.T, bed *testbed.Bed, host string, sig string, pid int) time.Time {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := bed.SSH(ctx, host, fmt.Sprintf("t=$(date +%%s%%N) && kill -%s %d && echo $t", sig, pid)).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh %s kill -%s %d: %v: %s", host, sig, pid, err, out)
	}
	ns, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		t.Fatalf("ssh %s kill -%s %d: %q is not a time", host, sig, pid, out)
	}
	return time.Unix(0, ns)
}

// killWithParent SIGKILLs pid on host and its parent (an agent proper and
// its guard) in one command, and returns when, as the host's clock says
// just before the kill (as sendSignal).
func killWithParent(t *testing.T, bed *testbed.Bed, host string, pid int) time.Time {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := fmt.Sprintf("p=$(ps -o ppid= -p %d) && [ $p -gt 1 ] && t=$(date +%%s%%N) && kill -KILL $p %d && echo $t", pid, pid)
	out, err := bed.SSH(ctx, host, cmd).CombinedOutput()
	ns, perr := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil || perr != nil {
		t.Fatalf("ssh %s: kill %d and its parent: %v: %q", host, pid, err, out)
	}
	return time.Unix(0, ns)
}

// noneLeft checks, on every host over ssh, that no job process (marker)
// and no agent of ours is left, allowing a few seconds for remote exits.
func noneLeft(t *testing.T, bed *testbed.Bed, marker string) {
	t.Helper()
	for what, pat := range map[string]string{"job process": pattern(marker), "drover agent": agentPattern()} {
		for h, ps := range leftovers(t, bed, pat, 10*time.Second) {
			t.Errorf("on %s, %s still running after the run:\n%s", h, what, strings.Join(ps, "\n"))
		}
	}
}

// killLeftovers kills (by pid) what matches marker on every host: a
// cleanup, so that a failed scenario leaves nothing behind.
func killLeftovers(t *testing.T, bed *testbed.Bed, marker string) {
	for _, h := range bed.Names() {
		var pids []string
		for _, line := range pgrep(t, bed, h, pattern(marker)) {
			if pid, _, ok := strings.Cut(line, " "); ok {
				pids = append(pids, pid)
			}
		}
		if len(pids) == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_ = bed.SSH(ctx, h, append([]string{"kill", "-9"}, pids...)...).Run()
		cancel()
	}
}

// cutLink takes host's link down on the bridge side; the returned func
// brings it back (also run by the cleanup, if the test did not).
func cutLink(t *testing.T, host string) func() {
	t.Helper()
	veth := vethPrefix + host
	if out, err := exec.Command("ip", "link", "set", veth, "down").CombinedOutput(); err != nil {
		t.Fatalf("ip link set %s down: %v: %s", veth, err, out)
	}
	restored := false
	restore := func() {
		if restored {
			return
		}
		restored = true
		if out, err := exec.Command("ip", "link", "set", veth, "up").CombinedOutput(); err != nil {
			t.Errorf("ip link set %s up: %v: %s", veth, err, out)
		}
	}
	t.Cleanup(restore)
	return restore
}

// netnsProcs lists the live processes in host's network namespace whose
// command line contains marker, read from this machine's /proc (the bed's
// hosts have their own network namespaces but share the pid namespace):
// the way to look at a host while its link is cut, or quicker than ssh.
func netnsProcs(host, marker string) []int {
	var want syscall.Stat_t
	if syscall.Stat("/run/netns/"+host, &want) != nil {
		return nil
	}
	ns := fmt.Sprintf("net:[%d]", want.Ino)
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || !bytes.Contains(cmdline, []byte(marker)) {
			continue
		}
		if link, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); err != nil || link != ns {
			continue
		}
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
			if i := bytes.LastIndexByte(st, ')'); i > 0 && len(st) > i+2 && (st[i+2] == 'Z' || st[i+2] == 'X') {
				continue
			}
		}
		pids = append(pids, pid)
	}
	return pids
}

// vmHWM reads the peak resident set size of pid, in bytes.
func vmHWM(pid int) (int64, bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(rest)
			if len(f) == 2 && f[1] == "kB" {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				return kb * 1024, err == nil
			}
		}
	}
	return 0, false
}

// isZeros reports whether r holds only zero bytes.
func isZeros(r io.Reader) (bool, error) {
	buf := make([]byte, 1<<20)
	for {
		n, err := r.Read(buf)
		for _, b := range buf[:n] {
			if b != 0 {
				return false, nil
			}
		}
		if err == io.EOF {
			return true, nil
		}
		if err != nil {
			return false, err
		}
	}
}
