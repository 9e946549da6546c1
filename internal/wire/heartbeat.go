package wire

import (
	"time"

	"github.com/drover-hpc/drover/api/droverpb"
)

// Each side of a session sends heartbeats (probes) and echoes the peer's
// on its next message, with how long the echo waited there, so that the
// round trip leaves out the time it was held.

// probe is this side's last heartbeat and the round trip of the last one
// echoed.
type probe struct {
	sent int64 // sent_unix_nano; 0: none yet
	at   time.Time
	rtt  time.Duration
}

// pendingEcho is the peer's last heartbeat, to be echoed.
type pendingEcho struct {
	sent int64 // the peer's sent_unix_nano; 0: nothing to echo
	at   time.Time
}

// heard takes in a heartbeat from the peer (nil: none): the echo of our
// probe, and the peer's own probe to echo.
func heard(hb *droverpb.Heartbeat, p *probe, e *pendingEcho) {
	if hb == nil {
		return
	}
	if s := hb.GetEchoUnixNano(); s != 0 && s == p.sent {
		p.rtt = max(time.Since(p.at)-time.Duration(hb.GetEchoHeldNs()), time.Nanosecond)
	}
	if s := hb.GetSentUnixNano(); s != 0 {
		*e = pendingEcho{s, time.Now()}
	}
}

// outgoing is the heartbeat of the next message: the echo waiting in e
// and, when due, a new probe; nil when there is neither.
func outgoing(p *probe, e *pendingEcho, due bool) *droverpb.Heartbeat {
	if !due && e.sent == 0 {
		return nil
	}
	hb := &droverpb.Heartbeat{EchoUnixNano: e.sent}
	if e.sent != 0 {
		hb.EchoHeldNs = int64(time.Since(e.at))
	}
	*e = pendingEcho{}
	if due {
		now := time.Now()
		hb.SentUnixNano = now.UnixNano()
		p.sent, p.at = hb.SentUnixNano, now
	}
	return hb
}
