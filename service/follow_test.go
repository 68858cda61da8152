package service_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/buildlog/buildlog/api"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/service"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// followed is what a followed download handed out.
type followed struct {
	data    []byte
	actions []*buildlogv1.ActionState // in order, each with the offset it came at
	first   *buildlogv1.ActionState
	last    *buildlogv1.ActionState // of the last chunk, which has no data when the action finished
	meta    *buildlogv1.LogMetadata
	err     error
}

// follow runs a followed download of req to its end. After each chunk it
// calls step with the bytes received so far, so the test can grow the
// log as the follower reads it; nil does nothing.
func (e *env) follow(t *testing.T, ctx context.Context, req *buildlogv1.DownloadTaskLogRequest, until time.Time, step func(got int64)) followed {
	t.Helper()
	req.Follow = true
	tokens, _ := ctx.Value(tokenKey{}).([]string)
	d, err := e.svc.Open(ctx, service.Request{Message: req, Caller: service.Caller{Tokens: tokens}, Transport: service.GRPC, FollowUntil: until})
	if err != nil {
		return followed{err: err}
	}
	f := followed{meta: d.Metadata()}
	pos := req.GetOffset()
	for i := 0; ; i++ {
		c, err := d.Next()
		if err == io.EOF {
			f.err = d.Close(nil)
			return f
		}
		if err != nil {
			f.err = d.Close(err)
			return f
		}
		if c.Offset != pos {
			t.Fatalf("chunk %d at offset %d, want %d", i, c.Offset, pos)
		}
		if i == 0 {
			f.first = c.Action
		}
		if c.Action != nil {
			f.actions = append(f.actions, c.Action)
		}
		f.last = c.Action
		f.data = append(f.data, c.Data...)
		pos += int64(len(c.Data))
		c.Release()
		if step != nil {
			step(int64(len(f.data)))
		}
	}
}

func newFollowEnv(t *testing.T, maxDuration time.Duration) *env {
	return newEnv(t, service.WithChunkSize(4<<10), service.WithFollow(10*time.Millisecond, maxDuration))
}

func TestFollowDeliversEveryByteOnce(t *testing.T) {
	t.Parallel()
	const final = 50_000
	for _, shape := range []struct {
		name string
		log  upstreamtest.Log
	}{
		{"ranges", upstreamtest.Log{Size: final}},
		{"ranges, no length", upstreamtest.Log{Size: final, OmitLength: true}},
		{"no ranges", upstreamtest.Log{Size: final, IgnoreRange: true}},
		{"no ranges, no length", upstreamtest.Log{Size: final, IgnoreRange: true, OmitLength: true}},
	} {
		t.Run(shape.name, func(t *testing.T) {
			t.Parallel()
			e := newFollowEnv(t, time.Minute)
			a := e.up.AddAction(recordID, "stage2", upstreamtest.Action{Log: shape.log})
			a.Grow(1000)
			// Each time the follower has all there is, the log grows, in
			// steps that fall inside chunks and across them, and finally
			// the action finishes.
			steps := []int64{1, 4095, 4097, 10_000, 3}
			got := e.follow(t, withToken(context.Background(), token), &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage2"}, time.Time{}, func(n int64) {
				if n < a.Size() {
					return
				}
				if len(steps) == 0 {
					a.Finish()
					return
				}
				a.Grow(steps[0])
				steps = steps[1:]
			})
			if got.err != nil {
				t.Fatalf("follow: %v", got.err)
			}
			want := upstreamtest.Generate(final, "INFO", "stage2")[:a.Size()]
			if !bytes.Equal(got.data, want) {
				t.Fatalf("got %d bytes differing from the log's %d", len(got.data), len(want))
			}
			if got.first == nil || got.first.GetFinished() || got.first.GetStatus() != "running" {
				t.Errorf("first state %v, want running", got.first)
			}
			if got.last == nil || !got.last.GetFinished() || got.last.GetStatus() != "success" || got.last.GetFinishTime() == "" {
				t.Errorf("last state %v, want finished, success, with a finish time", got.last)
			}
			if got.meta.TotalSize != nil {
				t.Errorf("total_size %d on a log that grows, want unset", got.meta.GetTotalSize())
			}
		})
	}
}

func TestFollowFinishedAction(t *testing.T) {
	t.Parallel()
	e := newFollowEnv(t, time.Minute)
	e.up.AddLog(recordID, "stage1", upstreamtest.Log{Size: 9000})
	for _, offset := range []int64{0, 100, 9000} {
		got := e.follow(t, withToken(context.Background(), token), &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1", Offset: offset}, time.Time{}, nil)
		if got.err != nil {
			t.Fatalf("offset %d: %v", offset, got.err)
		}
		if want := upstreamtest.Generate(9000, "INFO", "stage1")[offset:]; !bytes.Equal(got.data, want) {
			t.Errorf("offset %d: got %d bytes differing from the log's %d", offset, len(got.data), len(want))
		}
		if !got.first.GetFinished() || !got.last.GetFinished() || got.meta.GetTotalSize() != 9000 {
			t.Errorf("offset %d: first %v, last %v, total_size %v: want finished, and the size", offset, got.first, got.last, got.meta.TotalSize)
		}
	}
	got := e.follow(t, withToken(context.Background(), token), &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1", Offset: 9001}, time.Time{}, nil)
	wantError(t, got.err, codes.OutOfRange, api.ReasonOffsetOutOfRange)
}

func TestFollowWaitsAtTheEnd(t *testing.T) {
	t.Parallel()
	// An offset at the end (a 416 from an upstream that honours Range)
	// or past it waits for the log to get there.
	for _, offset := range []int64{5000, 5100} {
		for _, ignore := range []bool{false, true} {
			t.Run(strconv.FormatInt(offset, 10)+"/ignore range "+strconv.FormatBool(ignore), func(t *testing.T) {
				t.Parallel()
				e := newFollowEnv(t, time.Minute)
				a := e.up.AddAction(recordID, "stage1", upstreamtest.Action{Log: upstreamtest.Log{Size: 20_000, IgnoreRange: ignore}})
				a.Grow(5000)
				polls := 0
				grown := false
				got := e.follow(t, withToken(context.Background(), token), &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1", Offset: offset}, time.Time{}, func(n int64) {
					switch {
					case n == 0 && !grown: // the first message: the state alone
						polls++
						a.Grow(6000)
						grown = true
					case n > 0 && offset+n >= a.Size():
						a.Finish()
					}
				})
				if got.err != nil {
					t.Fatal(got.err)
				}
				if want := upstreamtest.Generate(20_000, "INFO", "stage1")[offset:11_000]; !bytes.Equal(got.data, want) {
					t.Errorf("got %d bytes differing from the log's %d from offset %d", len(got.data), len(want), offset)
				}
				if polls != 1 || !got.last.GetFinished() {
					t.Errorf("%d state-only messages at the start, last state %v", polls, got.last)
				}
			})
		}
	}
}

func TestFollowWithLimit(t *testing.T) {
	t.Parallel()
	e := newFollowEnv(t, time.Minute)
	a := e.up.AddAction(recordID, "stage1", upstreamtest.Action{Log: upstreamtest.Log{Size: 20_000}})
	a.Grow(100)
	got := e.follow(t, withToken(context.Background(), token), &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1", Offset: 50, Limit: 5000}, time.Time{}, func(int64) { a.Grow(1000) })
	if got.err != nil {
		t.Fatal(got.err)
	}
	if want := upstreamtest.Generate(20_000, "INFO", "stage1")[50:5050]; !bytes.Equal(got.data, want) {
		t.Errorf("got %d bytes, want the %d of the range", len(got.data), len(want))
	}
	if a.Finished() || got.last.GetFinished() {
		t.Errorf("the range ended with the action finished")
	}
}

func TestFollowEndsWithResumeOffset(t *testing.T) {
	t.Parallel()
	start := func(t *testing.T, maxDuration time.Duration) (*env, *upstreamtest.RunningAction) {
		e := newFollowEnv(t, maxDuration)
		a := e.up.AddAction(recordID, "stage1", upstreamtest.Action{Log: upstreamtest.Log{Size: 1 << 20}})
		a.Grow(3000)
		return e, a
	}
	req := func() *buildlogv1.DownloadTaskLogRequest {
		return &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1", Offset: 10}
	}
	ctx := withToken(context.Background(), token)

	t.Run("a stage that never finishes", func(t *testing.T) {
		t.Parallel()
		e, _ := start(t, 200*time.Millisecond)
		got := e.follow(t, ctx, req(), time.Time{}, nil)
		wantResume(t, got, codes.DeadlineExceeded, api.ReasonFollowTimeLimit, 3000)
	})
	t.Run("the connection's age", func(t *testing.T) {
		t.Parallel()
		e, _ := start(t, time.Minute)
		got := e.follow(t, ctx, req(), time.Now().Add(200*time.Millisecond), nil)
		wantResume(t, got, codes.Unavailable, api.ReasonFollowInterrupted, 3000)
	})
	t.Run("shutdown", func(t *testing.T) {
		t.Parallel()
		e, a := start(t, time.Minute)
		e.up.AddLog(recordID, "stage9", upstreamtest.Log{Size: 3000})
		got := e.follow(t, ctx, req(), time.Time{}, func(n int64) {
			if n == 2990 {
				// A download that does not follow is not ended.
				d, err := e.open(ctx, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage9"})
				if err != nil {
					t.Fatal(err)
				}
				e.svc.EndFollows()
				a.Grow(10)
				var all []byte
				for {
					c, err := d.Next()
					if err == io.EOF {
						break
					}
					if err != nil {
						t.Fatalf("a download that does not follow: %v", d.Close(err))
					}
					all = append(all, c.Data...)
					c.Release()
				}
				if err := d.Close(nil); err != nil || len(all) != 3000 {
					t.Errorf("a download that does not follow: %d bytes, %v", len(all), err)
				}
			}
		})
		wantResume(t, got, codes.Unavailable, api.ReasonFollowInterrupted, 3000)
		later := e.follow(t, ctx, req(), time.Time{}, nil)
		wantResume(t, later, codes.Unavailable, api.ReasonFollowInterrupted, 10)
	})
	t.Run("the status endpoint fails mid-follow", func(t *testing.T) {
		t.Parallel()
		e, _ := start(t, time.Minute)
		got := e.follow(t, ctx, req(), time.Time{}, func(n int64) {
			if n == 2990 {
				e.up.Inject(upstreamtest.Fault{Route: upstreamtest.RouteFullStages, Times: -1, Status: 500,
					Body: `{"error_code":"CB.00060101","error_msg":"internal error"}`})
			}
		})
		wantResume(t, got, codes.Internal, api.ReasonUpstreamInternal, 3000)
	})
	t.Run("the log shrinks", func(t *testing.T) {
		t.Parallel()
		e, a := start(t, time.Minute)
		got := e.follow(t, ctx, req(), time.Time{}, func(n int64) {
			if n == 2990 {
				a.Truncate(1000)
			}
		})
		wantError(t, got.err, codes.Aborted, api.ReasonLogChanged)
	})
}

func TestFollowStatusEndpointErrors(t *testing.T) {
	t.Parallel()
	ctx := withToken(context.Background(), token)
	req := &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"}

	e := newFollowEnv(t, time.Minute)
	e.up.AddLog(recordID, "stage1", upstreamtest.Log{Size: 100})
	// Transient failures are retried, as for the log.
	e.up.Inject(upstreamtest.Fault{Route: upstreamtest.RouteFullStages, Times: 2, Status: 500, Body: `{"error_code":"CB.00060100","error_msg":"network busy"}`})
	if got := e.follow(t, ctx, req, time.Time{}, nil); got.err != nil || len(got.data) != 100 {
		t.Errorf("after two busy answers: %d bytes, %v", len(got.data), got.err)
	}
	// The upstream's answers are the caller's. (Another caller's, so that
	// with shared reads on, the state just asked is not this one's answer.)
	other := token + "-other"
	e.up.AddToken(other)
	e.up.Inject(upstreamtest.Fault{Route: upstreamtest.RouteFullStages, Status: 404, Body: `{"error_code":"CB.00060404","error_msg":"no such record"}`})
	got := e.follow(t, withToken(context.Background(), other), req, time.Time{}, nil)
	wantError(t, got.err, codes.NotFound, api.ReasonUpstreamNotFound)
	got = e.follow(t, withToken(context.Background(), "not-a-token"), req, time.Time{}, nil)
	wantError(t, got.err, codes.Unauthenticated, api.ReasonUpstreamUnauthenticated)
	got = e.follow(t, ctx, &buildlogv1.DownloadTaskLogRequest{RecordId: "ffffffff-4e5f-4a6b-8c7d-9e0f1a2b3c4d", TaskName: "stage1"}, time.Time{}, nil)
	wantError(t, got.err, codes.NotFound, api.ReasonUpstreamNotFound)
}

// wantError checks err's code and reason.
func wantError(t *testing.T, err error, code codes.Code, reason string) *api.Error {
	t.Helper()
	var e *api.Error
	if !errors.As(err, &e) || e.Code != code || e.Reason != reason {
		t.Fatalf("got %v, want %s/%s", err, code, reason)
	}
	return e
}

// wantResume checks that a follow ended with code and reason after
// delivering n bytes, asking to follow on from there.
func wantResume(t *testing.T, f followed, code codes.Code, reason string, n int) {
	t.Helper()
	e := wantError(t, f.err, code, reason)
	if len(f.data) != n-10 {
		t.Errorf("%d bytes delivered, want %d", len(f.data), n-10)
	}
	if got := e.Metadata[api.MetadataResumeOffset]; got != strconv.Itoa(n) {
		t.Errorf("resumeOffset %q, want %d", got, n)
	}
}
