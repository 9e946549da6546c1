package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/drover-hpc/drover/client"
	"github.com/drover-hpc/drover/internal/agent"
	"github.com/drover-hpc/drover/internal/cluster"
	"github.com/drover-hpc/drover/internal/control"
	"github.com/drover-hpc/drover/internal/creds"
	"github.com/drover-hpc/drover/internal/topology"
)

// Start a program on node1 of the drover serve of $DROVER_HOME and wait
// for its exit. README.md shows this body as it is (a test there checks).
func Example() {
	ctx := context.Background()
	c, err := client.Dial(ctx, client.Options{Group: "my-sim"})
	if err != nil {
		log.Fatal(err) // errors.Is(err, client.ErrNoServe): start one with drover serve
	}
	defer c.Close()
	res, err := c.Start(ctx, client.StartRequest{Node: "node1", Name: "sim", Args: []string{"sh", "-c", "echo step 1; exit 3"}})
	if err != nil {
		log.Fatal(err) // a *client.SpawnError says why the program could not start
	}
	fmt.Println("sim started on", res.Node)
	exits, err := c.Finished(ctx, time.Minute) // or c.WatchFinished(ctx, func(e client.Exit) error {...})
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range exits {
		fmt.Println(e.Name, e)
	}
	// Output:
	// sim started on node1
	// sim exit 3
}

// TestMain runs the tests, and the examples against a serve of their own,
// then looks for leaked goroutines.
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

// startExampleServe is the drover serve the examples dial: a real cluster
// with one in-process agent named node1 behind the control service over
// mutual TLS, its serve.json in a fresh DROVER_HOME, which it sets.
func startExampleServe() (stop func() error, err error) {
	tmp, err := os.MkdirTemp("", "drover-example-")
	if err != nil {
		return nil, err
	}
	fail := func(err error) (func() error, error) {
		os.RemoveAll(tmp)
		return nil, err
	}
	res, err := topology.Detect(topology.Options{})
	if err != nil {
		return fail(err)
	}
	res.Node = "node1"
	for _, d := range []string{"home", "scratch", "cluster"} {
		if err := os.Mkdir(tmp+"/"+d, 0o700); err != nil {
			return fail(err)
		}
	}
	a, err := agent.New(agent.Options{Name: "node1", Resources: res, Scratch: tmp + "/scratch"})
	if err != nil {
		return fail(err)
	}
	c := cluster.New(cluster.Options{Home: tmp + "/cluster", Grace: time.Second})
	c.AddNode(a)
	closeAll := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		err := errors.Join(c.Close(ctx), a.Shutdown(time.Second))
		os.RemoveAll(tmp)
		return err
	}
	ca, err := creds.NewCA()
	if err != nil {
		return nil, errors.Join(err, closeAll())
	}
	mgr, err := ca.Issue(creds.RoleManager, "manager", []string{"127.0.0.1"})
	if err != nil {
		return nil, errors.Join(err, closeAll())
	}
	cl, err := ca.Issue(creds.RoleClient, "example", nil)
	if err != nil {
		return nil, errors.Join(err, closeAll())
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, errors.Join(err, closeAll())
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(ca.ServerTLS(mgr))))
	control.New(c, control.Options{}).Register(gs)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = gs.Serve(lis)
	}()
	stop = func() error {
		gs.Stop()
		<-served
		return closeAll()
	}
	host, _ := os.Hostname()
	info := &client.ServeInfo{
		Address: lis.Addr().String(), HTTP: "http://127.0.0.1:1", PID: os.Getpid(), Host: host,
		Credentials: &client.Credentials{CA: cl.CA, Cert: cl.Cert, Key: cl.Key},
	}
	if err := client.WriteServeInfo(tmp+"/home", info); err != nil {
		return nil, errors.Join(err, stop())
	}
	if err := os.Setenv("DROVER_HOME", tmp+"/home"); err != nil {
		return nil, errors.Join(err, stop())
	}
	return stop, nil
}
