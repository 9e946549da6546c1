package queue

import (
	"fmt"
	"strconv"
	"strings"
)

// HaltMode says what a run does once its failure threshold is passed.
type HaltMode int

const (
	HaltNever HaltMode = iota
	HaltSoon           // start nothing more; let what runs finish
	HaltNow            // stop everything
)

// Halt is the --halt policy, in the spirit of GNU Parallel's.
type Halt struct {
	Mode    HaltMode
	Fails   int     // halt when this many instances have failed (or were lost)
	Percent float64 // or, when > 0, this percentage of the finished ones (from 3 on)
}

// ParseHalt reads "never", "now,fail=N", "soon,fail=N" or the same with
// "N%".
func ParseHalt(s string) (Halt, error) {
	bad := fmt.Errorf("--halt must be never, now,fail=N, soon,fail=N or with N%%, got %q", s)
	if s == "never" || s == "" {
		return Halt{}, nil
	}
	when, cond, ok := strings.Cut(s, ",")
	var h Halt
	switch when {
	case "now":
		h.Mode = HaltNow
	case "soon":
		h.Mode = HaltSoon
	default:
		return Halt{}, bad
	}
	n, ok2 := strings.CutPrefix(cond, "fail=")
	if !ok || !ok2 {
		return Halt{}, bad
	}
	if p, isPct := strings.CutSuffix(n, "%"); isPct {
		v, err := strconv.ParseFloat(p, 64)
		if err != nil || v <= 0 || v > 100 {
			return Halt{}, bad
		}
		h.Percent = v
		return h, nil
	}
	v, err := strconv.Atoi(n)
	if err != nil || v < 1 {
		return Halt{}, bad
	}
	h.Fails = v
	return h, nil
}

func (h Halt) String() string {
	if h.Mode == HaltNever {
		return "never"
	}
	when := "soon"
	if h.Mode == HaltNow {
		when = "now"
	}
	if h.Percent > 0 {
		return fmt.Sprintf("%s,fail=%g%%", when, h.Percent)
	}
	return fmt.Sprintf("%s,fail=%d", when, h.Fails)
}

// reached reports whether failed of done finished instances pass h.
func (h Halt) reached(failed, done int) bool {
	switch {
	case h.Mode == HaltNever:
		return false
	case h.Percent > 0:
		return done >= 3 && float64(failed)*100 >= h.Percent*float64(done)
	default:
		return failed >= h.Fails
	}
}
