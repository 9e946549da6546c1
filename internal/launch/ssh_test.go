package launch

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseHello(t *testing.T) {
	h, err := ParseHello("drover-hello 1 Linux x86_64 h1 10.231.0.1 have\n")
	if err != nil {
		t.Fatal(err)
	}
	want := Hello{OS: "Linux", Machine: "x86_64", Arch: "amd64", Hostname: "h1", Client: "10.231.0.1", Have: true}
	if h != want {
		t.Errorf("got %+v, want %+v", h, want)
	}
	h, err = ParseHello("drover-hello 1 Linux aarch64 n.example.org - need")
	if err != nil || h.Client != "" || h.Have || h.Arch != "arm64" || h.Hostname != "n.example.org" {
		t.Errorf("got %+v, %v", h, err)
	}
	h, err = ParseHello("drover-hello 1 Linux x86_64 h1 fe80::1%eth0 need")
	if err != nil || h.Client != "fe80::1%eth0" {
		t.Errorf("got %+v, %v", h, err)
	}
	for _, bad := range []string{
		"", "hello", "drover-hello", "drover-hello 2 Linux x86_64 h1 1.2.3.4 have",
		"drover-hello 1 Linux x86_64 h1 1.2.3.4", "drover-hello 1 Linux x86_64 h1 1.2.3.4 maybe",
		"drover-hello 1 Linux x86_64 h 1 1.2.3.4 have", " drover-hello 1 Linux x86_64 h1 1.2.3.4 have",
	} {
		if h, err := ParseHello(bad); err == nil {
			t.Errorf("ParseHello(%q) = %+v, want an error", bad, h)
		}
	}
}

func TestHelloCheck(t *testing.T) {
	mine := map[string]string{"amd64": "x86_64", "arm64": "aarch64"}[runtime.GOARCH]
	if mine == "" {
		t.Skip("needs amd64 or arm64, the only architectures the test knows")
	}
	if err := (Hello{OS: "Linux", Machine: mine, Arch: GoArch(mine), Hostname: "h"}).Check(); err != nil {
		t.Errorf("own arch refused: %v", err)
	}
	other := map[string]string{"amd64": "aarch64", "arm64": "x86_64"}[runtime.GOARCH]
	err := (Hello{OS: "Linux", Machine: other, Arch: GoArch(other), Hostname: "h"}).Check()
	if err == nil || !strings.Contains(err.Error(), other) || !strings.Contains(err.Error(), runtime.GOARCH) {
		t.Errorf("other arch: %v", err)
	}
	if err := (Hello{OS: "Darwin", Machine: mine, Arch: GoArch(mine), Hostname: "h"}).Check(); err == nil {
		t.Error("Darwin accepted")
	}
	if err := (Hello{OS: "Linux", Machine: "sparc64", Hostname: "h"}).Check(); err == nil {
		t.Error("unknown arch accepted")
	}
}

func TestRemoteScriptQuoting(t *testing.T) {
	s := RemoteScript(&Binary{Size: 10, SHA256: strings.Repeat("ab", 32)})
	if strings.ContainsAny(s, "'!\n") {
		t.Errorf("script has a single quote, ! or newline: %s", s)
	}
	if got := ShellQuote("it's"); got != `'it'\''s'` {
		t.Errorf("ShellQuote = %s", got)
	}
}

// fakeSSH writes an "ssh" that runs the remote command here, as sshd
// would through the login shell, with SSH_CONNECTION set and the cache
// under dir. A host named "down" fails like an unreachable one.
func fakeSSH(t *testing.T, dir string) string {
	t.Helper()
	return fakeSSHCache(t, dir, ShellQuote(filepath.Join(dir, "cache")))
}

// fakeSSHCache is fakeSSH with the cache at cache, a shell word that may
// use $host (the destination).
func fakeSSHCache(t *testing.T, dir, cache string) string {
	t.Helper()
	script := `#!/bin/sh
for a; do prev=$host; host=$cmd; cmd=$a; done
if [ "$host" = down ]; then echo "ssh: connect to host down port 22: Connection timed out" >&2; exit 255; fi
echo "motd noise from a login script"
export SSH_CONNECTION="127.0.0.7 40000 127.0.0.1 22" XDG_CACHE_HOME=` + cache + `
exec /bin/sh -c "$cmd"
`
	p := filepath.Join(dir, "ssh")
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// fakeAgent is the "binary" deployed: it saves its config and waits for
// stdin to end, as the real agent does.
func fakeAgent(t *testing.T, dir string) *Binary {
	t.Helper()
	p := filepath.Join(dir, "agent-src")
	script := "#!/bin/sh\nhead -n 1 > " + ShellQuote(filepath.Join(dir, "got-config")) + "\ncat >/dev/null\necho agent-ended >&2\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := LocalBinary(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestStartSSHDeploysOnceAndHandsOverConfig(t *testing.T) {
	for _, tool := range []string{"sha256sum", "head", "mktemp"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skip("needs", tool)
		}
	}
	dir := t.TempDir()
	opts := SSHOptions{SSH: fakeSSH(t, dir), Binary: fakeAgent(t, dir), HelloTimeout: 10 * time.Second}
	ctx := context.Background()
	var got Hello
	configure := func(h Hello) (*AgentConfig, error) {
		got = h
		return &AgentConfig{Manager: h.Client + ":1234", Node: h.Hostname}, nil
	}
	for round, wantDeploy := range []bool{true, false} {
		r, err := StartSSH(ctx, opts, "somehost", configure)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if r.Deployed != wantDeploy {
			t.Errorf("round %d: deployed %v, want %v", round, r.Deployed, wantDeploy)
		}
		host, _ := os.Hostname()
		if got.Client != "127.0.0.7" || got.Hostname == "" || (host != "" && got.Hostname != host) {
			t.Errorf("hello %+v", got)
		}
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := r.Stop(sctx); err != nil {
			t.Errorf("stop: %v", err)
		}
		cancel()
		data, err := os.ReadFile(filepath.Join(dir, "got-config"))
		if err != nil {
			t.Fatal(err)
		}
		var cfg AgentConfig
		if err := json.Unmarshal(data, &cfg); err != nil || cfg.Manager != "127.0.0.7:1234" {
			t.Errorf("agent got %q (%v)", data, err)
		}
		os.Remove(filepath.Join(dir, "got-config"))
	}
	installed := filepath.Join(dir, "cache", "drover", opts.Binary.SHA256, "drover")
	if fi, err := os.Stat(installed); err != nil || fi.Mode()&0o111 == 0 {
		t.Errorf("installed binary: %v", err)
	}
	leftovers, _ := filepath.Glob(filepath.Join(dir, "cache", "drover", opts.Binary.SHA256, ".drover.*"))
	if len(leftovers) > 0 {
		t.Errorf("temp files left: %v", leftovers)
	}
}

func TestStartSSHDamagedCopy(t *testing.T) {
	dir := t.TempDir()
	b := fakeAgent(t, dir)
	b.SHA256 = strings.Repeat("0", 64) // what arrives cannot match
	opts := SSHOptions{SSH: fakeSSH(t, dir), Binary: b, HelloTimeout: 10 * time.Second}
	_, err := StartSSH(context.Background(), opts, "somehost", func(h Hello) (*AgentConfig, error) {
		return &AgentConfig{Manager: "x:1", Node: h.Hostname}, nil
	})
	// The copy goes through; the check fails on the host and the script
	// exits before the agent: the launcher either sees the exit or a
	// broken pipe handing over the config.
	if err == nil {
		t.Fatal("damaged copy accepted")
	}
	t.Log(err)
}

func TestStartSSHUnreachable(t *testing.T) {
	dir := t.TempDir()
	opts := SSHOptions{SSH: fakeSSH(t, dir), Binary: fakeAgent(t, dir), HelloTimeout: 10 * time.Second}
	_, err := StartSSH(context.Background(), opts, "down", func(Hello) (*AgentConfig, error) {
		t.Error("configure called for an unreachable host")
		return nil, errors.New("no")
	})
	var se *SSHError
	if !errors.As(err, &se) || se.Host != "down" || !strings.Contains(se.Reason, "Connection timed out") {
		t.Errorf("got %v", err)
	}
}

func TestSSHCommandRefusesOptionHosts(t *testing.T) {
	for _, h := range []string{"", "-oProxyCommand=x", "a b"} {
		if _, err := SSHCommand(SSHOptions{Binary: &Binary{}}, h); err == nil {
			t.Errorf("host %q accepted", h)
		}
	}
}

// --ssh-timeout reaches ssh as ConnectTimeout in whole seconds, rounded
// up (ssh takes no fractions), and before the host; 0 leaves it to ssh.
func TestSSHCommandConnectTimeout(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want string
	}{{10 * time.Second, "ConnectTimeout=10"}, {1500 * time.Millisecond, "ConnectTimeout=2"}, {time.Millisecond, "ConnectTimeout=1"}, {0, ""}} {
		cmd, err := SSHCommand(SSHOptions{Binary: &Binary{}, ConnectTimeout: c.d}, "node1")
		if err != nil {
			t.Fatal(err)
		}
		host := slices.Index(cmd.Args, "node1")
		at := slices.IndexFunc(cmd.Args, func(a string) bool { return strings.HasPrefix(a, "ConnectTimeout=") })
		switch {
		case c.want == "" && at >= 0:
			t.Errorf("%v: ssh %q sets a ConnectTimeout", c.d, cmd.Args)
		case c.want != "" && (at < 1 || cmd.Args[at] != c.want || cmd.Args[at-1] != "-o" || at > host):
			t.Errorf("%v: ssh %q, want -o %s before the host", c.d, cmd.Args, c.want)
		}
	}
}

// startHosts starts the fake agent on hosts at once, with one Deploys,
// and returns what each start did; every agent is stopped at the end.
func startHosts(t *testing.T, opts SSHOptions, hosts []string) []*Remote {
	t.Helper()
	opts.Deploys = &Deploys{}
	rs := make([]*Remote, len(hosts))
	errs := make([]error, len(hosts))
	var wg sync.WaitGroup
	for i, h := range hosts {
		wg.Go(func() {
			rs[i], errs[i] = StartSSH(context.Background(), opts, h, func(h Hello) (*AgentConfig, error) {
				return &AgentConfig{Manager: h.Client + ":1234", Node: h.Hostname}, nil
			})
		})
	}
	wg.Wait()
	for i, r := range rs {
		if errs[i] != nil {
			t.Fatalf("%s: %v", hosts[i], errs[i])
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := r.Stop(ctx); err != nil {
				t.Errorf("stop %s: %v", r.Host, err)
			}
		})
	}
	return rs
}

// count tells how many starts copied the binary and how many found it.
func count(rs []*Remote) (deployed, found int) {
	for _, r := range rs {
		if r.Deployed {
			deployed++
		}
		if r.Found {
			found++
		}
	}
	return deployed, found
}

func TestHostsSharingAFileSystemShareOneCopy(t *testing.T) {
	dir := t.TempDir()
	opts := SSHOptions{SSH: fakeSSH(t, dir), Binary: fakeAgent(t, dir), HelloTimeout: 10 * time.Second}
	rs := startHosts(t, opts, []string{"n1", "n2", "n3", "n4"})
	if d, f := count(rs); d != 1 || f != 3 {
		t.Errorf("one cache for 4 hosts: %d copies and %d found, want 1 and 3", d, f)
	}
}

func TestHostsWithTheirOwnFileSystemsEachGetACopy(t *testing.T) {
	dir := t.TempDir()
	opts := SSHOptions{SSH: fakeSSHCache(t, dir, ShellQuote(dir)+`/cache-"$host"`), Binary: fakeAgent(t, dir), HelloTimeout: 10 * time.Second}
	hosts := []string{"n1", "n2", "n3"}
	rs := startHosts(t, opts, hosts)
	if d, f := count(rs); d != 3 || f != 0 {
		t.Errorf("a cache per host: %d copies and %d found, want 3 and 0", d, f)
	}
	for _, h := range hosts {
		if _, err := os.Stat(filepath.Join(dir, "cache-"+h, "drover", opts.Binary.SHA256, "drover")); err != nil {
			t.Errorf("%s: %v", h, err)
		}
	}
}

// A host waiting for another's copy when the launch is given up reports
// why it was given up, not a failed copy.
func TestWaitForACopyEndsWithTheLaunch(t *testing.T) {
	dir := t.TempDir()
	opts := SSHOptions{SSH: fakeSSH(t, dir), Binary: fakeAgent(t, dir), HelloTimeout: 10 * time.Second, Deploys: &Deploys{}}
	if wait, _ := opts.Deploys.turn(); wait != nil { // a first copy that never ends
		t.Fatal("not the first copy")
	}
	waiting := make(chan string, 1)
	testHookWaitCopy = func(host string) { waiting <- host }
	t.Cleanup(func() { testHookWaitCopy = nil })
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	errc := make(chan error, 1)
	go func() {
		_, err := StartSSH(ctx, opts, "n1", func(h Hello) (*AgentConfig, error) {
			return &AgentConfig{Manager: "x:1", Node: h.Hostname}, nil
		})
		errc <- err
	}()
	select {
	case <-waiting:
	case err := <-errc:
		t.Fatalf("the start ended before it waited for the copy: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the host did not wait for the first copy within 30 s")
	}
	cancel(errors.New("the run ended before it came up"))
	err := <-errc
	if err == nil || !strings.Contains(err.Error(), "the run ended before it came up") || strings.Contains(err.Error(), "copy") {
		t.Errorf("got %v", err)
	}
}
