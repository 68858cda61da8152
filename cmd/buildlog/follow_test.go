package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/buildlog/buildlog/server"
	"github.com/buildlog/buildlog/server/servertest"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// The simulated upstream's actions here grow only when the test says
// (Grow, Finish), from the command's own writes to stdout or stderr, so
// that what each test checks does not depend on timing.

// hookWriter is a buffer that calls hook after each write, with what it
// holds so far.
type hookWriter struct {
	bytes.Buffer
	hook func(written string)
}

func (w *hookWriter) Write(p []byte) (int, error) {
	n, err := w.Buffer.Write(p)
	if w.hook != nil {
		w.hook(w.String())
	}
	return n, err
}

// runFollow runs the command line with its own stdout and stderr, the
// token in the environment, under a context that ends after a minute (a
// guard against a follow that never ends, not a measure of speed).
func runFollow(t *testing.T, ctx context.Context, stdout, stderr io.Writer, args ...string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return run(ctx, args, environment{
		getenv: func(k string) (string, bool) {
			if k == "BUILDLOG_TOKEN" {
				return servertest.Token, true
			}
			return "", false
		},
		stdout:     stdout,
		stderr:     stderr,
		isTerminal: func() bool { return false },
	})
}

// growEachWrite makes a grow by step at each write, up to its final size,
// and then finish.
func growEachWrite(a *upstreamtest.RunningAction, final, step int64) func(string) {
	return func(string) {
		if a.Size() < final {
			a.Grow(step)
		} else {
			a.Finish()
		}
	}
}

func TestDownloadFollow(t *testing.T) {
	t.Parallel()
	// Calls follow for at most 200 ms: the tests below that wait for an
	// action go through the server's time limit and its reconnect.
	s := servertest.StartWith(t, func(c *server.Config) {
		c.ChunkSize = 4 << 10
		c.FollowPollInterval = 20 * time.Millisecond
		c.FollowMaxDuration = 200 * time.Millisecond
	})
	const final = 100_000
	base := []string{"download", "--addr", s.GRPCAddr, "--record-id", recordID}
	log := func(task string) string { return string(upstreamtest.Generate(final, "INFO", task)) }

	t.Run("to stdout until the action finished", func(t *testing.T) {
		t.Parallel()
		a := s.Upstream.AddAction(recordID, "stage1", upstreamtest.Action{Log: upstreamtest.Log{Size: final}, FinalStatus: "success"})
		a.Grow(10_000)
		stdout := &hookWriter{hook: growEachWrite(a, final, 7919)}
		var stderr bytes.Buffer
		code := runFollow(t, context.Background(), stdout, &stderr, append(base, "--task-name", "stage1", "-f")...)
		if code != 0 || stdout.String() != log("stage1") {
			t.Fatalf("exit %d, %d bytes on stdout (stderr %q); want 0 and the %d-byte log", code, stdout.Len(), stderr.String(), final)
		}
		if !strings.HasSuffix(stderr.String(), "buildlog: action finished: success\n") {
			t.Errorf("stderr %q, want it to end with the action's final status", stderr.String())
		}
	})
	t.Run("to a file with --follow", func(t *testing.T) {
		t.Parallel()
		a := s.Upstream.AddAction(recordID, "stage2", upstreamtest.Action{Log: upstreamtest.Log{Size: final}, FinalStatus: "failed"})
		a.Grow(10_000)
		dir := t.TempDir()
		file := filepath.Join(dir, "out.log")
		// Without a terminal, the command says something on stderr only
		// when the first call reaches the server's time limit and it
		// reconnects: the action then writes the rest and finishes.
		var stdout bytes.Buffer
		stderr := &hookWriter{hook: func(string) { a.Grow(final); a.Finish() }}
		code := runFollow(t, context.Background(), &stdout, stderr, append(base, "--task-name", "stage2", "--follow", "-o", file)...)
		got, err := os.ReadFile(file)
		if code != 0 || err != nil || string(got) != log("stage2") || stdout.Len() != 0 {
			t.Fatalf("exit %d, file %d bytes (%v), stdout %d bytes, stderr %q; want 0 and the log in the file", code, len(got), err, stdout.Len(), stderr.String())
		}
		if !strings.Contains(stderr.String(), "buildlog: action finished: failed\n") || !strings.Contains(stderr.String(), "wrote 100000 bytes to "+file) {
			t.Errorf("stderr %q, want the final status and the bytes written", stderr.String())
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 1 {
			t.Errorf("the directory holds %d entries, want only the log", len(entries))
		}
	})
	t.Run("the server's time limit: announced, and followed on", func(t *testing.T) {
		t.Parallel()
		a := s.Upstream.AddAction(recordID, "stage3", upstreamtest.Action{Log: upstreamtest.Log{Size: final}})
		a.Grow(10_000)
		// The action grows only after each reconnect, and finishes after
		// the third.
		reconnects := 0
		stderr := &hookWriter{hook: func(written string) {
			if n := strings.Count(written, "reconnecting from offset"); n > reconnects {
				reconnects = n
				if n < 3 {
					a.Grow(30_000)
				} else {
					a.Grow(final)
					a.Finish()
				}
			}
		}}
		var stdout bytes.Buffer
		code := runFollow(t, context.Background(), &stdout, stderr, append(base, "--task-name", "stage3", "-f")...)
		if code != 0 || stdout.String() != log("stage3") || reconnects < 3 {
			t.Fatalf("exit %d, %d bytes on stdout, %d reconnects (stderr %q); want 0, the log, 3 reconnects", code, stdout.Len(), reconnects, stderr.String())
		}
		if !strings.Contains(stderr.String(), "buildlog: DEADLINE_EXCEEDED: the log was followed for the server's limit") {
			t.Errorf("stderr %q, want the reconnects to name the server's time limit", stderr.String())
		}
	})
	t.Run("interrupted on stdout: says how to follow on", func(t *testing.T) {
		t.Parallel()
		a := s.Upstream.AddAction(recordID, "stage4", upstreamtest.Action{Log: upstreamtest.Log{Size: final}})
		a.Grow(50_000)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		stdout := &hookWriter{hook: func(written string) {
			if len(written) >= 20_000 {
				cancel() // Ctrl-C
			}
		}}
		var stderr bytes.Buffer
		code := runFollow(t, ctx, stdout, &stderr, append(base, "--task-name", "stage4", "-f")...)
		m := regexp.MustCompile(`^buildlog: CANCELLED: .*\((\d+) bytes written; append the rest with --offset (\d+) --follow\)\n$`).FindStringSubmatch(stderr.String())
		if code != 1 || m == nil || m[1] != m[2] || m[1] != strconv.Itoa(stdout.Len()) {
			t.Errorf("exit %d after %d bytes, stderr %q; want 1, CANCELLED and advice to follow on from the bytes written", code, stdout.Len(), stderr.String())
		}
	})
	t.Run("final errors are one line, without reconnects", func(t *testing.T) {
		t.Parallel()
		for _, tt := range []struct{ task, token, want string }{
			{"stage9", servertest.Token, "buildlog: NOT_FOUND: "},
			{"stage1", "refused-token", "buildlog: UNAUTHENTICATED: "},
		} {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), append(base, "--task-name", tt.task, "--token", tt.token, "-f"), environment{
				getenv: func(string) (string, bool) { return "", false }, stdout: &stdout, stderr: &stderr, isTerminal: func() bool { return false },
			})
			if code != 1 || stdout.Len() != 0 || !strings.HasPrefix(stderr.String(), tt.want) || strings.Count(stderr.String(), "\n") != 1 || strings.Contains(stderr.String(), "--offset") {
				t.Errorf("%s: exit %d, stdout %d bytes, stderr %q; want 1 and one line %q…", tt.task, code, stdout.Len(), stderr.String(), tt.want)
			}
		}
	})
}

// TestDownloadFollowThroughRestart follows an action while the buildlogd
// serving it is replaced by another on the same address, as a hot restart
// does (SO_REUSEPORT): the command reconnects and completes the log.
func TestDownloadFollowThroughRestart(t *testing.T) {
	t.Parallel()
	const final = 200_000
	up := upstreamtest.NewServer()
	t.Cleanup(up.Close)
	up.AddToken(servertest.Token)
	a := up.AddAction(recordID, "stage1", upstreamtest.Action{Log: upstreamtest.Log{Size: final}, FinalStatus: "success"})
	a.Grow(60_000)
	start := func(addr string) (string, context.CancelFunc) {
		cfg := server.DefaultConfig()
		cfg.GRPCAddr, cfg.HTTPAddr, cfg.AdminAddr = addr, "127.0.0.1:0", server.AdminOff
		cfg.Upstream, cfg.Logger = up.URL, slog.New(slog.DiscardHandler)
		cfg.ChunkSize, cfg.FollowPollInterval = 4<<10, 20*time.Millisecond
		srv, err := server.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() {
			if err := srv.Serve(ctx); err != nil {
				t.Errorf("Serve() = %v", err)
			}
		})
		t.Cleanup(func() { cancel(); wg.Wait() })
		return srv.GRPCAddr().String(), cancel
	}
	addr, stopOld := start("127.0.0.1:0")
	// Once the old server delivered part of the log, the new one starts
	// on its address and the old one shuts down (its drain is not waited
	// for: the command reads nothing during this write); the action then
	// writes the rest and finishes.
	var once sync.Once
	stdout := &hookWriter{hook: func(written string) {
		if len(written) >= 30_000 {
			once.Do(func() {
				start(addr)
				stopOld()
				a.Grow(final)
				a.Finish()
			})
		}
	}}
	var stderr bytes.Buffer
	code := runFollow(t, context.Background(), stdout, &stderr, "download", "--addr", addr, "--record-id", recordID, "--task-name", "stage1", "-f")
	if code != 0 || stdout.String() != string(upstreamtest.Generate(final, "INFO", "stage1")) {
		t.Fatalf("exit %d, %d bytes on stdout (stderr %q); want 0 and the %d-byte log", code, stdout.Len(), stderr.String(), final)
	}
	if !strings.Contains(stderr.String(), "buildlog: UNAVAILABLE: the server ended the follow") || !strings.Contains(stderr.String(), "reconnecting from offset") ||
		!strings.HasSuffix(stderr.String(), "buildlog: action finished: success\n") {
		t.Errorf("stderr %q, want the reconnect announced and the final status", stderr.String())
	}
}
