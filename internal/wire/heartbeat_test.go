package wire

import (
	"testing"
	"time"
)

// The round trip leaves out the time the echo waited on the peer for a
// message to ride on, and an echo goes once.
func TestRoundTripLeavesOutTheHold(t *testing.T) {
	var ours, theirs probe
	var toUs, toThem pendingEcho
	hb := outgoing(&ours, &toThem, true)
	heard(hb, &theirs, &toUs)
	// Sent 10 s ago, held 9 s of it on the peer.
	ours.at = ours.at.Add(-10 * time.Second)
	toUs.at = toUs.at.Add(-9 * time.Second)
	back := outgoing(&theirs, &toUs, false)
	if back == nil || back.GetSentUnixNano() != 0 {
		t.Fatalf("echo %v: want an echo and no probe of its own", back)
	}
	heard(back, &ours, &toThem)
	if ours.rtt < 900*time.Millisecond || ours.rtt > 1500*time.Millisecond {
		t.Errorf("round trip %v, want about 1 s (10 s less 9 s held)", ours.rtt)
	}
	if again := outgoing(&theirs, &toUs, false); again != nil {
		t.Errorf("the echo went twice: %v", again)
	}
}
