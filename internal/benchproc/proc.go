// Package benchproc runs relays (buildlogd, or a benchmark's baseline proxy)
// as child processes for benchmarks, and reads what the kernel says of their
// resources: peak resident set and CPU time.
package benchproc

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Build compiles buildlogd, with the given build tags, into dir and
// returns the binary's path. Run it from the repository root.
func Build(dir string, tags ...string) (string, error) {
	bin := filepath.Join(dir, "buildlogd")
	args := []string{"build", "-o", bin}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	cmd := exec.Command("go", append(args, "./cmd/buildlogd")...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build buildlogd (run from the repository root): %w", err)
	}
	return bin, nil
}

// Process is a running relay.
type Process struct {
	Cmd *exec.Cmd
	// GRPCAddr, HTTPAddr and AdminAddr are where it listens, as it logged
	// them (AdminAddr is empty without an admin listener).
	GRPCAddr, HTTPAddr, AdminAddr string
}

// StartBuildlogd runs the buildlogd binary bin on loopback ports, without
// its admin listener (whose default port is fixed), with the given extra
// flags, and waits until it serves.
func StartBuildlogd(bin string, flags ...string) (*Process, error) {
	return Start(exec.Command(bin, append([]string{"--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--admin-addr", "off"}, flags...)...))
}

// Start starts cmd, a relay that logs the JSON line
// {"msg":"serving","grpc":…,"http":…} on stderr once it listens, and waits
// for that line. The relay's later log lines go to this process's stderr,
// but for info lines, which would interleave with a benchmark's output.
func Start(cmd *exec.Cmd) (*Process, error) {
	if cmd.Env == nil {
		cmd.Env = Environ()
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Process{Cmd: cmd}
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		var line struct{ Msg, GRPC, HTTP, Admin string }
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "serving" {
			p.GRPCAddr, p.HTTPAddr = line.GRPC, line.HTTP
			if line.Admin != "off" { // server.AdminOff
				p.AdminAddr = line.Admin
			}
			break
		}
		fmt.Fprintln(os.Stderr, sc.Text())
	}
	go echoWarnings(stderr)
	if p.HTTPAddr == "" {
		p.Stop()
		return nil, errors.New(filepath.Base(cmd.Path) + " did not report its addresses")
	}
	return p, nil
}

// Environ is this process's environment without BUILDLOG_* variables: the
// user's buildlogd settings would change what a benchmark measures (or the
// log format Start reads), so a relay gets only the flags it is given.
func Environ() []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "BUILDLOG_") })
}

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

// Stop shuts the relay down with SIGINT and waits for it to exit.
func (p *Process) Stop() {
	p.Cmd.Process.Signal(os.Interrupt)
	p.Cmd.Wait()
}

// PeakRSS is the relay's peak resident set (VmHWM), in bytes.
func (p *Process) PeakRSS() int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Cmd.Process.Pid))
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// CPU is the relay's user and system CPU time so far.
func (p *Process) CPU() time.Duration {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Cmd.Process.Pid))
	fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(fields) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ is 100 on Linux
}

// SelfCPU returns the CPU time (user and system) this process has used.
func SelfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
