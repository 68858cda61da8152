//go:build cpuprofile

package main

import "github.com/buildlog/buildlog/internal/benchproc"

// With the cpuprofile build tag (go run ./bench -cpuprofile DIR builds
// buildlogd so), SIGUSR1 starts a CPU profile into the file named by
// BUILDLOGD_CPUPROFILE and SIGUSR2 stops it, so a benchmark can profile
// exactly its timed downloads. Release builds have no such hook.
func init() { benchproc.ProfileOnSignal() }
