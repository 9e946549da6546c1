package launch

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Agent is a launched agent, whatever launched it.
type Agent interface {
	Done() <-chan struct{}
	Err() error
	// Ended reports, once Done is closed, whether the agent itself is
	// known to have ended, as opposed to the launcher having lost sight of
	// it (an ssh connection that failed): then its nodes are lost at once,
	// not after the node timeout.
	Ended() bool
	Stop(ctx context.Context) error
	Kill()
}

var _ Agent = (*Child)(nil)

// Binary is the local drover executable that remote agents run: its
// SHA-256 names the remote copy, so a host runs exactly this build.
type Binary struct {
	Path   string
	Size   int64
	SHA256 string // hex
}

// LocalBinary hashes the executable at path.
func LocalBinary(path string) (*Binary, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("agent binary: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return nil, fmt.Errorf("agent binary %s: %w", path, err)
	}
	return &Binary{Path: path, Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// helloPrefix starts the first line the remote script prints.
const helloPrefix = "drover-hello "

// What the remote script answers a host lacking the binary: installed
// (from stdin), found (looked again and another host sharing the file
// system had installed it), or still needed.
const (
	installedLine = "drover-installed"
	foundLine     = "drover-found"
	needLine      = "drover-need"
)

// Hello is what the remote script reports before it runs the agent.
type Hello struct {
	OS       string // uname -s
	Machine  string // uname -m
	Arch     string // Machine as a GOARCH ("" when unknown)
	Hostname string // the node name
	Client   string // this machine's address as the host sees it ($SSH_CONNECTION); "" when unknown
	Have     bool   // the host already has this exact binary
}

// ParseHello parses the remote script's line:
// "drover-hello 1 OS MACHINE HOSTNAME CLIENT have|need".
func ParseHello(line string) (Hello, error) {
	rest, ok := strings.CutPrefix(strings.TrimRight(line, "\r\n"), helloPrefix)
	if !ok {
		return Hello{}, fmt.Errorf("not a drover hello line: %q", line)
	}
	f := strings.Fields(rest)
	if len(f) != 6 {
		return Hello{}, fmt.Errorf("malformed drover hello line %q (a login script printing to stdout can break it)", line)
	}
	if f[0] != "1" {
		return Hello{}, fmt.Errorf("drover hello line version %q, want 1", f[0])
	}
	h := Hello{OS: f[1], Machine: f[2], Arch: GoArch(f[2]), Hostname: f[3], Client: f[4]}
	if h.Client == "-" {
		h.Client = ""
	}
	switch f[5] {
	case "have":
		h.Have = true
	case "need":
	default:
		return Hello{}, fmt.Errorf("drover hello line %q: want have or need, got %q", line, f[5])
	}
	return h, nil
}

// GoArch maps `uname -m` to GOARCH; "" when unknown.
func GoArch(machine string) string {
	switch machine {
	case "x86_64", "amd64":
		return "amd64"
	case "aarch64", "arm64", "armv8l":
		return "arm64"
	case "i386", "i486", "i586", "i686":
		return "386"
	case "armv6l", "armv7l":
		return "arm"
	case "ppc64le", "ppc64", "s390x", "riscv64", "loong64":
		return machine
	case "mips64":
		return "mips64"
	}
	return ""
}

// Check refuses a host that cannot run this build.
func (h Hello) Check() error {
	if h.OS != "Linux" {
		return fmt.Errorf("host runs %s; this drover is built for linux/%s", h.OS, runtime.GOARCH)
	}
	if h.Arch != runtime.GOARCH {
		return fmt.Errorf("host is %s (%s); this drover is built for linux/%s: run a manager built for that architecture", h.Machine, orUnknown(h.Arch), runtime.GOARCH)
	}
	if h.Hostname == "" {
		return errors.New("host reported no hostname")
	}
	return nil
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown to Go"
	}
	return s
}

// RemoteScript is the shell command run on a host: it prints the hello
// line; when the host lacks the binary it reads commands from stdin:
// "check" looks again (another host sharing this file system may have
// installed it meanwhile: foundLine, else needLine), "send" installs it
// from stdin (exactly Size bytes, checked against the SHA-256, put in
// place with an atomic rename so concurrent runs cannot see half a file:
// installedLine). Then it runs the agent, which reads its config from the
// rest of stdin. Not exec: a signal that kills the agent (its guard) then
// reaches ssh as the shell's status 128+N, so the manager knows the agent
// ended, where ssh would report 255, the same as a broken connection. It is one line without single
// quotes or "!" so any login shell passes it to sh intact.
func RemoteScript(b *Binary) string {
	return strings.Join([]string{
		`d="${XDG_CACHE_HOME:-$HOME/.cache}/drover/` + b.SHA256 + `"`,
		`b="$d/drover"`,
		`c="${SSH_CONNECTION%% *}"`,
		`s=need`,
		`if [ -x "$b" ]; then s=have; fi`,
		`h=$(hostname 2>/dev/null || uname -n)`,
		`echo "` + helloPrefix + `1 $(uname -s) $(uname -m) $h ${c:--} $s"`,
		`while [ $s = need ]; do ` +
			`read -r w || exit 97; ` +
			`if [ "$w" = check ]; then if [ -x "$b" ]; then s=have; echo ` + foundLine + `; else echo ` + needLine + `; fi; continue; fi; ` +
			`{ mkdir -p "$d" && t=$(mktemp "$d/.drover.XXXXXX"); } || exit 97; ` +
			`head -c ` + strconv.FormatInt(b.Size, 10) + ` >"$t"; ` +
			`if [ "$(sha256sum <"$t" | cut -d" " -f1)" = ` + b.SHA256 + ` ] && chmod 755 "$t" && mv -f "$t" "$b"; then s=have; echo ` + installedLine + `; ` +
			`else rm -f "$t"; echo "drover: could not install the agent binary in $d (short or damaged copy, or no space)" >&2; exit 97; fi; ` +
			`done`,
		`"$b" agent`,
	}, "; ")
}

// ShellQuote quotes s for a POSIX shell.
func ShellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// SSHOptions configure StartSSH.
type SSHOptions struct {
	SSH          string    // the ssh program; "" = "ssh"
	ConfigFile   string    // passed as -F when set
	Binary       *Binary   // this drover, run (and installed when missing) on the host
	Logs         io.Writer // the agent's own log once it runs; nil = discard
	HelloTimeout time.Duration
	// Deploys, shared by the starts of one launch, lets hosts that share
	// a file system share one copy of the binary; nil: each its own.
	Deploys *Deploys
	// ConnectTimeout bounds ssh's connection and its SSH handshake
	// (ConnectTimeout=, whole seconds, at least 1); 0 leaves it to ssh and
	// its config.
	ConnectTimeout time.Duration
}

// SSHCommand is the ssh invocation that runs the remote script on dest.
func SSHCommand(opts SSHOptions, dest string) (*exec.Cmd, error) {
	if dest == "" || strings.HasPrefix(dest, "-") || strings.ContainsAny(dest, " \t\n") {
		return nil, fmt.Errorf("bad host %q", dest)
	}
	prog := opts.SSH
	if prog == "" {
		prog = "ssh"
	}
	var args []string
	if opts.ConfigFile != "" {
		args = append(args, "-F", opts.ConfigFile)
	}
	if t := opts.ConnectTimeout; t > 0 {
		// A host that accepts the connection and never speaks SSH would
		// otherwise hold its start for as long as the kernel keeps trying.
		args = append(args, "-o", "ConnectTimeout="+strconv.FormatInt(int64((t+time.Second-1)/time.Second), 10))
	}
	// BatchMode: never prompt for a password or a host key; -T: no tty,
	// so stdin is a clean byte stream; LogLevel=ERROR keeps "Permanently
	// added" chatter out of the logs; the alive checks end a dead
	// connection, and the agent then sees its stdin end.
	args = append(args, "-T", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
		"-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3",
		dest, "sh -c "+ShellQuote(RemoteScript(opts.Binary)))
	return exec.Command(prog, args...), nil
}

// Remote is an agent running on a host over one ssh connection.
type Remote struct {
	Host     string
	Hello    Hello
	Deployed bool // the binary was copied to the host on this start
	Found    bool // it lacked the binary, then found the copy another host of the launch made (a shared file system)

	cmd   *exec.Cmd
	stdin *os.File
	once  sync.Once
	done  chan struct{}
	err   error
	tail  *tailBuffer
}

// SSHError is a host that could not be reached, authenticated or used.
type SSHError struct {
	Host   string
	Reason string
}

func (e *SSHError) Error() string { return e.Host + ": " + e.Reason }

// StartSSH connects to dest, installs the binary when the host lacks it,
// asks configure for the agent's config (it gets the host's hello: its
// name and the address it sees this machine at) and hands it over. stdin
// stays open as the agent's lifeline. Errors are *SSHError with ssh's own
// reason when ssh failed.
func StartSSH(ctx context.Context, opts SSHOptions, dest string, configure func(Hello) (*AgentConfig, error)) (*Remote, error) {
	fail := func(format string, a ...any) error {
		return &SSHError{Host: dest, Reason: fmt.Sprintf(format, a...)}
	}
	cmd, err := SSHCommand(opts, dest)
	if err != nil {
		return nil, fail("%v", err)
	}
	if opts.HelloTimeout <= 0 {
		opts.HelloTimeout = max(30*time.Second, opts.ConnectTimeout+10*time.Second)
	}
	logs := opts.Logs
	if logs == nil {
		logs = io.Discard
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, fail("%v", err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, fail("%v", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		outR.Close()
		outW.Close()
		return nil, fail("%v", err)
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	// Own process group: Ctrl-C is the manager's to handle, which then
	// shuts the agents down in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	inR.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		errR.Close()
		return nil, fail("start ssh: %v", err)
	}
	r := &Remote{Host: dest, cmd: cmd, stdin: inW, done: make(chan struct{}), tail: &tailBuffer{max: 4096}}

	// stderr: kept (the tail) for the failure reason; passed on to the
	// logs once the agent runs.
	stderrDone := make(chan struct{})
	go func() {
		defer close(stderrDone)
		_, _ = io.Copy(r.tail, errR)
		errR.Close()
	}()
	hello := make(chan Hello, 1)
	badHello := make(chan error, 1)
	// The script's answers while it lacks the binary, "" when its output
	// ended: one per command (check, send) and the end, so the reader
	// never blocks on a start that gave up.
	answers := make(chan string, 3)
	go func() {
		defer outR.Close()
		br := bufio.NewReaderSize(outR, 4096)
		for range 256 { // login scripts may print lines before ours
			line, err := br.ReadString('\n')
			if strings.HasPrefix(line, helloPrefix) {
				h, perr := ParseHello(line)
				if perr != nil {
					badHello <- perr
				} else {
					hello <- h
				}
				if perr == nil && !h.Have {
					for { // "need" asks for another command
						line, _ := br.ReadString('\n')
						answer := strings.TrimSpace(line)
						answers <- answer
						if answer != needLine {
							break
						}
					}
				}
				_, _ = io.Copy(logs, br)
				return
			}
			if err != nil {
				return
			}
		}
		badHello <- errors.New("no drover hello line in the first 256 lines of output")
		_, _ = io.Copy(io.Discard, br)
	}()
	go func() {
		werr := cmd.Wait()
		select { // the stderr tail must be complete for the reason
		case <-stderrDone:
		case <-time.After(2 * time.Second):
		}
		r.err = werr
		close(r.done)
	}()

	timer := time.NewTimer(opts.HelloTimeout)
	defer timer.Stop()
	select {
	case h := <-hello:
		r.Hello = h
	case err := <-badHello:
		r.Kill()
		return nil, fail("%v", err)
	case <-r.done:
		select {
		case h := <-hello: // the agent ran and has ended already
			r.Hello = h
			return nil, fail("the agent exited at once (%v)%s", r.err, r.tailSuffix())
		default:
		}
		reason := r.exitReason()
		if t := opts.ConnectTimeout; t > 0 && strings.Contains(reason, "timed out") {
			reason += fmt.Sprintf(" (gave up after %s: --ssh-timeout)", t)
		}
		return nil, &SSHError{Host: dest, Reason: reason}
	case <-timer.C:
		r.Kill()
		return nil, fail("no answer within %s%s", opts.HelloTimeout, r.tailSuffix())
	case <-ctx.Done():
		r.Kill()
		return nil, fail("%v", context.Cause(ctx))
	}
	if err := r.Hello.Check(); err != nil {
		r.Kill()
		return nil, fail("%v", err)
	}
	if !r.Hello.Have {
		if err := r.install(ctx, opts, answers); err != nil {
			r.Kill()
			if ctx.Err() != nil {
				return nil, fail("%v", context.Cause(ctx))
			}
			return nil, fail("copy the agent binary: %v%s", err, r.tailSuffix())
		}
	}
	cfg, err := configure(r.Hello)
	if err != nil {
		r.Kill()
		return nil, fail("%v", err)
	}
	if err := json.NewEncoder(inW).Encode(cfg); err != nil {
		r.Kill()
		return nil, fail("hand over the agent config: %v%s", err, r.tailSuffix())
	}
	// From here on the agent's log is the host's stderr.
	r.tail.forward(logs)
	return r, nil
}

// Deploys lets the hosts of one launch share a copy of the binary. The
// first host that lacks it is sent it; the others wait until that copy
// has ended, look again, and are sent their own only if they still lack
// it. Where hosts share a home directory (on NFS, the rule on clusters)
// one copy serves them all, where there would be one per host; where
// they do not, their copies start one copy later. The zero value is
// ready; a nil *Deploys sends every host its own.
type Deploys struct {
	mu    sync.Mutex
	ended chan struct{} // made by the first copy, closed when it ends
}

// turn returns nil and a done func to call when the copy has ended, for
// the first copy, or the channel that closes then for the others.
func (d *Deploys) turn() (wait <-chan struct{}, done func()) {
	if d == nil {
		return nil, func() {}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ended != nil {
		return d.ended, func() {}
	}
	ended := make(chan struct{})
	d.ended = ended
	return nil, func() { close(ended) }
}

// testHookWaitCopy, when set, is called as a host starts waiting for
// another host's copy.
var testHookWaitCopy func(host string)

// install puts the binary on a host whose script said it lacks it (see
// Deploys and RemoteScript) and sets r.Found or r.Deployed.
func (r *Remote) install(ctx context.Context, opts SSHOptions, answers <-chan string) error {
	wait, done := opts.Deploys.turn()
	defer done()
	if wait != nil {
		if testHookWaitCopy != nil {
			testHookWaitCopy(r.Host)
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return ctx.Err()
		}
		switch a, err := r.ask(ctx, "check", opts.HelloTimeout, answers); {
		case err != nil:
			return err
		case a == foundLine:
			r.Found = true
			return nil
		case a != needLine:
			return fmt.Errorf("unexpected answer %q", a)
		}
	}
	if err := r.sendBinary(opts.Binary); err != nil {
		return err
	}
	switch a, err := r.ask(ctx, "", opts.HelloTimeout, answers); {
	case err != nil:
		return err
	case a != installedLine:
		return fmt.Errorf("unexpected answer %q", a)
	}
	r.Deployed = true
	return nil
}

// ask sends the script cmd (none when empty) and waits up to patience for
// its answer.
func (r *Remote) ask(ctx context.Context, cmd string, patience time.Duration, answers <-chan string) (string, error) {
	if cmd != "" {
		if _, err := io.WriteString(r.stdin, cmd+"\n"); err != nil {
			return "", err
		}
	}
	timer := time.NewTimer(patience)
	defer timer.Stop()
	select {
	case a := <-answers:
		if a != "" {
			return a, nil
		}
		select { // the script exits with its reason on stderr
		case <-r.done:
		case <-time.After(2 * time.Second):
		}
		return "", errors.New("not installed")
	case <-timer.C:
		return "", fmt.Errorf("not installed after %s", patience)
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// sendBinary sends the script the send command and the binary.
func (r *Remote) sendBinary(b *Binary) error {
	f, err := os.Open(b.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := io.WriteString(r.stdin, "send\n"); err != nil {
		return err
	}
	n, err := io.Copy(r.stdin, io.LimitReader(f, b.Size))
	if err == nil && n != b.Size {
		err = fmt.Errorf("%s changed while being copied", b.Path)
	}
	return err
}

// exitReason explains why ssh ended before the agent ran.
func (r *Remote) exitReason() string {
	text := r.tail.lines()
	var ee *exec.ExitError
	switch {
	case errors.As(r.err, &ee) && ee.ExitCode() == 255:
		if text == "" {
			return "ssh failed (exit 255) without saying why"
		}
		return text
	case r.err == nil:
		return "the remote command ended before the agent started" + suffix(text)
	default:
		return fmt.Sprintf("remote command failed (%v)%s", r.err, suffix(text))
	}
}

func (r *Remote) tailSuffix() string { return suffix(r.tail.lines()) }

func suffix(s string) string {
	if s == "" {
		return ""
	}
	return ": " + s
}

// Done is closed when ssh has exited.
func (r *Remote) Done() <-chan struct{} { return r.done }

// Err is ssh's exit error (the remote agent's status, or 255 for ssh's own
// failures) with the last lines of stderr; valid after Done.
func (r *Remote) Err() error {
	if r.err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w%s", r.Host, r.err, r.tailSuffix())
}

// Ended reports whether ssh passed on the remote command's end: it exited
// by itself with a status other than 255, ssh's own failure (a broken
// connection among them, after which the agent may still run).
func (r *Remote) Ended() bool { return exitedBySelf(r.err, 255) }

// exitedBySelf reports whether a process whose Wait returned err exited by
// itself (not by a signal) with a status other than failed.
func exitedBySelf(err error, failed int) bool {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.Exited() && ee.ExitCode() != failed
	}
	return err == nil
}

// Stop closes the lifeline: the agent stops its processes and exits, and
// with it ssh. When ctx ends first, ssh is killed (the remote agent still
// sees its stdin end when the connection goes).
func (r *Remote) Stop(ctx context.Context) error {
	r.closeStdin()
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		r.Kill()
		return fmt.Errorf("stop agent on %s: %w", r.Host, ctx.Err())
	}
}

// Kill ends ssh at once and waits for it.
func (r *Remote) Kill() {
	r.closeStdin()
	_ = r.cmd.Process.Kill()
	<-r.done
}

func (r *Remote) closeStdin() { r.once.Do(func() { r.stdin.Close() }) }

// tailBuffer keeps the last max bytes written, and once forward is called
// passes everything on to a writer instead.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
	fw  io.Writer
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	if t.fw != nil {
		_, _ = t.fw.Write(p)
	}
	return len(p), nil
}

// forward sends what was kept, and all later writes, to w.
func (t *tailBuffer) forward(w io.Writer) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.buf) > 0 {
		_, _ = w.Write(t.buf)
	}
	t.fw = w
}

// lines is the kept text as one line: "a; b".
func (t *tailBuffer) lines() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for l := range strings.Lines(string(t.buf)) {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	if len(out) > 5 {
		out = out[len(out)-5:]
	}
	return strings.Join(out, "; ")
}
