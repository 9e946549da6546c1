package cli_test

// End-to-end tests of what drover serve shows to people and programs:
// names in the verbs and the Control API, gRPC reflection and health,
// the private dashboard and --json on the verbs. Each runs a real serve.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/drover-hpc/drover/api/droverpb"
	"github.com/drover-hpc/drover/internal/cluster"
	"github.com/drover-hpc/drover/internal/creds"
)

// The test binary doubles as a plain HTTP client that another user runs:
// with DROVER_E2E_GET=URL it prints the status and body of a GET of URL,
// and with DROVER_E2E_READ=FILE whether it can read FILE, then exits.
func init() {
	url, file := os.Getenv("DROVER_E2E_GET"), os.Getenv("DROVER_E2E_READ")
	if url == "" && file == "" {
		return
	}
	if _, err := os.ReadFile(file); err != nil {
		fmt.Println("read: refused")
	} else {
		fmt.Println("read: ok")
	}
	resp, err := http.Get(url)
	if err != nil {
		fmt.Println("get:", err)
		os.Exit(1)
	}
	body, _ := io.ReadAll(resp.Body)
	fmt.Printf("status %d\n%s", resp.StatusCode, body)
	os.Exit(0)
}

// asNobody runs the test binary as user nobody to GET url and read file.
func asNobody(t *testing.T, url, file string) string {
	t.Helper()
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("user nobody: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The build's directories are root's alone: a copy nobody can run.
	dir, err := os.MkdirTemp("", "drover-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "client")
	if err := os.WriteFile(exe, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), backstop)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe)
	cmd.Dir = dir
	cmd.Env = []string{"DROVER_E2E_GET=" + url, "DROVER_E2E_READ=" + file, "GORACE=atexit_sleep_ms=0"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the client as nobody: %v\n%s", err, out)
	}
	return string(out)
}

// grpcConn dials s over mutual TLS with the client credentials of its
// serve.json, as a program in any language would.
func grpcConn(t *testing.T, s *server) *grpc.ClientConn {
	t.Helper()
	var c struct{ CA, Cert, Key string }
	if err := json.Unmarshal(s.info.Credentials, &c); err != nil {
		t.Fatal(err)
	}
	conf, err := (&creds.Bundle{CA: c.CA, Cert: c.Cert, Key: c.Key}).ClientTLS("")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("passthrough:///"+s.info.Address, grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// serveNode is the name of the one node of a local serve.
func serveNode(t *testing.T, home string) string {
	t.Helper()
	var nodes []struct{ Name string }
	r := droverHome(t, home, t.TempDir(), "nodes", "--json")
	wantCode(t, r, 0)
	if err := json.Unmarshal([]byte(r.stdout), &nodes); err != nil || len(nodes) != 1 {
		t.Fatalf("nodes --json: %v\n%s", err, r)
	}
	return nodes[0].Name
}

// Names that would forge lines or read as flags are refused by every verb
// (exit 2, nothing sent) and by the Control API (InvalidArgument); names
// in the documented set, MUSCLE3's among them, work.
func TestServeNamesChecked(t *testing.T) {
	t.Parallel()
	home := filepath.Join(t.TempDir(), "home")
	work := t.TempDir()
	s := startServe(t, home)
	nodeName := serveNode(t, home)
	run := func(args ...string) result {
		t.Helper()
		return droverHome(t, home, work, args...)
	}
	forged := "a\nb exit 0"
	for _, args := range [][]string{
		{"start", "--node", nodeName, "--name", forged, "--", "true"},
		{"start", "--node", nodeName, "--name=-rf", "--", "true"},
		{"start", "--node", nodeName, "--name", "a b", "--", "true"},
		{"start", "--node", nodeName, "--name", "x/y", "--", "true"},
		{"start", "--node", nodeName + "\nevil", "--name", "ok", "--", "true"},
		{"poll", forged},
		{"stop", forged},
		{"kill", forged},
		{"purge", forged},
		{"send", forged, "text"},
		{"logs", forged},
		{"logs", "fine", forged},
		{"env", "get", "--node", "n\x1b[2J", "HOME"},
		{"ports", "bind", "--node", "-x"},
	} {
		r := run(args...)
		wantOneLineError(t, r, 2, `invalid`)
		if r.stdout != "" {
			t.Errorf("%q printed %q", args, r.stdout)
		}
	}
	// Nothing was started under any of them.
	if r := run("poll"); r.code != 0 || r.stdout != "" {
		t.Errorf("poll after the refused starts:\n%s", r)
	}

	// The Control API refuses them too, whoever calls it.
	ctl := droverpb.NewControlClient(grpcConn(t, s))
	ctx, cancel := context.WithTimeout(context.Background(), backstop)
	defer cancel()
	for _, bad := range []string{forged, "-rf", "", "..", "a\x00b", strings.Repeat("n", cluster.MaxNameLen+1)} {
		_, err := ctl.Start(ctx, &droverpb.StartRequest{Node: nodeName, Name: bad, Args: []string{"true"}})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("Control.Start name %q: %v, want InvalidArgument", bad, err)
		} else if strings.ContainsAny(status.Convert(err).Message(), "\n\x00") {
			t.Errorf("Control.Start name %q: the message has the raw name: %q", bad, status.Convert(err).Message())
		}
	}

	// MUSCLE3's instance names are in the set; finished prints them as
	// they are.
	for _, name := range []string{"macro[3]", "micro[1][2]", "sim.3_x-y"} {
		wantCode(t, run("start", "--node", nodeName, "--name", name, "--", "true"), 0)
	}
	var got []string
	eventually(t, func() string {
		r := run("finished")
		wantCode(t, r, 0)
		for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
			if line != "" {
				got = append(got, line)
			}
		}
		if len(got) < 3 {
			return "finished so far: " + strings.Join(got, "; ")
		}
		return ""
	})
	slices.Sort(got)
	if want := []string{"macro[3] exit 0", "micro[1][2] exit 0", "sim.3_x-y exit 0"}; !slices.Equal(got, want) {
		t.Errorf("finished: %q, want %q", got, want)
	}
}

// grpcurl's "list" and a health probe work on serve's port, behind the
// same mutual TLS; the health turns NOT_SERVING once shutdown begins.
func TestServeReflectionAndHealth(t *testing.T) {
	t.Parallel()
	home := filepath.Join(t.TempDir(), "home")
	// A grace far longer than the test: it ends the stubborn process
	// itself once it has seen serve wait for it.
	s := startServe(t, home, "--grace", "120s")
	nodeName := serveNode(t, home)
	conn := grpcConn(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), backstop)
	defer cancel()

	// Reflection: the list of services.
	rs, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := rs.Recv()
	if err != nil {
		t.Fatalf("reflection list: %v", err)
	}
	var services []string
	for _, svc := range resp.GetListServicesResponse().GetService() {
		services = append(services, svc.GetName())
	}
	for _, want := range []string{"drover.v1.Control", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} {
		if !slices.Contains(services, want) {
			t.Errorf("reflection lists %q, want %s among them", services, want)
		}
	}
	// ... and the description of the Control service, for grpcurl describe.
	if err := rs.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "drover.v1.Control"}}); err != nil {
		t.Fatal(err)
	}
	if resp, err := rs.Recv(); err != nil || len(resp.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
		t.Errorf("reflection describe drover.v1.Control: %v %v", err, resp.GetErrorResponse())
	}
	rs.CloseSend()

	// Health: the server and the Control service.
	hc := healthpb.NewHealthClient(conn)
	for _, svc := range []string{"", "drover.v1.Control"} {
		r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health of %q: %v %v, want SERVING", svc, r.GetStatus(), err)
		}
	}
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "no.such.Service"}); status.Code(err) != codes.NotFound {
		t.Errorf("health of an unknown service: %v, want NotFound", err)
	}

	// Without credentials nothing answers, health included.
	plain, err := grpc.NewClient("passthrough:///"+s.info.Address, grpc.WithTransportCredentials(credentials.NewTLS(nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
	if _, err := healthpb.NewHealthClient(plain).Check(cctx, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.Unavailable {
		t.Errorf("health without credentials: %v, want Unavailable (handshake refused)", err)
	}
	ccancel()

	// A process that ignores SIGTERM holds the shutdown in its grace:
	// the watch sees NOT_SERVING while serve still runs.
	pidFile := filepath.Join(t.TempDir(), "stubborn.pid")
	wantCode(t, droverHome(t, home, t.TempDir(), "start", "--node", nodeName, "--name", "stubborn", "--", "sh", "-c", "trap '' TERM; echo $$ > "+pidFile+"; exec sleep 300"), 0)
	stubborn := 0
	for deadline := time.Now().Add(backstop); stubborn == 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if data, err := os.ReadFile(pidFile); err == nil && strings.HasSuffix(string(data), "\n") {
			stubborn, _ = strconv.Atoi(strings.TrimSpace(string(data)))
		}
	}
	if stubborn <= 0 {
		t.Fatalf("the stubborn process wrote no pid to %s", pidFile)
	}
	watch, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := watch.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first health watch: %v %v", r.GetStatus(), err)
	}
	// Not droverHome: it may call t.Fatal, which only the test's own
	// goroutine may.
	shutdown := exec.CommandContext(ctx, droverBin, "shutdown")
	shutdown.Env = append(testEnv(), "DROVER_HOME="+home)
	shut := make(chan error, 1)
	go func() { shut <- shutdown.Run() }()
	r, err := watch.Recv()
	if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health watch after shutdown: %v %v, want NOT_SERVING", r.GetStatus(), err)
	}
	select {
	case <-s.done:
		t.Errorf("serve exited before its grace was over:\n%s", s.stderr)
	default:
	}
	// Its own process group: serve would kill it so at the grace's end.
	if err := syscall.Kill(-stubborn, syscall.SIGKILL); err != nil {
		t.Errorf("kill the stubborn process group %d: %v", stubborn, err)
	}
	if err := <-shut; err != nil {
		t.Errorf("drover shutdown: %v", err)
	}
	if code := s.wait(t); code != 0 {
		t.Errorf("serve exit %d\n%s", code, s.stderr)
	}
}

// get sends a GET of d.base+path with the given Host header (d's own when
// ""), bearer token (none when "") and cookies; redirects are not
// followed. It returns the answer and its body.
func (d dash) send(t *testing.T, host, path, bearer string, cookies ...*http.Cookie) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest("GET", d.base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	for _, c := range cookies {
		req.AddCookie(c)
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// Nothing of the dashboard that shows names, arguments or output is served
// without serve's token: not to a program without it, not to another local
// user, not to a page of another site.
func TestServeDashboardPrivate(t *testing.T) {
	t.Parallel()
	home := filepath.Join(t.TempDir(), "home")
	s := startServe(t, home)
	d := s.dash()
	if s.info.Token == "" || s.info.Dashboard != s.info.HTTP+"/?token="+s.info.Token {
		t.Fatalf("serve.json: token %q, dashboard %q, http %q", s.info.Token, s.info.Dashboard, s.info.HTTP)
	}
	eventually(t, func() string {
		if !strings.Contains(s.stderr.String(), "dashboard at "+s.info.Dashboard+"\n") {
			return "serve does not print the dashboard URL:\n" + s.stderr.String()
		}
		return ""
	})
	nodeName := serveNode(t, home)
	wantCode(t, droverHome(t, home, t.TempDir(), "start", "--node", nodeName, "--name", "leaky", "--", "sh", "-c", "echo top-secret >&2"), 0)
	logs := "/api/logs?name=leaky&stream=stderr"
	eventually(t, func() string {
		if resp, body := d.send(t, "", logs, d.token); resp.StatusCode != 200 || body != "top-secret\n" {
			return fmt.Sprintf("logs with the bearer: %s %q", resp.Status, body)
		}
		return ""
	})

	private := []string{"/", "/api/state", logs, "/api/instance?name=leaky", "/metrics"}
	for _, p := range private {
		if resp, body := d.send(t, "", p, ""); resp.StatusCode != http.StatusUnauthorized || strings.Contains(body, "top-secret") || strings.Contains(body, "leaky") {
			t.Errorf("%s without the token: %s %q", p, resp.Status, body)
		}
		if resp, _ := d.send(t, "", p, d.token+"x"); resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s with a wrong token: %s", p, resp.Status)
		}
		if resp, _ := d.send(t, "", p, d.token); resp.StatusCode != 200 {
			t.Errorf("%s with the bearer: %s", p, resp.Status)
		}
		// A DNS-rebinding page: its own name in Host; even the token
		// does not help it.
		if resp, _ := d.send(t, "attacker.example:"+portOf(t, d.base), p, d.token); resp.StatusCode != http.StatusMisdirectedRequest {
			t.Errorf("%s with a foreign Host: %s", p, resp.Status)
		}
	}

	// The printed URL: the token becomes an HttpOnly, SameSite=Strict
	// cookie, and the browser goes on to / without it.
	resp, _ := d.send(t, "", "/?token="+d.token, "")
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		cookie = c
	}
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" {
		t.Errorf("the printed URL: %s, Location %q", resp.Status, resp.Header.Get("Location"))
	}
	if cookie == nil || !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode || cookie.Value != d.token {
		t.Fatalf("the printed URL's cookie: %v", resp.Header.Values("Set-Cookie"))
	}
	for _, p := range private {
		if resp, body := d.send(t, "", p, "", &http.Cookie{Name: cookie.Name, Value: cookie.Value}); resp.StatusCode != 200 {
			t.Errorf("%s with the cookie alone: %s %.200q", p, resp.Status, body)
		}
	}
	if _, body := d.send(t, "", logs, "", &http.Cookie{Name: cookie.Name, Value: cookie.Value}); body != "top-secret\n" {
		t.Errorf("logs with the cookie: %q", body)
	}

	// Another user of this machine: serve.json is not theirs to read,
	// and the dashboard refuses them.
	out := asNobody(t, d.base+logs, filepath.Join(home, "serve.json"))
	if !strings.HasPrefix(out, "read: refused\nstatus 401\n") || strings.Contains(out, "top-secret") {
		t.Errorf("user nobody reading the logs:\n%s", out)
	}
}

func portOf(t *testing.T, base string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// A dashboard on every interface says so, prints the address it listens
// on, answers to the names of --http-host, and --metrics-open opens
// /metrics alone.
func TestServeDashboardEveryInterface(t *testing.T) {
	t.Parallel()
	home := filepath.Join(t.TempDir(), "home")
	s := startServe(t, home, "--http", "0.0.0.0:0", "--http-host", "drover.example", "--metrics-open")
	port := portOf(t, s.info.HTTP)
	hostname, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	if want := "http://" + net.JoinHostPort(hostname, port); s.info.HTTP != want {
		t.Errorf("serve.json http %q, want %q", s.info.HTTP, want)
	}
	eventually(t, func() string {
		if !strings.Contains(s.stderr.String(), "dashboard at "+s.info.Dashboard+"\n") {
			return "serve does not print the dashboard URL:\n" + s.stderr.String()
		}
		return ""
	})
	warn := regexp.MustCompile(`(?m)^drover serve: warning: --http 0\.0\.0\.0:` + port + ` listens on every interface: anyone who can reach port ` + port + ` `)
	if !warn.MatchString(s.stderr.String()) {
		t.Errorf("no warning about every interface:\n%s", s.stderr)
	}
	// Reached over loopback (the tests stay there), by the names it
	// answers to.
	d := dash{"http://" + net.JoinHostPort("127.0.0.1", port), s.info.Token}
	for _, host := range []string{"", "drover.example:" + port, "DROVER.example", "localhost:" + port, net.JoinHostPort(hostname, port)} {
		if resp, _ := d.send(t, host, "/api/state", d.token); resp.StatusCode != 200 {
			t.Errorf("Host %q: %s", host, resp.Status)
		}
	}
	if resp, _ := d.send(t, "evil.example:"+port, "/api/state", d.token); resp.StatusCode != http.StatusMisdirectedRequest {
		t.Errorf("foreign Host: %s", resp.Status)
	}
	if resp, body := d.send(t, "", "/metrics", ""); resp.StatusCode != 200 || !strings.Contains(body, "drover_") {
		t.Errorf("/metrics with --metrics-open: %s", resp.Status)
	}
	if resp, _ := d.send(t, "", "/api/state", ""); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("/api/state with --metrics-open but no token: %s", resp.Status)
	}

	// drover run's dashboard says the same.
	r := drover(t, t.TempDir(), "run", "--dashboard=0.0.0.0:0", "--progress", "none", "--out", "out", "--", "true")
	wantCode(t, r, 0)
	if !regexp.MustCompile(`drover: warning: --dashboard 0\.0\.0\.0:\d+ listens on every interface`).MatchString(r.stderr) ||
		!regexp.MustCompile(`drover: dashboard at http://[^/]+:\d+/\?token=[A-Za-z0-9_-]{43}\n`).MatchString(r.stderr) {
		t.Errorf("drover run --dashboard=0.0.0.0:0:\n%s", r)
	}
}

// oneDoc parses out as exactly one JSON document into v.
func oneDoc(t *testing.T, what, out string, v any) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v\n%s", what, err, out)
	}
	if err := dec.Decode(new(json.RawMessage)); err != io.EOF {
		t.Fatalf("%s: more than one document (%v)\n%s", what, err, out)
	}
}

// exitDoc is an exit as --json prints it; every field must be there.
type exitDoc struct {
	Running  *bool   `json:"running"`
	Name     string  `json:"name"`
	Node     string  `json:"node"`
	ExitCode *int    `json:"exit_code"`
	Signal   *string `json:"signal"`
	Error    *string `json:"error"`
	Start    *string `json:"start"`
	End      *string `json:"end"`
}

var nanoTime = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}(Z|[+-]\d\d:\d\d)$`)

// checkTimes checks that start and end are RFC 3339 with nanoseconds, in
// order.
func checkTimes(t *testing.T, x exitDoc) {
	t.Helper()
	if x.Start == nil || x.End == nil || !nanoTime.MatchString(*x.Start) || !nanoTime.MatchString(*x.End) {
		t.Errorf("%s: start %v end %v: want RFC 3339 with nanoseconds", x.Name, x.Start, x.End)
		return
	}
	s, err1 := time.Parse(time.RFC3339Nano, *x.Start)
	e, err2 := time.Parse(time.RFC3339Nano, *x.End)
	if err1 != nil || err2 != nil || e.Before(s) {
		t.Errorf("%s: start %s end %s (%v %v)", x.Name, *x.Start, *x.End, err1, err2)
	}
}

// Every verb that prints takes --json and prints one document.
func TestServeVerbsJSON(t *testing.T) {
	t.Parallel()
	home := filepath.Join(t.TempDir(), "home")
	work := t.TempDir()
	startServe(t, home)
	ok := func(args ...string) string {
		t.Helper()
		r := droverHome(t, home, work, args...)
		wantCode(t, r, 0)
		return r.stdout
	}

	var nodes []struct {
		Name          string          `json:"name"`
		State         string          `json:"state"`
		Error         string          `json:"error"`
		Resources     json.RawMessage `json:"resources"`
		BusyHWThreads []int           `json:"busy_hwthreads"`
		BusyGPUs      []string        `json:"busy_gpus"`
		Processes     int             `json:"processes"`
		Restarts      int             `json:"restarts"`
		LastReason    string          `json:"last_reason"`
		RTTNanos      int64           `json:"rtt_ns"`
	}
	oneDoc(t, "nodes", ok("nodes", "--json"), &nodes)
	if len(nodes) != 1 || nodes[0].State != "up" {
		t.Fatalf("nodes --json: %+v", nodes)
	}
	nodeName := nodes[0].Name

	var started struct {
		Name      string   `json:"name"`
		Node      string   `json:"node"`
		PID       int      `json:"pid"`
		HWThreads []int    `json:"hwthreads"`
		GPUs      []string `json:"gpus"`
	}
	oneDoc(t, "start", ok("start", "--json", "--node", nodeName, "--name", "bound", "--cores", "1", "--", "sleep", "300"), &started)
	if started.Name != "bound" || started.Node != nodeName || started.PID <= 0 || len(started.HWThreads) == 0 {
		t.Errorf("start --json: %+v", started)
	}
	oneDoc(t, "start", ok("start", "--json", "--node", nodeName, "--name", "quick", "--", "sh", "-c", "exit 3"), &started)
	if started.Name != "quick" || started.HWThreads == nil || len(started.HWThreads) != 0 {
		t.Errorf("start --json unbound: %+v", started)
	}

	// poll: one running, one ended with a status.
	var polled []exitDoc
	eventually(t, func() string {
		polled = nil
		oneDoc(t, "poll", ok("poll", "--json"), &polled)
		if len(polled) != 2 || polled[1].Running == nil || *polled[1].Running {
			return fmt.Sprintf("poll --json: %s", ok("poll", "--json"))
		}
		return ""
	})
	slices.SortFunc(polled, func(a, b exitDoc) int { return strings.Compare(a.Name, b.Name) })
	if b := polled[0]; b.Name != "bound" || !*b.Running || b.ExitCode != nil || b.End != nil {
		t.Errorf("poll --json of a running process: %+v", b)
	}
	if q := polled[1]; q.Name != "quick" || q.ExitCode == nil || *q.ExitCode != 3 || q.Signal == nil || *q.Signal != "" || q.Node != nodeName {
		t.Errorf("poll --json of an ended process: %+v", q)
	} else {
		checkTimes(t, q)
	}

	// finished: each exit once, a signal as a signal.
	ok("kill", "bound")
	var exits []exitDoc
	eventually(t, func() string {
		var more []exitDoc
		oneDoc(t, "finished", ok("finished", "--json"), &more)
		exits = append(exits, more...)
		if len(exits) < 2 {
			return fmt.Sprintf("finished so far: %+v", exits)
		}
		return ""
	})
	slices.SortFunc(exits, func(a, b exitDoc) int { return strings.Compare(a.Name, b.Name) })
	if len(exits) != 2 || exits[0].Name != "bound" || exits[0].ExitCode != nil || exits[0].Signal == nil || *exits[0].Signal != "SIGKILL" ||
		exits[1].Name != "quick" || exits[1].ExitCode == nil || *exits[1].ExitCode != 3 || exits[0].Running != nil {
		t.Errorf("finished --json: %+v", exits)
	}
	for _, x := range exits {
		if x.Error == nil || x.Node != nodeName {
			t.Errorf("finished --json lacks fields: %+v", x)
		}
		checkTimes(t, x)
	}
	if out := ok("finished", "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("finished --json with nothing new: %q", out)
	}

	// env get, set and not.
	ok("env", "set", "--node", nodeName, "GREETING", "hello world")
	var env struct {
		Node  string  `json:"node"`
		Key   string  `json:"key"`
		Set   bool    `json:"set"`
		Value *string `json:"value"`
	}
	oneDoc(t, "env get", ok("env", "get", "--json", "--node", nodeName, "GREETING"), &env)
	if env.Node != nodeName || env.Key != "GREETING" || !env.Set || env.Value == nil || *env.Value != "hello world" {
		t.Errorf("env get --json: %+v", env)
	}
	r := droverHome(t, home, work, "env", "get", "--json", "--node", nodeName, "NO_SUCH_VARIABLE_HERE")
	wantCode(t, r, 1)
	oneDoc(t, "env get unset", r.stdout, &env)
	if env.Set || env.Value != nil {
		t.Errorf("env get --json of an unset variable: %+v", env)
	}

	// ports bind.
	var ports struct {
		Node     string `json:"node"`
		Protocol string `json:"protocol"`
		Ports    []int  `json:"ports"`
	}
	oneDoc(t, "ports bind", ok("ports", "bind", "--json", "--node", nodeName, "-n", "2", "--udp"), &ports)
	if ports.Node != nodeName || ports.Protocol != "udp" || len(ports.Ports) != 2 || ports.Ports[0] == ports.Ports[1] {
		t.Errorf("ports bind --json: %+v", ports)
	}
	ok(append([]string{"ports", "release", "--udp", "--node", nodeName}, strconv.Itoa(ports.Ports[0]), strconv.Itoa(ports.Ports[1]))...)

	// submit and jobs.
	writeFile(t, work, "jobs.yaml", "jobs:\n  - name: hi\n    command: [\"true\"]\n    repeat: 2\n")
	var sub struct {
		Instances []string `json:"instances"`
	}
	oneDoc(t, "submit", ok("submit", "--json", "jobs.yaml"), &sub)
	if !slices.Equal(sub.Instances, []string{"1.hi.0", "1.hi.1"}) {
		t.Errorf("submit --json: %+v", sub)
	}
	eventually(t, func() string {
		var jobs []struct {
			Submission int    `json:"submission"`
			Instance   string `json:"instance"`
			State      string `json:"state"`
			Node       string `json:"node"`
			Attempts   int    `json:"attempts"`
			Outcome    string `json:"outcome"`
			OutDir     string `json:"out_dir"`
		}
		out := ok("jobs", "--json")
		oneDoc(t, "jobs", out, &jobs)
		if len(jobs) != 2 || jobs[0].State != "succeeded" || jobs[1].State != "succeeded" || jobs[0].Submission != 1 {
			return "jobs --json: " + out
		}
		return ""
	})
}
