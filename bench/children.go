package main

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/buildlog/buildlog/internal/benchproc"
)

// binaries are the programs the benchmark runs as child processes.
type binaries struct {
	buildlogd string // built from ./cmd/buildlogd
	bench     string // this program, which serves the proxy when proxyEnv is set
}

// buildBinaries builds buildlogd into a temporary directory, with its CPU
// profiling hook when profiling; cleanup removes it.
func buildBinaries(profiling bool) (binaries, func(), error) {
	self, err := os.Executable()
	if err != nil {
		return binaries{}, nil, err
	}
	dir, err := os.MkdirTemp("", "buildlog-bench")
	if err != nil {
		return binaries{}, nil, err
	}
	cleanup := func() { os.RemoveAll(dir) }
	var tags []string
	if profiling {
		tags = append(tags, "cpuprofile")
	}
	bin, err := benchproc.Build(dir, tags...)
	if err != nil {
		cleanup()
		return binaries{}, nil, err
	}
	return binaries{buildlogd: bin, bench: self}, cleanup, nil
}

// child is a relaying process: buildlogd or the proxy.
type child struct {
	*benchproc.Process
	profile string // the file it profiles its CPU into between SIGUSR1 and SIGUSR2
}

func startChild(bin string, env []string, args ...string) (*child, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(benchproc.Environ(), env...)
	p, err := benchproc.Start(cmd)
	if err != nil {
		return nil, err
	}
	c := &child{Process: p}
	for _, e := range env {
		if name, ok := strings.CutPrefix(e, profileEnv+"="); ok {
			c.profile = name
		}
	}
	return c, nil
}

// startProfile and stopProfile bracket the CPU profile of a child started
// with profileEnv.
func (c *child) startProfile() {
	if c.profile != "" {
		c.Cmd.Process.Signal(syscall.SIGUSR1)
	}
}

// stopProfile waits until the profile is written, up to two seconds.
func (c *child) stopProfile() {
	if c.profile == "" {
		return
	}
	c.Cmd.Process.Signal(syscall.SIGUSR2)
	last := int64(-1)
	for range 40 {
		time.Sleep(50 * time.Millisecond)
		fi, err := os.Stat(c.profile)
		if err == nil && fi.Size() > 0 && fi.Size() == last {
			return
		}
		if err == nil {
			last = fi.Size()
		}
	}
}
