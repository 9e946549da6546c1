//go:build linux

package supervise

import (
	"syscall"
	"testing"
	"time"
)

func cpuSelf() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
func cpuKids() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func BenchmarkZRaw(b *testing.B) {
	c0, k0 := cpuSelf(), cpuKids()
	BenchmarkRawExec(b)
	b.ReportMetric(float64((cpuSelf()-c0).Nanoseconds())/float64(b.N), "selfcpu-ns/op")
	b.ReportMetric(float64((cpuKids()-k0).Nanoseconds())/float64(b.N), "kidcpu-ns/op")
}
func BenchmarkZOurs(b *testing.B) {
	c0, k0 := cpuSelf(), cpuKids()
	BenchmarkStartWait(b)
	b.ReportMetric(float64((cpuSelf()-c0).Nanoseconds())/float64(b.N), "selfcpu-ns/op")
	b.ReportMetric(float64((cpuKids()-k0).Nanoseconds())/float64(b.N), "kidcpu-ns/op")
}
