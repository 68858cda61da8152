package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/buildlog/buildlog/api"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/server"
	"github.com/buildlog/buildlog/server/servertest"
	"github.com/buildlog/buildlog/upstream"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// faultPolicy retries at once, so the suite does not wait on backoff.
var faultPolicy = upstream.RetryPolicy{Attempts: 3, Backoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, MaxResumes: 4}

// faultOutcome is what a caller must see: the whole log byte-identical
// (codes.OK), or an exact error. After the first byte the REST mirror cannot
// send a status any more; it cuts the response off instead (restCut).
type faultOutcome struct {
	code       codes.Code
	reason     string
	httpStatus int
	restCut    bool
	// requests is how many upstream requests one download makes.
	requests int
}

// TestFaults is the fault-injection suite: each upstream fault, on the
// gRPC and the REST path, with its asserted outcome. The closing note of
// the resilience work tabulates it.
func TestFaults(t *testing.T) {
	t.Parallel()
	const size = 1<<20 + 7
	ok := func(requests int) faultOutcome {
		return faultOutcome{code: codes.OK, httpStatus: 200, requests: requests}
	}
	once := func(f upstreamtest.Fault) []upstreamtest.Fault { return []upstreamtest.Fault{f} }
	times := func(n int, f upstreamtest.Fault) []upstreamtest.Fault { f.Times = n; return []upstreamtest.Fault{f} }
	tests := []struct {
		name     string
		log      upstreamtest.Log
		faults   func(s *servertest.Stack) []upstreamtest.Fault
		deadline time.Duration // the caller's; 0 for none
		want     faultOutcome
	}{
		{name: "no fault", want: ok(1)},
		{name: "hang-up before answering, twice",
			faults: func(*servertest.Stack) []upstreamtest.Fault { return times(2, upstreamtest.Fault{Hangup: true}) }, want: ok(3)},
		{name: "503, twice",
			faults: func(*servertest.Stack) []upstreamtest.Fault {
				return times(2, upstreamtest.ErrorFault(503, "APIGW.0203", "unavailable"))
			}, want: ok(3)},
		{name: "network busy CB.00060100, twice",
			faults: func(*servertest.Stack) []upstreamtest.Fault {
				return times(2, upstreamtest.ErrorFault(500, "CB.00060100", "network busy"))
			}, want: ok(3)},
		{name: "502 in HTML on every attempt",
			faults: func(*servertest.Stack) []upstreamtest.Fault {
				return times(-1, upstreamtest.Fault{Status: 502, Body: "<html>bad gateway</html>"})
			},
			want: faultOutcome{code: codes.Unavailable, reason: api.ReasonUpstreamUnavailable, httpStatus: 502, requests: 3}},
		{name: "no headers within the header timeout, every attempt",
			faults: func(*servertest.Stack) []upstreamtest.Fault { return times(-1, upstreamtest.Fault{Delay: time.Hour}) },
			want:   faultOutcome{code: codes.Unavailable, reason: api.ReasonUpstreamTimeout, httpStatus: 504, requests: 3}},
		{name: "throttled 429: no retry",
			faults: func(*servertest.Stack) []upstreamtest.Fault { return once(upstreamtest.Throttled(2 * time.Second)) },
			want:   faultOutcome{code: codes.ResourceExhausted, reason: api.ReasonUpstreamThrottled, httpStatus: 429, requests: 1}},
		{name: "throttled as a 500 CB.00060211: no retry",
			faults: func(*servertest.Stack) []upstreamtest.Fault {
				return once(upstreamtest.ErrorFault(500, "CB.00060211", "too many requests"))
			},
			want: faultOutcome{code: codes.ResourceExhausted, reason: api.ReasonUpstreamThrottled, httpStatus: 429, requests: 1}},
		{name: "token rejected 401: no retry",
			faults: func(*servertest.Stack) []upstreamtest.Fault {
				return once(upstreamtest.ErrorFault(401, upstreamtest.AuthFailedCode, "token expired"))
			},
			want: faultOutcome{code: codes.Unauthenticated, reason: api.ReasonUpstreamUnauthenticated, httpStatus: 401, requests: 1}},
		{name: "cut mid-body",
			faults: func(*servertest.Stack) []upstreamtest.Fault {
				return once(upstreamtest.Fault{Cut: true, CutAfter: 300_000})
			}, want: ok(2)},
		{name: "cut mid-body, no Content-Length", log: upstreamtest.Log{OmitLength: true},
			faults: func(*servertest.Stack) []upstreamtest.Fault {
				return once(upstreamtest.Fault{Cut: true, CutAfter: 300_000})
			}, want: ok(2)},
		{name: "cut mid-body, no Range support: refetch and skip", log: upstreamtest.Log{IgnoreRange: true},
			faults: func(*servertest.Stack) []upstreamtest.Fault {
				return once(upstreamtest.Fault{Cut: true, CutAfter: 300_000})
			}, want: ok(2)},
		{name: "cut at the first byte",
			faults: func(*servertest.Stack) []upstreamtest.Fault { return once(upstreamtest.Fault{Cut: true, CutAfter: 0}) }, want: ok(2)},
		{name: "stall mid-body: the idle timeout",
			faults: func(*servertest.Stack) []upstreamtest.Fault {
				return once(upstreamtest.Fault{Stall: true, StallAfter: 200_000})
			}, want: ok(2)},
		{name: "cut, then the resumption answers 503",
			faults: func(*servertest.Stack) []upstreamtest.Fault {
				return []upstreamtest.Fault{{Cut: true, CutAfter: 500_000}, upstreamtest.ErrorFault(503, "APIGW.0203", "unavailable")}
			}, want: ok(3)},
		{name: "slow drip",
			faults: func(*servertest.Stack) []upstreamtest.Fault {
				return once(upstreamtest.Fault{DripBytes: 64 << 10, DripEvery: time.Millisecond})
			}, want: ok(1)},
		{name: "every answer cut: resumptions run out",
			faults: func(*servertest.Stack) []upstreamtest.Fault {
				return times(-1, upstreamtest.Fault{Cut: true, CutAfter: 100_000})
			},
			want: faultOutcome{code: codes.Unavailable, reason: api.ReasonUpstreamInterrupted, httpStatus: 200, restCut: true, requests: 1 + faultPolicy.MaxResumes}},
		{name: "cut, then the resumption answers 401",
			faults: func(*servertest.Stack) []upstreamtest.Fault {
				return []upstreamtest.Fault{{Cut: true, CutAfter: 100_000}, upstreamtest.ErrorFault(401, upstreamtest.AuthFailedCode, "token expired")}
			},
			want: faultOutcome{code: codes.Unavailable, reason: api.ReasonUpstreamInterrupted, httpStatus: 200, restCut: true, requests: 2}},
		{name: "the log changes between a cut and its resumption",
			faults: func(s *servertest.Stack) []upstreamtest.Fault {
				return once(upstreamtest.Fault{Cut: true, CutAfter: 100_000, After: func() {
					s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: 2 * size})
				}})
			},
			want: faultOutcome{code: codes.Aborted, reason: api.ReasonLogChanged, httpStatus: 200, restCut: true, requests: 2}},
		{name: "the caller's deadline passes first", deadline: 200 * time.Millisecond,
			faults: func(*servertest.Stack) []upstreamtest.Fault { return once(upstreamtest.Fault{Delay: time.Hour}) },
			// The caller's own deadline ends the call: grpc-go reports it
			// client-side, with no details from the server.
			want: faultOutcome{code: codes.DeadlineExceeded, httpStatus: 504, requests: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := servertest.StartWith(t, func(c *server.Config) {
				c.UpstreamRetry = faultPolicy
				// Short enough for the stall and header faults, long enough
				// that a loaded machine does not trip them elsewhere.
				c.UpstreamHeaderTimeout = time.Second
				c.UpstreamIdleTimeout = time.Second
				if tt.deadline > 0 {
					c.UpstreamHeaderTimeout = time.Minute // the caller's deadline comes first
				}
			})
			for _, path := range []string{"gRPC", "REST"} {
				t.Run(path, func(t *testing.T) {
					log := tt.log
					log.Size = size
					s.Upstream.AddLog(recordID, "stage1", log)
					full := upstreamtest.Generate(size, "INFO", "stage1")
					if tt.faults != nil {
						for _, f := range tt.faults(s) {
							f.RecordID = recordID
							s.Upstream.Inject(f)
						}
					}
					before := s.Upstream.RequestCount()
					if path == "gRPC" {
						checkGRPCOutcome(t, s, tt.deadline, full, tt.want)
					} else {
						checkRESTOutcome(t, s, tt.deadline, full, tt.want)
					}
					if n := s.Upstream.RequestCount() - before; n != tt.want.requests {
						t.Errorf("the upstream saw %d requests, want %d", n, tt.want.requests)
					}
					for _, r := range s.Upstream.Requests() {
						<-r.Done // every upstream request ends: nothing leaks
					}
				})
			}
		})
	}
}

func checkGRPCOutcome(t *testing.T, s *servertest.Stack, deadline time.Duration, full []byte, want faultOutcome) {
	t.Helper()
	ctx := metadata.AppendToOutgoingContext(context.Background(), api.TokenMetadataKey, servertest.Token)
	if deadline > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, deadline)
		defer cancel()
	}
	stream, err := s.Client.DownloadTaskLog(ctx, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"})
	if err != nil {
		t.Fatal(err)
	}
	var data []byte
	for {
		msg, rerr := stream.Recv()
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			err = rerr
			break
		}
		data = append(data, msg.GetData()...)
	}
	st := status.Convert(err)
	if want.code == codes.OK {
		if err != nil || !bytes.Equal(data, full) {
			t.Errorf("got %d bytes and %v, want the %d bytes of the log, identical", len(data), err, len(full))
		}
		return
	}
	if st.Code() != want.code || (want.reason != "" && reasonOf(st) != want.reason) {
		t.Errorf("got %v %s (%v), want %v %s", st.Code(), reasonOf(st), err, want.code, want.reason)
	}
	if !bytes.Equal(data, full[:len(data)]) || len(data) == len(full) {
		t.Errorf("got %d bytes before the error, want a correct, partial prefix", len(data))
	}
	if strings.Contains(fmt.Sprint(st.Proto()), servertest.Token) {
		t.Error("the status contains the token")
	}
}

func checkRESTOutcome(t *testing.T, s *servertest.Stack, deadline time.Duration, full []byte, want faultOutcome) {
	t.Helper()
	var header []string
	if deadline > 0 {
		// grpc-gateway turns Grpc-Timeout into the call's deadline.
		header = []string{"Grpc-Timeout", fmt.Sprintf("%dm", deadline.Milliseconds())}
	}
	resp, body, err := s.Get(t, logPath("stage1"), servertest.Token, header...)
	if resp.StatusCode != want.httpStatus {
		t.Fatalf("status %d, want %d (body %.200s)", resp.StatusCode, want.httpStatus, body)
	}
	switch {
	case want.code == codes.OK:
		if err != nil || !bytes.Equal(body, full) {
			t.Errorf("got %d bytes and %v, want the %d bytes of the log, identical", len(body), err, len(full))
		}
	case want.restCut:
		if !errors.Is(err, io.ErrUnexpectedEOF) || !bytes.Equal(body, full[:min(len(body), len(full))]) || len(body) >= len(full) {
			t.Errorf("got %d bytes ending with %v, want a correct prefix cut off (io.ErrUnexpectedEOF)", len(body), err)
		}
	default:
		var doc map[string]string
		if err != nil || json.Unmarshal(body, &doc) != nil || doc["error_code"] == "" {
			t.Errorf("body %.200s (%v), want the JSON error document", body, err)
		}
		if want.code == codes.ResourceExhausted && resp.Header.Get("Retry-After") == "" {
			t.Error("no Retry-After on a throttled answer")
		}
	}
	if bytes.Contains(body, []byte(servertest.Token)) {
		t.Error("the body contains the token")
	}
}

// reasonOf returns the ErrorInfo reason of st, or "" without one.
func reasonOf(st *status.Status) string {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.GetReason()
		}
	}
	return ""
}
