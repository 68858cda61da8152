package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
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
	bin := filepath.Join(dir, "buildlogd")
	args := []string{"build", "-o", bin}
	if profiling {
		args = append(args, "-tags", "cpuprofile")
	}
	cmd := exec.Command("go", append(args, "./cmd/buildlogd")...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		cleanup()
		return binaries{}, nil, fmt.Errorf("build buildlogd (run from the repository root): %w", err)
	}
	return binaries{buildlogd: bin, bench: self}, cleanup, nil
}

// child is a relaying process: buildlogd or the proxy. Both log a JSON
// line {"msg":"serving","grpc":…,"http":…} on stderr once they listen.
type child struct {
	cmd                *exec.Cmd
	grpcAddr, httpAddr string
	profile            string // the file it profiles its CPU into between SIGUSR1 and SIGUSR2
}

func startChild(bin string, env []string, args ...string) (*child, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd}
	for _, e := range env {
		if name, ok := strings.CutPrefix(e, profileEnv+"="); ok {
			c.profile = name
		}
	}
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		var line struct{ Msg, GRPC, HTTP string }
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "serving" {
			c.grpcAddr, c.httpAddr = line.GRPC, line.HTTP
			break
		}
		fmt.Fprintln(os.Stderr, sc.Text())
	}
	go echoWarnings(stderr)
	if c.httpAddr == "" {
		c.stop()
		return nil, errors.New(filepath.Base(bin) + " did not report its addresses")
	}
	return c, nil
}

// echoWarnings copies the child's log to stderr, but for info lines, which
// would interleave with the table.
func echoWarnings(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		var line struct{ Level string }
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Level == "INFO" {
			continue
		}
		fmt.Fprintln(os.Stderr, sc.Text())
	}
}

// startProfile and stopProfile bracket the CPU profile of a child started
// with profileEnv.
func (c *child) startProfile() {
	if c.profile != "" {
		c.cmd.Process.Signal(syscall.SIGUSR1)
	}
}

// stopProfile waits until the profile is written, up to two seconds.
func (c *child) stopProfile() {
	if c.profile == "" {
		return
	}
	c.cmd.Process.Signal(syscall.SIGUSR2)
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

func (c *child) stop() {
	c.cmd.Process.Signal(os.Interrupt)
	c.cmd.Wait()
}

// peakRSS is the child's peak resident set (VmHWM), in bytes.
func (c *child) peakRSS() int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.cmd.Process.Pid))
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// cpu is the child's user+system CPU time so far.
func (c *child) cpu() time.Duration {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.cmd.Process.Pid))
	fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(fields) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ is 100 on Linux
}
