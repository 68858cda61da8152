package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/buildlog/buildlog/server/servertest"
	"github.com/buildlog/buildlog/upstream"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const recordID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"

// runCLI runs the command line and returns its exit status and output.
func runCLI(t *testing.T, vars map[string]string, terminal bool, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(context.Background(), args, environment{
		getenv: func(k string) (string, bool) {
			v, ok := vars[k]
			return v, ok
		},
		stdout:     &out,
		stderr:     &errOut,
		isTerminal: func() bool { return terminal },
	})
	return code, out.String(), errOut.String()
}

func TestDownload(t *testing.T) {
	t.Parallel()
	s := servertest.Start(t, 4<<10)
	const size = 300_000
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: size})
	s.Upstream.AddLog(recordID, "chunked", upstreamtest.Log{Size: size, OmitLength: true})
	full := upstreamtest.Generate(size, "INFO", "stage1")
	base := []string{"download", "--addr", s.GRPCAddr, "--record-id", recordID}

	t.Run("to stdout with the token from the environment", func(t *testing.T) {
		code, out, errOut := runCLI(t, map[string]string{"BUILDLOG_TOKEN": servertest.Token}, false, append(base, "--task-name", "stage1")...)
		if code != 0 || out != string(full) {
			t.Errorf("exit %d, %d bytes on stdout (stderr %q); want 0 and the %d-byte log", code, len(out), errOut, size)
		}
	})
	t.Run("debug level, offset and limit", func(t *testing.T) {
		code, out, errOut := runCLI(t, nil, false, append(base, "--task-name", "chunked", "--token", servertest.Token, "--log-level", "DEBUG", "--offset", "1000", "--limit", "5000")...)
		if want := upstreamtest.Generate(size, "DEBUG", "chunked")[1000:6000]; code != 0 || out != string(want) {
			t.Errorf("exit %d, %d bytes (stderr %q); want 0 and bytes 1000..6000 of the DEBUG log", code, len(out), errOut)
		}
	})
	t.Run("to a file with progress", func(t *testing.T) {
		dir := t.TempDir()
		file := filepath.Join(dir, "out.log")
		code, out, errOut := runCLI(t, nil, true, append(base, "--task-name", "stage1", "--token", servertest.Token, "-o", file)...)
		if code != 0 || out != "" {
			t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
		}
		got, err := os.ReadFile(file)
		if err != nil || !bytes.Equal(got, full) {
			t.Errorf("file: %d bytes (%v), want the %d-byte log", len(got), err, size)
		}
		if !strings.Contains(errOut, "out.log") || !strings.Contains(errOut, "100%") {
			t.Errorf("stderr %q, want a progress bar reaching 100%%", errOut)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 1 {
			t.Errorf("the directory holds %d entries, want only the log", len(entries))
		}
	})
}

func TestDownloadFailures(t *testing.T) {
	t.Parallel()
	s := servertest.Start(t, 4<<10)
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: 300_000})
	base := []string{"download", "--addr", s.GRPCAddr, "--record-id", recordID, "--token", servertest.Token}

	// The first answer and every resumption break off, so the download
	// fails after the server's last resumption.
	breaksEveryTime := upstreamtest.Fault{Cut: true, CutAfter: 10_000, Times: upstream.DefaultRetryPolicy.MaxResumes + 1}
	t.Run("mid-stream failure leaves no file", func(t *testing.T) {
		dir := t.TempDir()
		s.Upstream.Inject(breaksEveryTime)
		code, _, errOut := runCLI(t, nil, false, append(base, "--task-name", "stage1", "-o", filepath.Join(dir, "out.log"))...)
		if code != 1 {
			t.Errorf("exit %d, want 1", code)
		}
		if !strings.HasPrefix(errOut, "buildlog: UNAVAILABLE: ") || strings.Contains(errOut, "--offset") || strings.Count(errOut, "\n") != 1 {
			t.Errorf("stderr %q, want one line naming UNAVAILABLE, and no resume advice (no partial file is kept)", errOut)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("the directory holds %v after a failed download, want nothing", entries)
		}
	})
	t.Run("mid-stream failure on stdout says how to append the rest", func(t *testing.T) {
		s.Upstream.Inject(breaksEveryTime)
		code, out, errOut := runCLI(t, nil, false, append(base, "--task-name", "stage1", "--offset", "1000", "--limit", "200000")...)
		m := regexp.MustCompile(`(\d+) bytes written; append the rest with --offset (\d+) --limit (\d+)\)`).FindStringSubmatch(errOut)
		if code != 1 || m == nil {
			t.Fatalf("exit %d, stderr %q; want 1 and advice to append the rest", code, errOut)
		}
		written, _ := strconv.Atoi(m[1])
		offset, _ := strconv.Atoi(m[2])
		limit, _ := strconv.Atoi(m[3])
		if written != len(out) || offset != 1000+len(out) || limit != 200000-len(out) {
			t.Fatalf("advice %q after %d bytes on stdout", m[0], len(out))
		}
		// Following the advice completes the requested range.
		code, rest, errOut := runCLI(t, nil, false, append(base, "--task-name", "stage1", "--offset", m[2], "--limit", m[3])...)
		want := upstreamtest.Generate(300_000, "INFO", "stage1")[1000:201000]
		if code != 0 || out+rest != string(want) {
			t.Errorf("resumed: exit %d (%q); the two parts make %d bytes, want the %d requested", code, errOut, len(out+rest), len(want))
		}
	})
	t.Run("a log that changed mid-stream is to be downloaded again, not appended to", func(t *testing.T) {
		s.Upstream.AddLog(recordID, "changing", upstreamtest.Log{Size: 300_000})
		s.Upstream.Inject(upstreamtest.Fault{Cut: true, CutAfter: 40_000, After: func() {
			s.Upstream.AddLog(recordID, "changing", upstreamtest.Log{Size: 400_000})
		}})
		code, out, errOut := runCLI(t, nil, false, append(base, "--task-name", "changing")...)
		want := fmt.Sprintf("%d bytes written belong to the log's old version; discard them and download it again from the start", len(out))
		if code != 1 || !strings.HasPrefix(errOut, "buildlog: ABORTED: ") || !strings.Contains(errOut, want) || strings.Contains(errOut, "--offset") {
			t.Errorf("exit %d after %d bytes, stderr %q; want 1, ABORTED and advice to start over", code, len(out), errOut)
		}
	})
	t.Run("upstream error", func(t *testing.T) {
		code, out, errOut := runCLI(t, nil, false, append(base, "--task-name", "stage9")...)
		if code != 1 || out != "" || !strings.HasPrefix(errOut, "buildlog: NOT_FOUND: ") || !strings.Contains(errOut, "request id ") || strings.Count(errOut, "\n") != 1 {
			t.Errorf("exit %d, stdout %q, stderr %q; want 1 and one NOT_FOUND line with the request id", code, out, errOut)
		}
	})
	t.Run("throttled", func(t *testing.T) {
		s.Upstream.Inject(upstreamtest.Throttled(0))
		code, _, errOut := runCLI(t, nil, false, append(base, "--task-name", "stage1")...)
		if code != 1 || !strings.HasPrefix(errOut, "buildlog: RESOURCE_EXHAUSTED: ") || !strings.Contains(errOut, "retry after 1s") {
			t.Errorf("exit %d, stderr %q; want RESOURCE_EXHAUSTED with a retry delay", code, errOut)
		}
	})
	t.Run("server down", func(t *testing.T) {
		code, _, errOut := runCLI(t, nil, false, "download", "--addr", "127.0.0.1:1", "--record-id", recordID, "--task-name", "stage1", "--token", "t")
		if code != 1 || !strings.HasPrefix(errOut, "buildlog: UNAVAILABLE: ") {
			t.Errorf("exit %d, stderr %q; want 1 and UNAVAILABLE", code, errOut)
		}
	})
}

func TestUsage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  string // in stdout or stderr
	}{
		{"no command", nil, 2, "Usage: buildlog"},
		{"unknown command", []string{"upload"}, 2, `unknown command "upload"`},
		{"help", []string{"help"}, 0, "download"},
		{"download help", []string{"download", "--help"}, 0, "BUILDLOG_TOKEN"},
		{"missing flags", []string{"download", "--addr", "x:1"}, 2, "missing --record-id, --task-name, --token or BUILDLOG_TOKEN"},
		{"bad level", []string{"download", "--addr", "x:1", "--record-id", recordID, "--task-name", "s", "--token", "t", "--log-level", "trace"}, 2, "--log-level"},
		{"bad offset", []string{"download", "--offset", "ten"}, 2, "invalid value"},
		{"negative offset", []string{"download", "--addr", "x:1", "--record-id", recordID, "--task-name", "s", "--token", "t", "--offset", "-3"}, 2, "must not be negative"},
		{"negative limit", []string{"download", "--addr", "x:1", "--record-id", recordID, "--task-name", "s", "--token", "t", "--limit", "-1"}, 2, "must not be negative"},
		{"stray argument", []string{"download", "--addr", "x:1", "extra"}, 2, `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, out, errOut := runCLI(t, nil, false, tt.args...)
			if code != tt.wantCode || !strings.Contains(out+errOut, tt.wantOut) {
				t.Errorf("exit %d, output %q; want %d and %q", code, out+errOut, tt.wantCode, tt.wantOut)
			}
		})
	}
}
