package benchproc

import (
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
)

// ProfileEnv names the file a relay profiles its CPU into between SIGUSR1
// and SIGUSR2: buildlogd built with the cpuprofile tag, and the benchmark's
// proxy.
const ProfileEnv = "BUILDLOGD_CPUPROFILE"

// ProfileOnSignal makes this process profile its CPU into the file named by
// ProfileEnv from SIGUSR1 to SIGUSR2, so a benchmark can profile exactly its
// timed downloads. It does nothing when ProfileEnv is not set.
func ProfileOnSignal() {
	name := os.Getenv(ProfileEnv)
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
					fmt.Fprintln(os.Stderr, "cpu profile:", err)
				}
			case s == syscall.SIGUSR2 && f != nil:
				pprof.StopCPUProfile()
				f.Close()
				f = nil
			}
		}
	}()
}
