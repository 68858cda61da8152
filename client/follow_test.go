package client_test

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/buildlog/buildlog/api"
	"github.com/buildlog/buildlog/client"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/server"
	"github.com/buildlog/buildlog/server/servertest"
	"github.com/buildlog/buildlog/upstream"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Every test here runs against a real buildlogd in front of the simulated
// upstream, whose actions grow only when the test says (Grow, Finish), so
// that what each test checks does not depend on timing.

// followConfig makes follows poll every 20 ms, in chunks of 4 KiB.
func followConfig(c *server.Config) {
	c.ChunkSize = 4 << 10
	c.FollowPollInterval = 20 * time.Millisecond
}

// quickReconnects is a connection that dials a server that went away
// again within 50 ms, instead of grpc-go's 1 s growing to 120 s.
var quickReconnects = grpc.WithConnectParams(grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1.6, MaxDelay: 50 * time.Millisecond},
	MinConnectTimeout: 5 * time.Second,
})

// fastRetries shortens the pauses between reconnects.
var fastRetries = client.WithBackoff(5*time.Millisecond, 50*time.Millisecond)

// withToken is a context with token that ends after a minute: a guard
// against a follow that never ends, not a measure of speed.
func withToken(t *testing.T, token string) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	return metadata.AppendToOutgoingContext(ctx, api.TokenMetadataKey, token)
}

// triggerWriter writes to a buffer and calls at once when it holds at
// least n bytes.
type triggerWriter struct {
	bytes.Buffer
	n    int
	at   func()
	once sync.Once
}

func (w *triggerWriter) Write(p []byte) (int, error) {
	n, err := w.Buffer.Write(p)
	if w.Len() >= w.n {
		w.once.Do(w.at)
	}
	return n, err
}

// growingWriter is a buffer that calls grow after each write.
type growingWriter struct {
	bytes.Buffer
	grow func()
}

func (w *growingWriter) Write(p []byte) (int, error) {
	n, err := w.Buffer.Write(p)
	w.grow()
	return n, err
}

func TestFollowGrowingAction(t *testing.T) {
	t.Parallel()
	const final = 200_000
	full := upstreamtest.Generate(final, "INFO", "stage1")
	tests := []struct {
		name          string
		offset, limit int64
		want          []byte
		wantFinished  bool
	}{
		{"the whole log", 0, 0, full, true},
		{"from an offset", 12_345, 0, full[12_345:], true},
		{"a limit ends it while the action runs", 1000, 60_000, full[1000:61_000], false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := servertest.StartWith(t, followConfig)
			a := s.Upstream.AddAction(recordID, "stage1", upstreamtest.Action{Log: upstreamtest.Log{Size: final}, FinalStatus: "success"})
			a.Grow(20_000)
			// Each write lets the action grow by another part, until it
			// has all and finishes (not with a limit): the follow sees it
			// grow under it.
			w := &growingWriter{grow: func() {
				switch {
				case a.Size() < final:
					a.Grow(7919)
				case tt.limit == 0:
					a.Finish()
				}
			}}
			var states []*buildlogv1.ActionState
			res, err := client.Follow(withToken(t, servertest.Token), s.Client,
				&buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1", Offset: tt.offset, Limit: tt.limit}, w,
				client.OnAction(func(st *buildlogv1.ActionState) { states = append(states, st) }))
			if err != nil {
				t.Fatalf("Follow() = %v after %d bytes", err, res.Written)
			}
			if !bytes.Equal(w.Bytes(), tt.want) || res.Written != int64(len(tt.want)) {
				t.Errorf("wrote %d bytes (Written %d), want the %d of the range", w.Len(), res.Written, len(tt.want))
			}
			if res.Action.GetFinished() != tt.wantFinished || tt.wantFinished && res.Action.GetStatus() != "success" {
				t.Errorf("final state %v, want finished %v, status success", res.Action, tt.wantFinished)
			}
			if len(states) == 0 || states[0].GetFinished() || states[0].GetStatus() != "running" {
				t.Errorf("states reported %v, want running first", states)
			}
			if res.Calls != 1 {
				t.Errorf("%d calls, want 1: nothing ended the follow early", res.Calls)
			}
		})
	}
}

func TestFollowFinishedLog(t *testing.T) {
	t.Parallel()
	s := servertest.StartWith(t, followConfig)
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: 50_000})
	var out bytes.Buffer
	res, err := client.Follow(withToken(t, servertest.Token), s.Client, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"}, &out)
	if err != nil || !bytes.Equal(out.Bytes(), upstreamtest.Generate(50_000, "INFO", "stage1")) {
		t.Fatalf("Follow() = %v after %d bytes, want the whole log", err, out.Len())
	}
	if !res.Action.GetFinished() || res.Metadata.TotalSize == nil || *res.Metadata.TotalSize != 50_000 {
		t.Errorf("final state %v, metadata %v; want finished and the log's size", res.Action, res.Metadata)
	}
}

// buildlogd is one buildlogd process of a test: a server on a given
// address in front of a given upstream.
type buildlogd struct {
	addr     string
	shutdown context.CancelFunc // begins the shutdown, and returns at once
	served   chan error
}

func startBuildlogd(t *testing.T, addr string, up *upstreamtest.Server, edit func(*server.Config)) *buildlogd {
	t.Helper()
	cfg := server.DefaultConfig()
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.AdminAddr = addr, "127.0.0.1:0", server.AdminOff
	cfg.Upstream, cfg.Logger = up.URL, slog.New(slog.DiscardHandler)
	followConfig(&cfg)
	if edit != nil {
		edit(&cfg)
	}
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &buildlogd{addr: srv.GRPCAddr().String(), shutdown: cancel, served: make(chan error, 1)}
	go func() { b.served <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-b.served; err != nil {
			t.Errorf("Serve() = %v", err)
		}
	})
	return b
}

func newUpstream(t *testing.T) *upstreamtest.Server {
	t.Helper()
	up := upstreamtest.NewServer()
	up.AddToken(servertest.Token)
	t.Cleanup(up.Close)
	return up
}

// TestFollowThroughRestart follows an action while the buildlogd serving
// it is replaced: the follow goes on from where it was, on the new one.
func TestFollowThroughRestart(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// hot starts the replacement on the same address before the old
		// one stops (SO_REUSEPORT), as a hot restart does; otherwise the
		// address refuses calls until it starts.
		hot bool
	}{
		{"hot restart", true},
		{"down, then back", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			const final = 300_000
			up := newUpstream(t)
			a := up.AddAction(recordID, "stage1", upstreamtest.Action{Log: upstreamtest.Log{Size: final}})
			a.Grow(100_000)
			old := startBuildlogd(t, "127.0.0.1:0", up, nil)
			conn := dial(t, old.addr, client.WithChunkCodec(), quickReconnects)

			var mu sync.Mutex
			var replacement *buildlogd
			start := func() {
				mu.Lock()
				defer mu.Unlock()
				if replacement == nil {
					replacement = startBuildlogd(t, old.addr, up, nil)
				}
			}
			// Once the old server delivered part of the log, it is
			// replaced; the action then writes the rest and finishes.
			// (The old one's drain is not waited for here: the client,
			// in this write, reads nothing meanwhile.)
			w := &triggerWriter{n: 50_000, at: func() {
				if tt.hot {
					start()
				}
				old.shutdown()
				a.Grow(final)
				a.Finish()
			}}
			var reasons []string
			res, err := client.Follow(withToken(t, servertest.Token), buildlogv1.NewBuildLogServiceClient(conn),
				&buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"}, w, fastRetries,
				client.OnReconnect(func(r client.Reconnect) {
					e, _ := api.FromError(r.Err)
					reasons = append(reasons, e.Reason)
					if r.Failures > 0 {
						start() // the address refused the call: bring the server back
					}
				}))
			if err != nil {
				t.Fatalf("Follow() = %v after %d bytes (reconnects: %q)", err, res.Written, reasons)
			}
			if !bytes.Equal(w.Bytes(), upstreamtest.Generate(final, "INFO", "stage1")) || !res.Action.GetFinished() {
				t.Errorf("wrote %d bytes, final state %v; want the %d-byte log and finished", w.Len(), res.Action, final)
			}
			if len(reasons) == 0 || reasons[0] != api.ReasonFollowInterrupted {
				t.Errorf("reconnect reasons %q, want FOLLOW_INTERRUPTED first", reasons)
			}
		})
	}
}

// TestFollowTimeLimit follows an action for longer than the server lets
// one call follow: the calls that end at the limit are followed on.
func TestFollowTimeLimit(t *testing.T) {
	t.Parallel()
	const final = 100_000
	up := newUpstream(t)
	a := up.AddAction(recordID, "stage1", upstreamtest.Action{Log: upstreamtest.Log{Size: final}})
	a.Grow(1000)
	b := startBuildlogd(t, "127.0.0.1:0", up, func(c *server.Config) { c.FollowMaxDuration = 50 * time.Millisecond })
	conn := dial(t, b.addr, client.WithChunkCodec())
	limits := 0
	var out bytes.Buffer
	// Each time a call reached the limit, the action grows; after the
	// third, it finishes.
	res, err := client.Follow(withToken(t, servertest.Token), buildlogv1.NewBuildLogServiceClient(conn),
		&buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"}, &out, fastRetries,
		client.OnReconnect(func(r client.Reconnect) {
			e, _ := api.FromError(r.Err)
			if e.Reason != api.ReasonFollowTimeLimit {
				t.Errorf("reconnect after %v, want FOLLOW_TIME_LIMIT only", r.Err)
			}
			if r.Delay != 0 {
				t.Errorf("a pause of %s after a call the server ended at its limit, want none", r.Delay)
			}
			if limits++; limits < 3 {
				a.Grow(20_000)
			} else {
				a.Grow(final)
				a.Finish()
			}
		}))
	if err != nil {
		t.Fatalf("Follow() = %v after %d bytes", err, res.Written)
	}
	if !bytes.Equal(out.Bytes(), upstreamtest.Generate(final, "INFO", "stage1")) || !res.Action.GetFinished() {
		t.Errorf("wrote %d bytes, final state %v; want the %d-byte log and finished", out.Len(), res.Action, final)
	}
	if res.Calls != limits+1 || limits < 3 {
		t.Errorf("%d calls after %d time limits, want at least 3 limits and one call more", res.Calls, limits)
	}
}

func TestFollowFinalErrors(t *testing.T) {
	t.Parallel()
	s := servertest.StartWith(t, followConfig)
	s.Upstream.AddAction(recordID, "stage1", upstreamtest.Action{Log: upstreamtest.Log{Size: 1000}}).Grow(500)
	tests := []struct {
		name     string
		token    string
		task     string
		wantCode codes.Code
	}{
		{"a refused token", "not-a-token", "stage1", codes.Unauthenticated},
		{"a missing log", servertest.Token, "stage9", codes.NotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var out bytes.Buffer
			res, err := client.Follow(withToken(t, tt.token), s.Client, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: tt.task}, &out,
				client.OnReconnect(func(r client.Reconnect) { t.Errorf("reconnect after %v, want none", r.Err) }))
			if status.Code(err) != tt.wantCode || res.Calls != 1 || out.Len() != 0 {
				t.Errorf("Follow() = %v after %d calls and %d bytes, want %v after one call and no bytes", err, res.Calls, out.Len(), tt.wantCode)
			}
		})
	}
}

// TestFollowLogChanged: a log that shrinks under a follow is not spliced:
// ABORTED, not retried.
func TestFollowLogChanged(t *testing.T) {
	t.Parallel()
	s := servertest.StartWith(t, followConfig)
	a := s.Upstream.AddAction(recordID, "stage1", upstreamtest.Action{Log: upstreamtest.Log{Size: 100_000}})
	a.Grow(30_000)
	w := &triggerWriter{n: 30_000, at: func() { a.Truncate(10_000) }}
	res, err := client.Follow(withToken(t, servertest.Token), s.Client, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"}, w,
		client.OnReconnect(func(r client.Reconnect) { t.Errorf("reconnect after %v, want none", r.Err) }))
	if e, _ := api.FromError(err); e == nil || e.Code != codes.Aborted || e.Reason != api.ReasonLogChanged || res.Calls != 1 {
		t.Errorf("Follow() = %v after %d calls, want ABORTED/LOG_CHANGED after one", err, res.Calls)
	}
}

// TestDownloadResumes: without follow, a download the server could not
// complete (its upstream broke off more often than it resumes) is resumed
// by the client.
func TestDownloadResumes(t *testing.T) {
	t.Parallel()
	const size = 300_000
	s := servertest.StartWith(t, followConfig)
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: size})
	s.Upstream.Inject(upstreamtest.Fault{Cut: true, CutAfter: 10_000, Times: upstream.DefaultRetryPolicy.MaxResumes + 1})
	var out bytes.Buffer
	var reasons []string
	res, err := client.Download(withToken(t, servertest.Token), s.Client, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1", Offset: 1000, Limit: 200_000}, &out,
		fastRetries, client.OnReconnect(func(r client.Reconnect) {
			e, _ := api.FromError(r.Err)
			reasons = append(reasons, e.Reason)
		}))
	if err != nil || !bytes.Equal(out.Bytes(), upstreamtest.Generate(size, "INFO", "stage1")[1000:201_000]) {
		t.Fatalf("Download() = %v after %d bytes, want the %d-byte range", err, out.Len(), 200_000)
	}
	if len(reasons) != 1 || reasons[0] != api.ReasonUpstreamInterrupted || res.Calls != 2 || res.Action != nil {
		t.Errorf("reconnects %q, %d calls, action %v; want one after UPSTREAM_INTERRUPTED, and no action state", reasons, res.Calls, res.Action)
	}
}
