package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/buildlog/buildlog/internal/syncbuf"
	"github.com/buildlog/buildlog/server/servertest"
)

// Tests in this file run buildlogd as a process, for what only a process
// shows: what reaches stderr outside the structured log, and two processes
// sharing the listen addresses.

var (
	binaryOnce sync.Once
	binaryDir  string
	binaryPath string
	binaryErr  error
)

// removeBinary removes what buildlogdBinary built; TestMain calls it.
func removeBinary() {
	if binaryDir != "" {
		os.RemoveAll(binaryDir)
	}
}

// buildlogdBinary builds buildlogd once for the package's tests.
func buildlogdBinary(t *testing.T) string {
	t.Helper()
	binaryOnce.Do(func() {
		binaryDir, binaryErr = os.MkdirTemp("", "buildlogd-test-")
		if binaryErr != nil {
			return
		}
		binaryPath = filepath.Join(binaryDir, "buildlogd")
		out, err := exec.Command("go", "build", "-o", binaryPath, ".").CombinedOutput()
		if err != nil {
			binaryErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binaryErr != nil {
		t.Fatal(binaryErr)
	}
	return binaryPath
}

// process is a running buildlogd.
type process struct {
	cmd               *exec.Cmd
	grpc, http, admin string // the addresses its "serving" line names
	stderr            *syncbuf.Buffer
	exited            chan error
}

// startProcess runs buildlogd with args and waits for it to serve. The
// process is killed when the test ends, if it has not exited.
func startProcess(t *testing.T, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(buildlogdBinary(t), args...), stderr: &syncbuf.Buffer{}, exited: make(chan error, 1)}
	pr, pw := io.Pipe()
	p.cmd.Stderr = io.MultiWriter(p.stderr, pw)
	p.cmd.Stdout = io.Discard
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.exited <- p.cmd.Wait()
		pw.Close()
	}()
	t.Cleanup(func() { p.cmd.Process.Kill() })
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		var line struct{ Msg, GRPC, HTTP, Admin string }
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "serving" {
			p.grpc, p.http, p.admin = line.GRPC, line.HTTP, line.Admin
			go io.Copy(io.Discard, pr)
			return p
		}
	}
	t.Fatalf("buildlogd %v exited before serving: %v\n%s", args, <-p.exited, p.stderr)
	return nil
}

// stop sends SIGTERM and waits for the process to exit.
func (p *process) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-p.exited; err != nil {
		t.Errorf("buildlogd exited with %v after SIGTERM, want 0\n%s", err, p.stderr)
	}
}

func get(t *testing.T, url string) (*http.Response, error) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("X-Auth-Token", "demo-token")
	return (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
}

// An upstream that sends more than its Content-Length makes net/http's
// client log the excess it finds on the idle connection; the line goes to
// the structured log without the bytes, which are build-log content.
func TestProcessLogsCarryNoLogBytes(t *testing.T) {
	t.Parallel()
	const secret = "SECRET-BUILD-OUTPUT password=hunter2"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				http.ReadRequest(bufio.NewReader(conn))
				io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789")
				time.Sleep(200 * time.Millisecond)
				io.WriteString(conn, secret+"\n")
				io.Copy(io.Discard, conn) // until buildlogd closes it
			}()
		}
	}()
	p := startProcess(t, "--upstream", "http://"+ln.Addr().String(), "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--admin-addr", "off")
	resp, err := get(t, "http://"+p.http+"/v4/3f2a9c1e-7b4d-4e8a-9c6f-1d2e3f4a5b6c/task-log?task_name=stage1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "0123456789" {
		t.Fatalf("body %q, want the 10 bytes announced", body)
	}
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(p.stderr.String(), "Unsolicited response") && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	p.stop(t)
	logs := p.stderr.String()
	if strings.Contains(logs, "hunter2") || strings.Contains(logs, "SECRET") {
		t.Errorf("stderr holds the upstream's bytes:\n%s", logs)
	}
	found := false
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		var rec struct{ Level, Msg, Logger string }
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Errorf("stderr line is not JSON: %q", line)
		}
		found = found || (rec.Logger == "stdlib" && rec.Level == "WARN" && strings.Contains(rec.Msg, "Unsolicited response"))
	}
	if !found {
		t.Errorf("no stdlib WARN line about the unsolicited response in:\n%s", logs)
	}
}

// A replacement buildlogd started on the same addresses while the old one
// drains comes up and serves (SO_REUSEPORT): the old one still holds its
// admin listener, and a download keeps its drain going.
func TestProcessReplacementServesDuringDrain(t *testing.T) {
	t.Parallel()
	old := startProcess(t, "--demo", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--shutdown-timeout", "1m")
	// The 1 GiB demo log, read no further than its first bytes.
	slow, err := get(t, "http://"+old.http+"/v4/8b7c6d5e-4f3a-4b2c-9d1e-0f9e8d7c6b5a/task-log?task_name=stage1")
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Body.Close()
	old.cmd.Process.Signal(syscall.SIGTERM)
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(old.stderr.String(), `"shutting down"`); {
		if time.Now().After(deadline) {
			t.Fatalf("the old process logged no shutdown:\n%s", old.stderr)
		}
		time.Sleep(10 * time.Millisecond)
	}

	repl := startProcess(t, "--demo", "--grpc-addr", old.grpc, "--http-addr", old.http, "--admin-addr", old.admin)
	resp, err := get(t, "http://"+repl.http+"/v4/3f2a9c1e-7b4d-4e8a-9c6f-1d2e3f4a5b6c/task-log?task_name=stage1")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte("BUILD SUCCESS")) {
		t.Errorf("download from the replacement: HTTP %d, %v, %q", resp.StatusCode, err, body)
	}
	select {
	case err := <-old.exited:
		t.Fatalf("the old process exited (%v) with its download in flight", err)
	default:
	}
	slow.Body.Close()
	if err := <-old.exited; err != nil {
		t.Errorf("the old process exited with %v, want 0\n%s", err, old.stderr)
	}
	repl.stop(t)
}

// Failed TLS handshakes, 300 on each listener, write a burst of lines and
// then summaries, not a line each.
func TestProcessHandshakeFailuresDoNotFloodTheLog(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := servertest.NewCA(t, "buildlogd CA")
	certPEM, keyPEM, _ := ca.Issue(t, "buildlogd", true)
	p := startProcess(t, "--demo", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--admin-addr", "off",
		"--tls-cert", servertest.WriteFile(t, dir, "tls.crt", certPEM), "--tls-key", servertest.WriteFile(t, dir, "tls.key", keyPEM))
	const attempts = 300
	for _, addr := range []string{p.grpc, p.http} {
		for range attempts {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n") // plaintext to a TLS port
			io.Copy(io.Discard, conn)
			conn.Close()
		}
	}
	// The summary of what was held back comes once the kind's next turn is
	// due, within 10 seconds.
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(p.stderr.String(), `"suppressed"`) && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	p.stop(t)
	var lines, suppressed int
	for _, line := range strings.Split(p.stderr.String(), "\n") {
		var rec struct {
			Msg        string
			Suppressed int
		}
		if json.Unmarshal([]byte(line), &rec) == nil && strings.Contains(rec.Msg, "handshake") {
			lines++
			suppressed += rec.Suppressed
		}
	}
	// grpc-go logs failed handshakes at info level (debug here); net/http
	// logs each at error level (warn here).
	if lines == 0 || lines > 20 || lines+suppressed != attempts {
		t.Errorf("%d failed handshakes on each listener: %d lines, counting %d more suppressed; want a few lines counting all %d",
			attempts, lines, suppressed, attempts)
	}
}
