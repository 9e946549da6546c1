package client

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
)

// ProcessAlive reports whether the process pid exists on this host and
// has not exited (a zombie has).
func ProcessAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		// No procfs to look closer: kill said it exists.
		return !errors.Is(err, os.ErrNotExist) || !procfs()
	}
	s := string(data)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		switch s[i+2] {
		case 'Z', 'X', 'x':
			return false
		}
	}
	return true
}

func procfs() bool {
	_, err := os.Stat("/proc/self/stat")
	return err == nil
}
