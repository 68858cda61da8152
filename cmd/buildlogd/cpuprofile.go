//go:build cpuprofile

package main

import (
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
)

// With the cpuprofile build tag (go run ./bench -cpuprofile DIR builds
// buildlogd so), SIGUSR1 starts a CPU profile into the file named by
// BUILDLOGD_CPUPROFILE and SIGUSR2 stops it, so a benchmark can profile
// exactly its timed downloads. Release builds have no such hook.
func init() {
	name := os.Getenv("BUILDLOGD_CPUPROFILE")
	if name == "" {
		return
	}
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGUSR1, syscall.SIGUSR2)
	go func() {
		var f *os.File
		for s := range sig {
			switch {
			case s == syscall.SIGUSR1 && f == nil:
				var err error
				if f, err = os.Create(name); err == nil {
					err = pprof.StartCPUProfile(f)
				}
				if err != nil {
					fmt.Fprintln(os.Stderr, "buildlogd: cpu profile:", err)
				}
			case s == syscall.SIGUSR2 && f != nil:
				pprof.StopCPUProfile()
				f.Close()
				f = nil
			}
		}
	}()
}
