package ports

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var protos = []struct {
	name string
	udp  bool
}{{"tcp", false}, {"udp", true}}

// bindPlain binds addr the way an ordinary program would through the net
// package (for TCP that includes SO_REUSEADDR).
func bindPlain(udp bool, addr string) (io.Closer, error) {
	if udp {
		return net.ListenPacket("udp", addr)
	}
	return net.Listen("tcp", addr)
}

// bindRaw binds port on the wildcard address of one family with plain
// socket calls, as a child written in any language would, and without
// SO_REUSEADDR: the least forgiving way, which fails on any leftover state
// of the port, TIME_WAIT included. A TCP socket is also put to listening.
func bindRaw(udp, v6 bool, port int) error {
	family, sa := syscall.AF_INET, syscall.Sockaddr(&syscall.SockaddrInet4{Port: port})
	if v6 {
		family, sa = syscall.AF_INET6, &syscall.SockaddrInet6{Port: port}
	}
	typ := syscall.SOCK_STREAM
	if udp {
		typ = syscall.SOCK_DGRAM
	}
	fd, err := syscall.Socket(family, typ|syscall.SOCK_CLOEXEC, 0)
	if v6 && errors.Is(err, syscall.EAFNOSUPPORT) {
		return nil // no IPv6 here, so nothing to conflict with
	}
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, sa); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	if !udp {
		if err := syscall.Listen(fd, 1); err != nil {
			return fmt.Errorf("listen: %w", err)
		}
	}
	return nil
}

func addr(port int) string { return ":" + strconv.Itoa(port) }

func loopback(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

func mustReserve(t *testing.T, p *Pool, udp bool, n int) []int {
	t.Helper()
	ports, err := p.Reserve(udp, n)
	if err != nil {
		t.Fatalf("Reserve(%v, %d): %v", udp, n, err)
	}
	return ports
}

// mustBindFree checks that a child could bind port now, both through the
// net package and with plain socket calls on either family.
func mustBindFree(t *testing.T, udp bool, port int) {
	t.Helper()
	c, err := bindPlain(udp, addr(port))
	if err != nil {
		t.Fatalf("bind released port %d: %v", port, err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	for _, v6 := range []bool{false, true} {
		if err := bindRaw(udp, v6, port); err != nil {
			t.Fatalf("raw bind released port %d (v6=%v): %v", port, v6, err)
		}
	}
}

func TestReserveDistinct(t *testing.T) {
	for _, pr := range protos {
		t.Run(pr.name, func(t *testing.T) {
			p := New()
			defer p.Close()
			var all []int
			for _, n := range []int{1, 7, 50} {
				ports := mustReserve(t, p, pr.udp, n)
				if len(ports) != n {
					t.Fatalf("Reserve(%d) returned %d ports", n, len(ports))
				}
				all = append(all, ports...)
			}
			for _, port := range all {
				if port < 1 || port > 65535 {
					t.Errorf("port %d out of range", port)
				}
			}
			slices.Sort(all)
			if len(slices.Compact(slices.Clone(all))) != len(all) {
				t.Fatalf("duplicate ports: %v", all)
			}
			if got := p.Held(pr.udp); !slices.Equal(got, all) {
				t.Fatalf("Held = %v, want %v", got, all)
			}
		})
	}
}

func TestReservedPortIsBusyUntilReleased(t *testing.T) {
	for _, pr := range protos {
		t.Run(pr.name, func(t *testing.T) {
			p := New()
			defer p.Close()
			port := mustReserve(t, p, pr.udp, 1)[0]

			for _, a := range []string{addr(port), loopback(port)} {
				c, err := bindPlain(pr.udp, a)
				if err == nil {
					c.Close()
					t.Fatalf("bound reserved %s %s", pr.name, a)
				}
				if !errors.Is(err, syscall.EADDRINUSE) {
					t.Fatalf("bind reserved %s %s: %v, want EADDRINUSE", pr.name, a, err)
				}
			}
			for _, v6 := range []bool{false, true} {
				if err := bindRaw(pr.udp, v6, port); !errors.Is(err, syscall.EADDRINUSE) {
					t.Fatalf("raw bind reserved %s port %d (v6=%v): %v, want EADDRINUSE", pr.name, port, v6, err)
				}
			}

			if err := p.Release(pr.udp, []int{port}); err != nil {
				t.Fatal(err)
			}
			mustBindFree(t, pr.udp, port)
			if held := p.Held(pr.udp); len(held) != 0 {
				t.Fatalf("Held after Release = %v", held)
			}
		})
	}
}

// A peer may connect to a reserved TCP port: the kernel completes the
// handshake into the listener's backlog without any Accept. The port must
// still be free for the child right after Release.
func TestReleaseTCPWithQueuedConnection(t *testing.T) {
	for _, peerClosesFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("peerClosesFirst=%v", peerClosesFirst), func(t *testing.T) {
			p := New()
			defer p.Close()
			port := mustReserve(t, p, false, 1)[0]
			conn, err := net.Dial("tcp", loopback(port))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if peerClosesFirst {
				conn.Close()
			}
			if err := p.Release(false, []int{port}); err != nil {
				t.Fatal(err)
			}
			mustBindFree(t, false, port)
		})
	}
}

func TestReleaseUnknown(t *testing.T) {
	for _, pr := range protos {
		t.Run(pr.name, func(t *testing.T) {
			p := New()
			defer p.Close()
			ports := mustReserve(t, p, pr.udp, 2)
			// A port the other protocol holds is still unknown to this one.
			other := mustReserve(t, p, !pr.udp, 1)[0]
			for slices.Contains(ports, other) {
				other = mustReserve(t, p, !pr.udp, 1)[0]
			}

			err := p.Release(pr.udp, []int{ports[0], other, ports[1], ports[1]})
			if !errors.Is(err, ErrNotReserved) {
				t.Fatalf("Release error = %v, want ErrNotReserved", err)
			}
			for _, port := range []int{other, ports[1]} {
				want := fmt.Sprintf("release %s port %d: not reserved", pr.name, port)
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
			if strings.Contains(err.Error(), strconv.Itoa(ports[0])) {
				t.Errorf("error %q names port %d, which was held", err, ports[0])
			}
			// The known ports were released despite the unknown one.
			if held := p.Held(pr.udp); len(held) != 0 {
				t.Fatalf("Held after Release = %v", held)
			}
			for _, port := range ports {
				mustBindFree(t, pr.udp, port)
			}
			if held := p.Held(!pr.udp); len(held) == 0 {
				t.Fatal("Release touched the other protocol")
			}
		})
	}
}

func TestReserveCountOutOfRange(t *testing.T) {
	for _, pr := range protos {
		for _, n := range []int{-1, 0, MaxReserve + 1} {
			p := New()
			ports, err := p.Reserve(pr.udp, n)
			want := fmt.Sprintf("reserve %d %s ports: ", n, pr.name)
			if err == nil || !strings.HasPrefix(err.Error(), want) {
				t.Errorf("Reserve(%s, %d) = %v, %v; want error starting %q", pr.name, n, ports, err, want)
			}
			if held := p.Held(pr.udp); len(held) != 0 {
				t.Errorf("Held after failed Reserve = %v", held)
			}
			if err := p.Close(); err != nil {
				t.Error(err)
			}
		}
	}
}

func TestReserveMax(t *testing.T) {
	p := New()
	defer p.Close()
	if got := len(mustReserve(t, p, false, MaxReserve)); got != MaxReserve {
		t.Fatalf("got %d ports, want %d", got, MaxReserve)
	}
}

func TestClose(t *testing.T) {
	p := New()
	tcp := mustReserve(t, p, false, 5)
	udp := mustReserve(t, p, true, 5)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	for _, pr := range protos {
		if held := p.Held(pr.udp); len(held) != 0 {
			t.Errorf("Held(%s) after Close = %v", pr.name, held)
		}
	}
	for _, port := range tcp {
		mustBindFree(t, false, port)
	}
	for _, port := range udp {
		mustBindFree(t, true, port)
	}
	if ports, err := p.Reserve(false, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Reserve after Close = %v, %v; want ErrClosed", ports, err)
	}
	if err := p.Release(true, udp[:1]); !errors.Is(err, ErrNotReserved) {
		t.Fatalf("Release after Close = %v, want ErrNotReserved", err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestConcurrent(t *testing.T) {
	p := New()
	defer p.Close()

	// mine records which goroutine holds each port, to catch a port handed
	// out twice at the same time.
	var mu sync.Mutex
	mine := map[bool]map[int]int{false: {}, true: {}}

	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for g := range cap(errs) {
		wg.Go(func() {
			for range 20 {
				udp := rand.N(2) == 1
				ports, err := p.Reserve(udp, 1+rand.N(8))
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				for _, port := range ports {
					if owner, ok := mine[udp][port]; ok {
						mu.Unlock()
						errs <- fmt.Errorf("port %d (udp=%v) given to %d and %d", port, udp, owner, g)
						return
					}
					mine[udp][port] = g
				}
				mu.Unlock()

				held := p.Held(udp)
				for _, port := range ports {
					if _, ok := slices.BinarySearch(held, port); !ok {
						errs <- fmt.Errorf("Held(udp=%v) misses reserved port %d", udp, port)
						return
					}
				}

				// Forget before releasing: once released the kernel may
				// hand the port to another goroutine straight away.
				mu.Lock()
				for _, port := range ports {
					delete(mine[udp], port)
				}
				mu.Unlock()
				if err := p.Release(udp, ports); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, pr := range protos {
		if held := p.Held(pr.udp); len(held) != 0 {
			t.Errorf("Held(%s) at end = %v", pr.name, held)
		}
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(fds) - 1 // the directory being read
}

// TestReservePartialFailure runs out of file descriptors halfway through a
// reservation and checks that the sockets already bound are closed again.
// It changes the process's RLIMIT_NOFILE, so it must not run in parallel.
func TestReservePartialFailure(t *testing.T) {
	p := New()
	defer p.Close()
	// Let the net package and the poller open what they open once per
	// process before the limit is lowered.
	if err := p.Release(false, mustReserve(t, p, false, 1)); err != nil {
		t.Fatal(err)
	}

	var orig syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
		t.Fatal(err)
	}
	before := openFDs(t)
	low := orig
	low.Cur = uint64(before + 3)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	ports, err := p.Reserve(false, 10)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
		t.Fatal(err)
	}

	if !errors.Is(err, syscall.EMFILE) || !strings.HasPrefix(err.Error(), "reserve 10 tcp ports: ") {
		t.Fatalf("Reserve = %v, %v; want EMFILE error starting %q", ports, err, "reserve 10 tcp ports: ")
	}
	if held := p.Held(false); len(held) != 0 {
		t.Fatalf("Held after failed Reserve = %v", held)
	}
	if after := openFDs(t); after != before {
		t.Fatalf("%d fds open after failed Reserve, %d before", after, before)
	}
}

// Children started by the agent must never inherit a reservation, or the
// port would stay taken for as long as any of them lives.
func TestSocketsAreCloseOnExec(t *testing.T) {
	p := New()
	defer p.Close()
	mustReserve(t, p, false, 3)
	mustReserve(t, p, true, 3)

	p.mu.Lock()
	defer p.mu.Unlock()
	for _, held := range []map[int]io.Closer{p.tcp, p.udp} {
		for port, sock := range held {
			rc, err := sock.(syscall.Conn).SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var flags int
			var ferr error
			if err := rc.Control(func(fd uintptr) {
				flags, ferr = unix.FcntlInt(fd, unix.F_GETFD, 0)
			}); err != nil {
				t.Fatal(err)
			}
			if ferr != nil {
				t.Fatal(ferr)
			}
			if flags&unix.FD_CLOEXEC == 0 {
				t.Errorf("socket for port %d lacks FD_CLOEXEC", port)
			}
		}
	}
}
