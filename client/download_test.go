package client_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/buildlog/buildlog/api"
	"github.com/buildlog/buildlog/client"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
)

// scriptedServer answers the i-th DownloadTaskLog call with its script's
// i-th step (the last one again after the end), to make the endings a
// real buildlogd does not: overlaps, gaps, offsets it never sends.
type scriptedServer struct {
	buildlogv1.UnimplementedBuildLogServiceServer
	steps []step

	mu   sync.Mutex
	reqs []*buildlogv1.DownloadTaskLogRequest
}

// step is one call's answer: messages, then the ending.
type step struct {
	msgs []*buildlogv1.DownloadTaskLogResponse
	end  error
}

func (s *scriptedServer) DownloadTaskLog(req *buildlogv1.DownloadTaskLogRequest, stream grpc.ServerStreamingServer[buildlogv1.DownloadTaskLogResponse]) error {
	s.mu.Lock()
	s.reqs = append(s.reqs, proto.CloneOf(req))
	st := s.steps[min(len(s.reqs), len(s.steps))-1]
	s.mu.Unlock()
	for _, m := range st.msgs {
		if err := stream.Send(m); err != nil {
			return err
		}
	}
	return st.end
}

func (s *scriptedServer) requests() []*buildlogv1.DownloadTaskLogRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reqs
}

// startScripted serves steps on a loopback port and returns a client.
func startScripted(t *testing.T, steps ...step) (*scriptedServer, buildlogv1.BuildLogServiceClient) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &scriptedServer{steps: steps}
	gs := grpc.NewServer()
	buildlogv1.RegisterBuildLogServiceServer(gs, s)
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	return s, buildlogv1.NewBuildLogServiceClient(dial(t, ln.Addr().String(), client.WithChunkCodec()))
}

var text = bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyz\n"), 10)

// chunk is the message with text[from:to], and md on it when not nil.
func chunk(from, to int64, md *buildlogv1.LogMetadata) *buildlogv1.DownloadTaskLogResponse {
	return &buildlogv1.DownloadTaskLogResponse{Data: text[from:to], Offset: from, Metadata: md}
}

func sized(n int64) *buildlogv1.LogMetadata { return &buildlogv1.LogMetadata{TotalSize: &n} }

// ended returns a status error with the given reason and, when
// resume >= 0, resumeOffset.
func ended(c codes.Code, reason string, resume int64) error {
	e := &api.Error{Code: c, Reason: reason, Message: "scripted"}
	if resume >= 0 {
		e.Metadata = map[string]string{api.MetadataResumeOffset: strconv.FormatInt(resume, 10)}
	}
	return e.GRPCStatus().Err()
}

func TestDownloadScripted(t *testing.T) {
	t.Parallel()
	finished := &buildlogv1.ActionState{Finished: true, Status: "success"}
	tests := []struct {
		name      string
		req       *buildlogv1.DownloadTaskLogRequest
		steps     []step
		want      []byte     // written
		wantCode  codes.Code // of the error, when not a protocol error
		wantProto bool       // the error wraps ErrProtocol
		wantReqs  [][2]int64 // offset and limit of each call
	}{
		{
			name: "a lower resumeOffset: the bytes received again are skipped",
			req:  &buildlogv1.DownloadTaskLogRequest{},
			steps: []step{
				{msgs: []*buildlogv1.DownloadTaskLogResponse{chunk(0, 100, sized(300))}, end: ended(codes.Unavailable, api.ReasonCallerIdle, 60)},
				{msgs: []*buildlogv1.DownloadTaskLogResponse{chunk(60, 80, sized(300)), chunk(80, 300, nil)}},
			},
			want:     text[:300],
			wantReqs: [][2]int64{{0, 0}, {60, 0}},
		},
		{
			name: "no details: resumed from the bytes received, with the remaining limit",
			req:  &buildlogv1.DownloadTaskLogRequest{Offset: 10, Limit: 200},
			steps: []step{
				{msgs: []*buildlogv1.DownloadTaskLogResponse{chunk(10, 50, nil)}, end: status.Error(codes.Unavailable, "transport is closing")},
				{msgs: []*buildlogv1.DownloadTaskLogResponse{chunk(50, 210, nil)}},
			},
			want:     text[10:210],
			wantReqs: [][2]int64{{10, 200}, {50, 160}},
		},
		{
			name: "a failure after the range's last byte completes it",
			req:  &buildlogv1.DownloadTaskLogRequest{Limit: 100},
			steps: []step{
				{msgs: []*buildlogv1.DownloadTaskLogResponse{chunk(0, 100, nil)}, end: ended(codes.Unavailable, api.ReasonUpstreamInterrupted, 100)},
			},
			want:     text[:100],
			wantReqs: [][2]int64{{0, 100}},
		},
		{
			name: "a resumeOffset past the bytes received",
			req:  &buildlogv1.DownloadTaskLogRequest{},
			steps: []step{
				{msgs: []*buildlogv1.DownloadTaskLogResponse{chunk(0, 100, nil)}, end: ended(codes.Unavailable, api.ReasonUpstreamInterrupted, 150)},
			},
			want:      text[:100],
			wantProto: true,
			wantReqs:  [][2]int64{{0, 0}},
		},
		{
			name: "a gap",
			req:  &buildlogv1.DownloadTaskLogRequest{},
			steps: []step{
				{msgs: []*buildlogv1.DownloadTaskLogResponse{chunk(0, 100, nil), chunk(150, 200, nil)}},
			},
			want:      text[:100],
			wantProto: true,
			wantReqs:  [][2]int64{{0, 0}},
		},
		{
			name: "an overlap within a call",
			req:  &buildlogv1.DownloadTaskLogRequest{},
			steps: []step{
				{msgs: []*buildlogv1.DownloadTaskLogResponse{chunk(0, 100, nil), chunk(90, 200, nil)}},
			},
			want:      text[:100],
			wantProto: true,
			wantReqs:  [][2]int64{{0, 0}},
		},
		{
			name: "data past the limit",
			req:  &buildlogv1.DownloadTaskLogRequest{Limit: 50},
			steps: []step{
				{msgs: []*buildlogv1.DownloadTaskLogResponse{chunk(0, 40, nil), chunk(40, 80, nil)}},
			},
			want:      text[:40],
			wantProto: true,
			wantReqs:  [][2]int64{{0, 50}},
		},
		{
			name: "OK before the announced size",
			req:  &buildlogv1.DownloadTaskLogRequest{},
			steps: []step{
				{msgs: []*buildlogv1.DownloadTaskLogResponse{chunk(0, 100, sized(300))}},
			},
			want:      text[:100],
			wantProto: true,
			wantReqs:  [][2]int64{{0, 0}},
		},
		{
			name: "a resumed call OK without a message",
			req:  &buildlogv1.DownloadTaskLogRequest{},
			steps: []step{
				{msgs: []*buildlogv1.DownloadTaskLogResponse{chunk(0, 100, sized(300))}, end: ended(codes.Unavailable, api.ReasonUpstreamInterrupted, 100)},
				{},
			},
			want:      text[:100],
			wantProto: true,
			wantReqs:  [][2]int64{{0, 0}, {100, 0}},
		},
		{
			name: "a resumed call OK before the size the first announced",
			req:  &buildlogv1.DownloadTaskLogRequest{},
			steps: []step{
				{msgs: []*buildlogv1.DownloadTaskLogResponse{chunk(0, 100, sized(300))}, end: ended(codes.Unavailable, api.ReasonUpstreamInterrupted, 100)},
				{msgs: []*buildlogv1.DownloadTaskLogResponse{chunk(100, 200, nil)}},
			},
			want:      text[:200],
			wantProto: true,
			wantReqs:  [][2]int64{{0, 0}, {100, 0}},
		},
		{
			name: "a resumed call announcing another size",
			req:  &buildlogv1.DownloadTaskLogRequest{},
			steps: []step{
				{msgs: []*buildlogv1.DownloadTaskLogResponse{chunk(0, 100, sized(300))}, end: ended(codes.Unavailable, api.ReasonUpstreamInterrupted, 100)},
				{msgs: []*buildlogv1.DownloadTaskLogResponse{chunk(100, 200, sized(200))}},
			},
			want:      text[:100],
			wantProto: true,
			wantReqs:  [][2]int64{{0, 0}, {100, 0}},
		},
		{
			name: "a followed stream OK before the action finished",
			req:  &buildlogv1.DownloadTaskLogRequest{Follow: true},
			steps: []step{
				{msgs: []*buildlogv1.DownloadTaskLogResponse{chunk(0, 100, nil)}},
			},
			want:      text[:100],
			wantProto: true,
			wantReqs:  [][2]int64{{0, 0}},
		},
		{
			name: "a followed stream through the server's time limit",
			req:  &buildlogv1.DownloadTaskLogRequest{Follow: true},
			steps: []step{
				{msgs: []*buildlogv1.DownloadTaskLogResponse{chunk(0, 100, nil)}, end: ended(codes.DeadlineExceeded, api.ReasonFollowTimeLimit, 100)},
				{msgs: []*buildlogv1.DownloadTaskLogResponse{chunk(100, 200, nil), {Offset: 200, Action: finished}}},
			},
			want:     text[:200],
			wantReqs: [][2]int64{{0, 0}, {100, 0}},
		},
		{
			name: "throttled with a retry delay",
			req:  &buildlogv1.DownloadTaskLogRequest{},
			steps: []step{
				{end: (&api.Error{Code: codes.ResourceExhausted, Reason: api.ReasonOverloaded, Message: "busy", RetryDelay: time.Millisecond}).GRPCStatus().Err()},
				{msgs: []*buildlogv1.DownloadTaskLogResponse{chunk(0, 10, sized(10))}},
			},
			want:     text[:10],
			wantReqs: [][2]int64{{0, 0}, {0, 0}},
		},
		{
			name:     "throttled without a retry delay is final",
			req:      &buildlogv1.DownloadTaskLogRequest{},
			steps:    []step{{end: ended(codes.ResourceExhausted, api.ReasonUpstreamThrottled, -1)}},
			wantCode: codes.ResourceExhausted,
			wantReqs: [][2]int64{{0, 0}},
		},
		{
			name:     "a deadline that is not the follow limit is final",
			req:      &buildlogv1.DownloadTaskLogRequest{Follow: true},
			steps:    []step{{end: ended(codes.DeadlineExceeded, api.ReasonDeadlineExceeded, 0)}},
			wantCode: codes.DeadlineExceeded,
			wantReqs: [][2]int64{{0, 0}},
		},
		{
			name:     "the log changed",
			req:      &buildlogv1.DownloadTaskLogRequest{},
			steps:    []step{{msgs: []*buildlogv1.DownloadTaskLogResponse{chunk(0, 10, nil)}, end: ended(codes.Aborted, api.ReasonLogChanged, 0)}},
			want:     text[:10],
			wantCode: codes.Aborted,
			wantReqs: [][2]int64{{0, 0}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, c := startScripted(t, tt.steps...)
			var out bytes.Buffer
			res, err := client.Download(context.Background(), c, tt.req, &out, client.WithBackoff(time.Millisecond, time.Millisecond))
			switch {
			case tt.wantProto:
				if !errors.Is(err, client.ErrProtocol) {
					t.Errorf("Download() = %v, want ErrProtocol", err)
				}
			case status.Code(err) != tt.wantCode:
				t.Errorf("Download() = %v, want code %v", err, tt.wantCode)
			}
			if !bytes.Equal(out.Bytes(), tt.want) {
				t.Errorf("wrote %q, want %q", out.Bytes(), tt.want)
			}
			if res.Written != int64(len(tt.want)) {
				t.Errorf("Written = %d, want %d", res.Written, len(tt.want))
			}
			var gotReqs [][2]int64
			for _, r := range s.requests() {
				gotReqs = append(gotReqs, [2]int64{r.GetOffset(), r.GetLimit()})
				if r.GetFollow() != tt.req.GetFollow() {
					t.Errorf("a call with follow %v, want %v", r.GetFollow(), tt.req.GetFollow())
				}
			}
			if diff := cmp.Diff(tt.wantReqs, gotReqs); diff != "" {
				t.Errorf("calls (offset, limit) (-want +got):\n%s", diff)
			}
			if res.Calls != len(gotReqs) {
				t.Errorf("Calls = %d, the server saw %d", res.Calls, len(gotReqs))
			}
		})
	}
}

func TestDownloadRetryBudget(t *testing.T) {
	t.Parallel()
	unavailable := ended(codes.Unavailable, api.ReasonUpstreamUnreachable, -1)
	tests := []struct {
		name      string
		steps     []step
		opts      []client.Option
		wantCalls int
		wantCode  codes.Code
	}{
		{"calls without progress in a row", []step{{end: unavailable}}, []client.Option{client.WithMaxRetries(3)}, 4, codes.Unavailable},
		{"reconnecting off", []step{{end: unavailable}}, []client.Option{client.WithMaxRetries(0)}, 1, codes.Unavailable},
		{
			// Each call writes a byte: progress resets the count, so the
			// six calls are more than the budget of two.
			"progress resets the count",
			[]step{
				{msgs: []*buildlogv1.DownloadTaskLogResponse{chunk(0, 1, nil)}, end: unavailable},
				{end: unavailable},
				{msgs: []*buildlogv1.DownloadTaskLogResponse{chunk(1, 2, nil)}, end: unavailable},
				{end: unavailable},
				{msgs: []*buildlogv1.DownloadTaskLogResponse{chunk(2, 3, nil)}, end: unavailable},
				{msgs: []*buildlogv1.DownloadTaskLogResponse{chunk(3, 4, sized(4))}},
			},
			[]client.Option{client.WithMaxRetries(2)}, 6, codes.OK,
		},
		{"final errors are not retried", []step{{end: ended(codes.Unauthenticated, api.ReasonUpstreamUnauthenticated, -1)}}, nil, 1, codes.Unauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, c := startScripted(t, tt.steps...)
			var reconnects []client.Reconnect
			opts := append([]client.Option{
				client.WithBackoff(time.Millisecond, 2*time.Millisecond),
				client.OnReconnect(func(r client.Reconnect) { reconnects = append(reconnects, r) }),
			}, tt.opts...)
			res, err := client.Download(context.Background(), c, &buildlogv1.DownloadTaskLogRequest{}, &bytes.Buffer{}, opts...)
			if status.Code(err) != tt.wantCode || res.Calls != tt.wantCalls {
				t.Errorf("Download() = %v after %d calls, want %v after %d", err, res.Calls, tt.wantCode, tt.wantCalls)
			}
			if len(reconnects) != res.Calls-1 {
				t.Errorf("%d reconnects reported for %d calls", len(reconnects), res.Calls)
			}
			for _, r := range reconnects {
				if status.Code(r.Err) != codes.Unavailable || r.Failures == 0 && r.Delay != 0 {
					t.Errorf("reconnect %+v: want an UNAVAILABLE error, and no pause after progress", r)
				}
			}
		})
	}
}

func TestDownloadContextEnds(t *testing.T) {
	t.Parallel()
	_, c := startScripted(t, step{end: ended(codes.Unavailable, api.ReasonUpstreamUnreachable, -1)})
	ctx, cancel := context.WithCancel(context.Background())
	// The pause before the reconnect is long; cancelling ends it.
	_, err := client.Download(ctx, c, &buildlogv1.DownloadTaskLogRequest{}, &bytes.Buffer{},
		client.WithBackoff(time.Hour, time.Hour), client.OnReconnect(func(client.Reconnect) { cancel() }))
	if status.Code(err) != codes.Canceled {
		t.Errorf("Download() = %v, want CANCELED", err)
	}
}

func TestRetryable(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"unavailable without details", status.Error(codes.Unavailable, "connection refused"), true},
		{"follow interrupted", ended(codes.Unavailable, api.ReasonFollowInterrupted, 5), true},
		{"follow time limit", ended(codes.DeadlineExceeded, api.ReasonFollowTimeLimit, 5), true},
		{"the caller's deadline", status.Error(codes.DeadlineExceeded, "context deadline exceeded"), false},
		{"cancelled", status.Error(codes.Canceled, "context canceled"), false},
		{"log changed", ended(codes.Aborted, api.ReasonLogChanged, 0), false},
		{"not found", ended(codes.NotFound, api.ReasonUpstreamNotFound, 0), false},
		{"not a status", errors.New("disk full"), false},
		{"nil", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := client.Retryable(tt.err); got != tt.want {
				t.Errorf("Retryable(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

// A followed call that the server ends with nothing new is progress for
// the budget, but the next call waits the least backoff: a server that
// keeps doing it is not called in a tight loop. One that brought bytes is
// followed on at once.
func TestFollowEndedWithNothingNewPauses(t *testing.T) {
	t.Parallel()
	finished := &buildlogv1.ActionState{Finished: true, Status: "success"}
	limit := func(at int64) error { return ended(codes.DeadlineExceeded, api.ReasonFollowTimeLimit, at) }
	_, c := startScripted(t,
		step{msgs: []*buildlogv1.DownloadTaskLogResponse{chunk(0, 100, &buildlogv1.LogMetadata{})}, end: limit(100)},
		step{msgs: []*buildlogv1.DownloadTaskLogResponse{{Offset: 100, Metadata: &buildlogv1.LogMetadata{}}}, end: limit(100)},
		step{msgs: []*buildlogv1.DownloadTaskLogResponse{chunk(100, 200, &buildlogv1.LogMetadata{}), {Offset: 200, Action: finished}}},
	)
	const least = 20 * time.Millisecond
	var delays []time.Duration
	var out bytes.Buffer
	_, err := client.Follow(context.Background(), c, &buildlogv1.DownloadTaskLogRequest{}, &out,
		client.WithBackoff(least, time.Second),
		client.OnReconnect(func(r client.Reconnect) { delays = append(delays, r.Delay) }))
	if err != nil || !bytes.Equal(out.Bytes(), text[:200]) {
		t.Fatalf("Follow() = %v, wrote %q", err, out.Bytes())
	}
	if len(delays) != 2 || delays[0] != 0 || delays[1] < least {
		t.Errorf("pauses %v, want none after the call that brought bytes, then at least %s", delays, least)
	}
}
