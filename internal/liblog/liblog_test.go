package liblog

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/buildlog/buildlog/internal/syncbuf"
)

// records decodes the JSON log lines in buf.
func records(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var recs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		recs = append(recs, rec)
	}
	return recs
}

func TestGRPCLoggerLevels(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	g := NewGRPCLogger(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))
	g.Infof("[core] channel %d connectivity READY", 1)
	g.Errorf("Failed to flush response to client: %v", "write: broken pipe")
	g.Warning("deprecated setting")
	var got []string
	for _, rec := range records(t, &buf) {
		got = append(got, rec["level"].(string)+" "+rec["logger"].(string)+" "+rec["msg"].(string))
	}
	want := []string{
		"WARN grpc Failed to flush response to client: write: broken pipe",
		"WARN grpc deprecated setting",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("grpclog lines at info level (-want +got):\n%s", diff)
	}
	if g.V(0) || g.V(2) {
		t.Error("V() true at info level; want verbose gRPC logs only at debug")
	}
}

// The standard log package's lines keep their words and lose what they
// quote: net/http quotes bytes a peer sent.
func TestStdWriterDropsQuotedPayloads(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	w := stdWriter{slog.New(slog.NewJSONHandler(&buf, nil))}
	w.Write([]byte(`Unsolicited response received on idle HTTP channel starting with "SECRET=hunter2\n\x00"; err=<nil>` + "\n"))
	w.Write([]byte(`a "broken \" quote`))
	w.Write([]byte(strings.Repeat("x", 5000)))
	recs := records(t, &buf)
	want := []string{
		"Unsolicited response received on idle HTTP channel starting with <16 bytes>; err=<nil>",
		`a "broken \" quote`,
		strings.Repeat("x", maxLine) + "…",
	}
	for i, rec := range recs {
		if rec["msg"] != want[i] || rec["level"] != "WARN" {
			t.Errorf("line %d: %v %q, want WARN %q", i, rec["level"], rec["msg"], want[i])
		}
	}
}

// A flood of one kind of line (digits aside) writes a burst, then the last
// line held back with the count of the others once its turn comes; other
// kinds keep their own budget.
func TestLimit(t *testing.T) {
	t.Parallel()
	var buf syncbuf.Buffer
	l := slog.New(newLimitHandler(slog.NewJSONHandler(&buf, nil), 3, time.Second))
	for i := range 300 {
		l.Warn("http: TLS handshake error from 127.0.0.1:" + strings.Repeat("1", i%5+1) + ": EOF")
	}
	l.Warn("another kind of line")
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(buf.String(), `"suppressed"`) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	recs := records(t, bytes.NewBufferString(buf.String()))
	var got []string
	for _, rec := range recs {
		s := rec["msg"].(string)
		if n, ok := rec["suppressed"]; ok {
			s += fmt.Sprintf(" (suppressed %v)", n)
		}
		got = append(got, s)
	}
	want := []string{
		"http: TLS handshake error from 127.0.0.1:1: EOF",
		"http: TLS handshake error from 127.0.0.1:11: EOF",
		"http: TLS handshake error from 127.0.0.1:111: EOF",
		"another kind of line",
		"http: TLS handshake error from 127.0.0.1:11111: EOF (suppressed 296)",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("lines written (-want +got):\n%s", diff)
	}
}

// Lines of more kinds than are tracked share one budget, and its held
// lines are written as any others' (an attacker chooses what some lines
// say: an ALPN name in a failed TLS handshake).
func TestLimitManyKinds(t *testing.T) {
	t.Parallel()
	var buf syncbuf.Buffer
	l := slog.New(newLimitHandler(slog.NewJSONHandler(&buf, nil), 1, 500*time.Millisecond))
	for i := range 3 * maxKinds {
		l.Warn(fmt.Sprintf("tls: unsupported application protocols [%s]", strings.Repeat("x", i%200+1)))
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(buf.String(), `"suppressed"`) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	// Each budget (maxKinds of their own, and the one they share) writes
	// its burst of one line and one summary at most.
	if n := strings.Count(buf.String(), "\n"); n > 2*(maxKinds+1) {
		t.Errorf("%d lines of %d kinds, want at most %d", n, 200, 2*(maxKinds+1))
	}
}
