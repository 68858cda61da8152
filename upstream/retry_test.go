package upstream_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/buildlog/buildlog/upstream"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// events records what a client reports to its Observer.
type events struct {
	mu        sync.Mutex
	exchanges []string // "status code"
	retries   []string
	resumes   []int64
}

func (e *events) Exchange(status int, code string, _ time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.exchanges = append(e.exchanges, strconv.Itoa(status)+" "+code)
}

func (e *events) Retry(reason string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.retries = append(e.retries, reason)
}

func (e *events) Resume(offset int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.resumes = append(e.resumes, offset)
}

func (e *events) snapshot() (exchanges, retries []string, resumes []int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.exchanges), slices.Clone(e.retries), slices.Clone(e.resumes)
}

// fastRetry retries at once, so tests do not wait on backoff.
var fastRetry = upstream.RetryPolicy{Attempts: 3, Backoff: time.Millisecond, MaxBackoff: time.Millisecond, MaxResumes: 4}

func TestRetriesBeforeTheFirstByte(t *testing.T) {
	t.Parallel()
	busy := upstreamtest.ErrorFault(500, "CB.00060100", "network busy")
	tests := []struct {
		name   string
		fault  upstreamtest.Fault
		reason string
	}{
		{"502", upstreamtest.Fault{Status: 502, Body: "<html>bad gateway</html>"}, "502"},
		{"503", upstreamtest.ErrorFault(503, "APIGW.0203", "service unavailable"), "503"},
		{"504", upstreamtest.Fault{Status: 504}, "504"},
		{"network busy", busy, "CB.00060100"},
		{"hang-up", upstreamtest.Fault{Hangup: true}, "network"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var ev events
			up, c := newUpstream(t, upstream.WithRetry(fastRetry), upstream.WithObserver(&ev))
			up.AddLog(recordID, "stage1", upstreamtest.Log{Size: 5000})
			f := tt.fault
			f.Times = 2 // the third and last attempt succeeds
			up.Inject(f)
			got := download(t, c, upstream.Request{RecordID: recordID, TaskName: "stage1", Token: token})
			if !bytes.Equal(got, upstreamtest.Generate(5000, "INFO", "stage1")) {
				t.Errorf("got %d bytes differing from the log", len(got))
			}
			if n := up.RequestCount(); n != 3 {
				t.Errorf("upstream saw %d requests, want 3", n)
			}
			if _, retries, _ := ev.snapshot(); !slices.Equal(retries, []string{tt.reason, tt.reason}) {
				t.Errorf("retries reported = %q, want two %q", retries, tt.reason)
			}
		})
	}
}

func TestRetriesGiveUp(t *testing.T) {
	t.Parallel()
	t.Run("after the attempts", func(t *testing.T) {
		t.Parallel()
		up, c := newUpstream(t, upstream.WithRetry(fastRetry))
		up.Inject(upstreamtest.Fault{Status: 503, Times: -1})
		_, err := c.DownloadTaskLog(context.Background(), upstream.Request{RecordID: recordID, TaskName: "stage1", Token: token})
		var ue *upstream.Error
		if !errors.As(err, &ue) || ue.StatusCode != 503 {
			t.Errorf("error = %v, want the last answer, HTTP 503", err)
		}
		if n := up.RequestCount(); n != fastRetry.Attempts {
			t.Errorf("upstream saw %d requests, want %d", n, fastRetry.Attempts)
		}
	})
	t.Run("connection refused", func(t *testing.T) {
		t.Parallel()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		var ev events
		c, err := upstream.New("http://"+addr, upstream.WithRetry(fastRetry), upstream.WithObserver(&ev))
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.DownloadTaskLog(context.Background(), upstream.Request{RecordID: recordID, TaskName: "stage1", Token: token})
		var opErr *net.OpError
		if !errors.As(err, &opErr) {
			t.Errorf("error = %v, want a *net.OpError", err)
		}
		if _, retries, _ := ev.snapshot(); !slices.Equal(retries, []string{"connect", "connect"}) {
			t.Errorf("retries reported = %q, want two connect", retries)
		}
	})
	t.Run("Retry-After beyond the policy", func(t *testing.T) {
		t.Parallel()
		up, c := newUpstream(t, upstream.WithRetry(fastRetry))
		up.Inject(upstreamtest.Fault{Status: 503, Header: map[string][]string{"Retry-After": {"30"}}, Times: -1})
		_, err := c.DownloadTaskLog(context.Background(), upstream.Request{RecordID: recordID, TaskName: "stage1", Token: token})
		var ue *upstream.Error
		if !errors.As(err, &ue) || ue.RetryAfter != 30*time.Second {
			t.Errorf("error = %v, want HTTP 503 with its Retry-After", err)
		}
		if n := up.RequestCount(); n != 1 {
			t.Errorf("upstream saw %d requests, want 1: a long Retry-After is passed on, not waited for", n)
		}
	})
	t.Run("within the caller's deadline", func(t *testing.T) {
		t.Parallel()
		// The backoff (at least 30 s) exceeds the deadline, so no retry starts.
		up, c := newUpstream(t, upstream.WithRetry(upstream.RetryPolicy{Attempts: 3, Backoff: time.Minute, MaxBackoff: time.Minute}))
		up.Inject(upstreamtest.Fault{Status: 503, Times: -1})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := c.DownloadTaskLog(ctx, upstream.Request{RecordID: recordID, TaskName: "stage1", Token: token})
		var ue *upstream.Error
		if !errors.As(err, &ue) || ue.StatusCode != 503 {
			t.Errorf("error = %v, want HTTP 503 at once", err)
		}
		if n := up.RequestCount(); n != 1 {
			t.Errorf("upstream saw %d requests, want 1", n)
		}
	})
}

func TestNoRetryOfFinalAnswers(t *testing.T) {
	t.Parallel()
	for _, f := range []upstreamtest.Fault{
		upstreamtest.ErrorFault(400, "CB.00060200", "invalid parameter"),
		upstreamtest.ErrorFault(401, "APIGW.0301", "token expired"),
		upstreamtest.ErrorFault(403, "APIGW.0302", "forbidden"),
		upstreamtest.ErrorFault(404, "CB.00060404", "no such record"),
		upstreamtest.Throttled(time.Second),
		upstreamtest.ErrorFault(500, "CB.00060211", "too many requests"),
		upstreamtest.ErrorFault(500, "CB.00060101", "internal error"),
	} {
		t.Run(fmt.Sprint(f.Status, " ", f.Body), func(t *testing.T) {
			t.Parallel()
			var ev events
			up, c := newUpstream(t, upstream.WithRetry(fastRetry), upstream.WithObserver(&ev))
			up.AddLog(recordID, "stage1", upstreamtest.Log{Size: 100})
			f.Times = -1
			up.Inject(f)
			_, err := c.DownloadTaskLog(context.Background(), upstream.Request{RecordID: recordID, TaskName: "stage1", Token: token})
			var ue *upstream.Error
			if !errors.As(err, &ue) || ue.StatusCode != f.Status {
				t.Errorf("error = %v, want HTTP %d", err, f.Status)
			}
			if n := up.RequestCount(); n != 1 {
				t.Errorf("upstream saw %d requests, want 1", n)
			}
			if exchanges, retries, _ := ev.snapshot(); len(retries) != 0 || len(exchanges) != 1 || exchanges[0] != fmt.Sprint(f.Status, " ", ue.Code) {
				t.Errorf("observed exchanges %q and retries %q, want one exchange %d %s and no retry", exchanges, retries, f.Status, ue.Code)
			}
		})
	}
}

func TestResumeAfterTheFirstByte(t *testing.T) {
	t.Parallel()
	const size = 300_000
	tests := []struct {
		name      string
		log       upstreamtest.Log
		req       upstream.Request
		faults    []upstreamtest.Fault
		wantRange []string // Range headers of the requests, in order
		resumes   []int64
	}{
		{
			name:      "cut, Content-Length",
			log:       upstreamtest.Log{Size: size},
			faults:    []upstreamtest.Fault{{Cut: true, CutAfter: 100_000}},
			wantRange: []string{"", "bytes=100000-"},
			resumes:   []int64{100_000},
		},
		{
			name:      "cut twice, chunked",
			log:       upstreamtest.Log{Size: size, OmitLength: true},
			faults:    []upstreamtest.Fault{{Cut: true, CutAfter: 70_000}, {Cut: true, CutAfter: 10_000}},
			wantRange: []string{"", "bytes=70000-", "bytes=80000-"},
			resumes:   []int64{70_000, 80_000},
		},
		{
			name:      "cut, no Range support: refetch and skip",
			log:       upstreamtest.Log{Size: size, IgnoreRange: true},
			faults:    []upstreamtest.Fault{{Cut: true, CutAfter: 123_456}},
			wantRange: []string{"", "bytes=123456-"},
			resumes:   []int64{123_456},
		},
		{
			name:      "a ranged request cut",
			log:       upstreamtest.Log{Size: size},
			req:       upstream.Request{Offset: 1000, Limit: 200_000},
			faults:    []upstreamtest.Fault{{Cut: true, CutAfter: 50_000}},
			wantRange: []string{"bytes=1000-200999", "bytes=51000-200999"},
			resumes:   []int64{51_000},
		},
		{
			name:      "cut, then the resumption fails once",
			log:       upstreamtest.Log{Size: size},
			faults:    []upstreamtest.Fault{{Cut: true, CutAfter: 1}, {Status: 503}},
			wantRange: []string{"", "bytes=1-", "bytes=1-"},
			resumes:   []int64{1},
		},
		{
			name:      "cut, same ETag",
			log:       upstreamtest.Log{Size: size, ETag: `"v1"`},
			faults:    []upstreamtest.Fault{{Cut: true, CutAfter: 65_536}},
			wantRange: []string{"", "bytes=65536-"},
			resumes:   []int64{65_536},
		},
		{
			name:      "stall: the idle timeout",
			log:       upstreamtest.Log{Size: size},
			faults:    []upstreamtest.Fault{{Stall: true, StallAfter: 4096}},
			wantRange: []string{"", "bytes=4096-"},
			resumes:   []int64{4096},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var ev events
			up, c := newUpstream(t, upstream.WithRetry(fastRetry), upstream.WithObserver(&ev), upstream.WithIdleTimeout(time.Second))
			up.AddLog(recordID, "stage1", tt.log)
			for _, f := range tt.faults {
				up.Inject(f)
			}
			req := tt.req
			req.RecordID, req.TaskName, req.Token = recordID, "stage1", token
			got := download(t, c, req)
			log := upstreamtest.Generate(size, "INFO", "stage1")
			end := int64(size)
			if req.Limit > 0 {
				end = req.Offset + req.Limit
			}
			skip := req.Offset
			if tt.log.IgnoreRange {
				skip = 0
			}
			if want := log[skip:end]; !bytes.Equal(got, want) {
				t.Errorf("got %d bytes, want the %d of the log's range, identical", len(got), len(want))
			}
			var ranges []string
			for _, r := range up.Requests() {
				ranges = append(ranges, r.Header.Get("Range"))
			}
			if !slices.Equal(ranges, tt.wantRange) {
				t.Errorf("upstream requests' Range = %q, want %q", ranges, tt.wantRange)
			}
			if _, _, resumes := ev.snapshot(); !slices.Equal(resumes, tt.resumes) {
				t.Errorf("resumes reported at %v, want %v", resumes, tt.resumes)
			}
		})
	}
}

func TestResumeRefusesAChangedLog(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		first  upstreamtest.Log
		second upstreamtest.Log
	}{
		{"size changed", upstreamtest.Log{Size: 200_000}, upstreamtest.Log{Size: 250_000}},
		{"size changed, no Range support", upstreamtest.Log{Size: 200_000, IgnoreRange: true}, upstreamtest.Log{Size: 199_999, IgnoreRange: true}},
		{"shrank below the break, no length", upstreamtest.Log{Size: 200_000, OmitLength: true}, upstreamtest.Log{Size: 50_000, OmitLength: true}},
		{"same size, another ETag", upstreamtest.Log{Size: 200_000, ETag: `"v1"`}, upstreamtest.Log{Size: 200_000, ETag: `"v2"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			up, c := newUpstream(t, upstream.WithRetry(fastRetry))
			up.AddLog(recordID, "stage1", tt.first)
			up.Inject(upstreamtest.Fault{Cut: true, CutAfter: 100_000, After: func() { up.AddLog(recordID, "stage1", tt.second) }})
			log, err := c.DownloadTaskLog(context.Background(), upstream.Request{RecordID: recordID, TaskName: "stage1", Token: token})
			if err != nil {
				t.Fatal(err)
			}
			defer log.Body.Close()
			n, err := io.Copy(io.Discard, log.Body)
			var changed *upstream.ChangedError
			if !errors.As(err, &changed) || changed.Offset != 100_000 {
				t.Errorf("read %d bytes, error %v; want a *ChangedError at offset 100000", n, err)
			}
			if n != 100_000 {
				t.Errorf("read %d bytes, want the 100000 before the break and nothing of the changed log", n)
			}
		})
	}
}

func TestResumeBounds(t *testing.T) {
	t.Parallel()
	t.Run("resumptions", func(t *testing.T) {
		t.Parallel()
		up, c := newUpstream(t, upstream.WithRetry(fastRetry))
		up.AddLog(recordID, "stage1", upstreamtest.Log{Size: 100_000})
		up.Inject(upstreamtest.Fault{Cut: true, CutAfter: 1000, Times: -1})
		log, err := c.DownloadTaskLog(context.Background(), upstream.Request{RecordID: recordID, TaskName: "stage1", Token: token})
		if err != nil {
			t.Fatal(err)
		}
		defer log.Body.Close()
		n, err := io.Copy(io.Discard, log.Body)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("error = %v, want the last break, io.ErrUnexpectedEOF", err)
		}
		if want := int64(1000 * (fastRetry.MaxResumes + 1)); n != want {
			t.Errorf("read %d bytes, want %d: the first answer and %d resumptions", n, want, fastRetry.MaxResumes)
		}
		if got := up.RequestCount(); got != fastRetry.MaxResumes+1 {
			t.Errorf("upstream saw %d requests, want %d", got, fastRetry.MaxResumes+1)
		}
	})
	t.Run("the caller gone", func(t *testing.T) {
		t.Parallel()
		up, c := newUpstream(t, upstream.WithRetry(fastRetry))
		up.AddLog(recordID, "stage1", upstreamtest.Log{Size: 100_000})
		up.Inject(upstreamtest.Fault{Stall: true, StallAfter: 1000})
		ctx, cancel := context.WithCancel(context.Background())
		log, err := c.DownloadTaskLog(ctx, upstream.Request{RecordID: recordID, TaskName: "stage1", Token: token})
		if err != nil {
			t.Fatal(err)
		}
		defer log.Body.Close()
		if _, err := io.ReadFull(log.Body, make([]byte, 1000)); err != nil {
			t.Fatal(err)
		}
		cancel()
		if _, err := io.Copy(io.Discard, log.Body); !errors.Is(err, context.Canceled) {
			t.Errorf("error = %v, want context.Canceled", err)
		}
		if got := up.RequestCount(); got != 1 {
			t.Errorf("upstream saw %d requests, want 1: nothing resumes for a caller who left", got)
		}
	})
}

// download reads the whole log of req.
func download(t *testing.T, c *upstream.Client, req upstream.Request) []byte {
	t.Helper()
	log, err := c.DownloadTaskLog(context.Background(), req)
	if err != nil {
		t.Fatalf("DownloadTaskLog: %v", err)
	}
	defer log.Body.Close()
	got, err := io.ReadAll(log.Body)
	if err != nil {
		t.Fatalf("after %d bytes: %v", len(got), err)
	}
	return got
}

// TestResumedRequestID checks that Log.RequestID names the answer being
// read: after a resumption, the resumed one, for the diagnostics of a
// later failure.
func TestResumedRequestID(t *testing.T) {
	t.Parallel()
	up, c := newUpstream(t, upstream.WithRetry(fastRetry))
	up.AddLog(recordID, "stage1", upstreamtest.Log{Size: 100_000})
	up.Inject(upstreamtest.Fault{Cut: true, CutAfter: 10_000})
	log, err := c.DownloadTaskLog(context.Background(), upstream.Request{RecordID: recordID, TaskName: "stage1", Token: token})
	if err != nil {
		t.Fatal(err)
	}
	defer log.Body.Close()
	first := log.RequestID
	if _, err := io.Copy(io.Discard, log.Body); err != nil {
		t.Fatal(err)
	}
	if log.RequestID == "" || log.RequestID == first {
		t.Errorf("RequestID after a resumption = %q (first answer's %q), want the resumed answer's", log.RequestID, first)
	}
}
