// Package ports reserves free TCP and UDP ports on this machine for
// processes a node agent is about to start.
//
// A reservation is the bound socket itself: while it stays open the kernel
// refuses the port to everyone else, so the number handed out cannot be
// taken by an unrelated program. The agent releases the port just before it
// starts the process, which then binds the port itself.
package ports

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"sync"
)

// MaxReserve is the most ports one Reserve call binds; it bounds the file
// descriptors a single request can tie up.
const MaxReserve = 1024

var (
	// ErrNotReserved is returned (wrapped) by Release for a port the pool
	// does not hold.
	ErrNotReserved = errors.New("not reserved")
	// ErrClosed is returned (wrapped) by Reserve once the pool is closed.
	ErrClosed = errors.New("pool closed")
)

// Pool holds reserved ports. It is safe for concurrent use. The zero value is
// not usable; use New.
type Pool struct {
	mu     sync.Mutex
	tcp    map[int]io.Closer
	udp    map[int]io.Closer
	closed bool
}

// New returns an empty pool.
func New() *Pool {
	return &Pool{tcp: map[int]io.Closer{}, udp: map[int]io.Closer{}}
}

// Reserve binds n distinct free ports on all interfaces and holds them until
// Release or Close. If any bind fails, the ports bound by this call are
// released again and none is returned.
func (p *Pool) Reserve(udp bool, n int) ([]int, error) {
	proto := protoName(udp)
	if n < 1 || n > MaxReserve {
		return nil, fmt.Errorf("reserve %d %s ports: n must be 1..%d", n, proto, MaxReserve)
	}
	// Bind outside the lock so that large reservations do not stall other
	// callers; the kernel already keeps the ports distinct.
	ports := make([]int, 0, n)
	socks := make([]io.Closer, 0, n)
	for range n {
		port, sock, err := bind(udp)
		if err != nil {
			return nil, fmt.Errorf("reserve %d %s ports: %w", n, proto, errors.Join(err, closeAll(socks)))
		}
		ports = append(ports, port)
		socks = append(socks, sock)
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	// A Close that ran while we were binding must not leave these sockets
	// open behind it.
	if p.closed {
		return nil, fmt.Errorf("reserve %d %s ports: %w", n, proto, errors.Join(ErrClosed, closeAll(socks)))
	}
	held := p.held(udp)
	for i, port := range ports {
		held[port] = socks[i]
	}
	return ports, nil
}

// Release closes the sockets holding ports and forgets them. Every known port
// is released even when some are unknown; each unknown port yields an error
// wrapping ErrNotReserved, and all errors are joined.
func (p *Pool) Release(udp bool, ports []int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, port := range ports {
		errs = append(errs, p.releaseLocked(udp, port))
	}
	return errors.Join(errs...)
}

// Held returns the ports of the given protocol the pool holds, sorted.
func (p *Pool) Held(udp bool) []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Sorted(maps.Keys(p.held(udp)))
}

// Close releases every held port. Later Reserve calls fail with ErrClosed.
func (p *Pool) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	var errs []error
	for _, udp := range []bool{false, true} {
		// Sorted so that the joined error reads the same on every run.
		for _, port := range slices.Sorted(maps.Keys(p.held(udp))) {
			errs = append(errs, p.releaseLocked(udp, port))
		}
	}
	return errors.Join(errs...)
}

// releaseLocked closes and forgets one port; p.mu must be held. The socket is
// forgotten even if closing it fails, since it cannot be retried usefully.
func (p *Pool) releaseLocked(udp bool, port int) error {
	held := p.held(udp)
	sock, ok := held[port]
	if !ok {
		return fmt.Errorf("release %s port %d: %w", protoName(udp), port, ErrNotReserved)
	}
	delete(held, port)
	if err := sock.Close(); err != nil {
		return fmt.Errorf("release %s port %d: %w", protoName(udp), port, err)
	}
	return nil
}

func (p *Pool) held(udp bool) map[int]io.Closer {
	if udp {
		return p.udp
	}
	return p.tcp
}

// bind opens one socket on a kernel-chosen free port. For TCP it must be a
// listening socket: Linux lets two SO_REUSEADDR sockets share a port while
// neither listens, so a merely bound socket would not keep others out. A
// listener that never accepted leaves no TIME_WAIT behind when closed: any
// connection a peer queued on it is reset, not shut down. The
// net package opens every socket close-on-exec, so started processes never
// inherit a reservation.
func bind(udp bool) (int, io.Closer, error) {
	if udp {
		c, err := net.ListenPacket("udp", ":0")
		if err != nil {
			return 0, nil, err
		}
		return c.LocalAddr().(*net.UDPAddr).Port, c, nil
	}
	l, err := net.Listen("tcp", ":0")
	if err != nil {
		return 0, nil, err
	}
	return l.Addr().(*net.TCPAddr).Port, l, nil
}

func closeAll(socks []io.Closer) error {
	var errs []error
	for _, s := range socks {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}

func protoName(udp bool) string {
	if udp {
		return "udp"
	}
	return "tcp"
}
