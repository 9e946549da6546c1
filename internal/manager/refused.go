package manager

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
)

// loggedCreds logs every connection whose TLS handshake fails (no or a
// foreign certificate, plain TCP, garbage): such a connection is refused,
// runs nothing, and is said so in the log. A flood is summarised, at most
// one line a second.
type loggedCreds struct {
	credentials.TransportCredentials
	log *slog.Logger

	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func (c *loggedCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	out, info, err := c.TransportCredentials.ServerHandshake(conn)
	if err != nil {
		c.refused(conn.RemoteAddr(), err)
	}
	return out, info, err
}

func (c *loggedCreds) refused(from net.Addr, err error) {
	c.mu.Lock()
	now := time.Now()
	if now.Sub(c.last) < time.Second {
		c.suppressed++
		c.mu.Unlock()
		return
	}
	c.last = now
	more := c.suppressed
	c.suppressed = 0
	c.mu.Unlock()
	c.log.LogAttrs(context.Background(), slog.LevelWarn, "refused a connection",
		slog.String("from", from.String()), slog.String("err", err.Error()), slog.Int("more_refused", more))
}

func (c *loggedCreds) Clone() credentials.TransportCredentials {
	return &loggedCreds{TransportCredentials: c.TransportCredentials.Clone(), log: c.log}
}
