package cli_test

// End-to-end tests of what drover serve shows to people and programs:
// names in the verbs and the Control API, gRPC reflection and health,
// the private dashboard and --json on the verbs. Each runs a real serve.

import (
	"context"
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/drover-hpc/drover/api/droverpb"
	"github.com/drover-hpc/drover/internal/creds"
)

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
	for _, bad := range []string{forged, "-rf", "", "..", "a\x00b", strings.Repeat("n", 256)} {
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
	s := startServe(t, home, "--grace", "20s")
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
	wantCode(t, droverHome(t, home, t.TempDir(), "start", "--node", nodeName, "--name", "stubborn", "--", "sh", "-c", "trap '' TERM; sleep 300"), 0)
	watch, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := watch.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first health watch: %v %v", r.GetStatus(), err)
	}
	shut := make(chan result, 1)
	go func() { shut <- droverHome(t, home, t.TempDir(), "shutdown") }()
	r, err := watch.Recv()
	if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health watch after shutdown: %v %v, want NOT_SERVING", r.GetStatus(), err)
	}
	select {
	case <-s.done:
		t.Errorf("serve exited before its grace was over:\n%s", s.stderr)
	default:
	}
	wantCode(t, <-shut, 0)
	if code := s.wait(t); code != 0 {
		t.Errorf("serve exit %d\n%s", code, s.stderr)
	}
}
