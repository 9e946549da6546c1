package node

import (
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// SignalName gives the conventional upper-case name, e.g. "SIGKILL".
func SignalName(s syscall.Signal) string {
	if n := unix.SignalName(s); n != "" {
		return n
	}
	return "SIG" + strings.ToUpper(s.String())
}

// ParseSignal is the inverse of SignalName; it accepts "SIGTERM" or "TERM".
func ParseSignal(name string) (syscall.Signal, bool) {
	n := strings.ToUpper(name)
	if !strings.HasPrefix(n, "SIG") {
		n = "SIG" + n
	}
	s := unix.SignalNum(n)
	return s, s != 0
}
