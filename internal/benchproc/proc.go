// Package benchproc runs buildlogd as a child process for benchmarks, and
// reads what the kernel says of its resources: peak resident set and CPU
// time.
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
	"strconv"
	"strings"
	"time"
)

// Build compiles buildlogd into a temporary directory and returns the
// binary's path. Run it from the repository root.
func Build() (string, error) {
	dir, err := os.MkdirTemp("", "buildlog-bench")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "buildlogd")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/buildlogd")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build buildlogd (run from the repository root): %w", err)
	}
	return bin, nil
}

// Server is a running buildlogd.
type Server struct {
	cmd *exec.Cmd
	// GRPCAddr and HTTPAddr are where it listens, as it logged them.
	GRPCAddr, HTTPAddr string
}

// Start runs bin on loopback ports with the given extra flags, and waits
// until it logs that it is serving.
func Start(bin string, flags ...string) (*Server, error) {
	// No admin listener: its default port is fixed, and benchmarks need none.
	cmd := exec.Command(bin, append([]string{"--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--admin-addr", "off"}, flags...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &Server{cmd: cmd}
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		var line struct{ Msg, GRPC, HTTP string }
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "serving" {
			s.GRPCAddr, s.HTTPAddr = line.GRPC, line.HTTP
			break
		}
	}
	if s.GRPCAddr == "" {
		s.Stop()
		return nil, errors.New("buildlogd did not report its addresses")
	}
	go io.Copy(io.Discard, stderr)
	return s, nil
}

// Stop shuts the server down with SIGINT and waits for it to exit.
func (s *Server) Stop() {
	s.cmd.Process.Signal(os.Interrupt)
	s.cmd.Wait()
}

// PeakRSS is the server's peak resident set (VmHWM), in bytes.
func (s *Server) PeakRSS() int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// CPU is the server's user and system CPU time so far.
func (s *Server) CPU() time.Duration {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(fields) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ is 100 on Linux
}
