package service_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildlog/buildlog/api"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/service"
	"github.com/buildlog/buildlog/upstream"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	token    = "MIIEtestTOKEN-0123456789abcdef"
	recordID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
)

// env is the service in front of a simulated upstream.
type env struct {
	up  *upstreamtest.Server
	svc *service.Service
}

func newEnv(t *testing.T, opts ...service.Option) *env {
	t.Helper()
	up := upstreamtest.NewServer()
	up.AddToken(token)
	uc, err := upstream.New(up.URL)
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("BUILDLOG_TEST_SHARED") != "" {
		// The whole suite again, every download through shared reads: a
		// lone reader must see no difference.
		opts = append([]service.Option{service.WithSharedReads(service.DefaultSharedReauthorize)}, opts...)
	}
	svc, err := service.New(uc, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		uc.CloseIdleConnections()
		up.Close()
	})
	return &env{up: up, svc: svc}
}

// tokenKey is the context key of the caller's tokens in these tests.
type tokenKey struct{}

func withToken(ctx context.Context, tok string) context.Context {
	return context.WithValue(ctx, tokenKey{}, []string{tok})
}

// open opens a download for req with the token of ctx.
func (e *env) open(ctx context.Context, req *buildlogv1.DownloadTaskLogRequest) (*service.Download, error) {
	tokens, _ := ctx.Value(tokenKey{}).([]string)
	return e.svc.Open(ctx, service.Request{Message: req, Caller: service.Caller{Tokens: tokens}, Transport: service.GRPC})
}

// download runs a download to its end and returns it as the messages a
// stream carries (the metadata on the first, one empty message for an
// empty range), and the error it ended with.
func (e *env) download(ctx context.Context, t *testing.T, req *buildlogv1.DownloadTaskLogRequest) ([]*buildlogv1.DownloadTaskLogResponse, error) {
	t.Helper()
	d, err := e.open(ctx, req)
	if err != nil {
		return nil, err
	}
	var msgs []*buildlogv1.DownloadTaskLogResponse
	for {
		c, err := d.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return msgs, d.Close(err)
		}
		msg := &buildlogv1.DownloadTaskLogResponse{Data: bytes.Clone(c.Data), Offset: c.Offset}
		if len(msgs) == 0 {
			msg.Metadata = d.Metadata()
		}
		msgs = append(msgs, msg)
		c.Release()
	}
	if len(msgs) == 0 {
		msgs = append(msgs, &buildlogv1.DownloadTaskLogResponse{Offset: d.Offset(), Metadata: d.Metadata()})
	}
	return msgs, d.Close(nil)
}

// checkStream checks the stream invariants: metadata on the first message
// only, contiguous offsets from offset, chunks no larger than chunk, and no
// empty message unless it is the only one. It returns the data.
func checkStream(t *testing.T, msgs []*buildlogv1.DownloadTaskLogResponse, offset int64, chunk int) []byte {
	t.Helper()
	if len(msgs) == 0 {
		t.Fatal("no messages, want at least one carrying the metadata")
	}
	var data []byte
	pos := offset
	for i, m := range msgs {
		if (i == 0) != (m.GetMetadata() != nil) {
			t.Errorf("message %d: metadata present = %v, want it on the first message only", i, m.GetMetadata() != nil)
		}
		if m.GetOffset() != pos {
			t.Errorf("message %d: offset %d, want %d", i, m.GetOffset(), pos)
		}
		if len(m.GetData()) > chunk || (len(m.GetData()) == 0 && len(msgs) > 1) {
			t.Errorf("message %d: %d bytes of data, want 1..%d", i, len(m.GetData()), chunk)
		}
		pos += int64(len(m.GetData()))
		data = append(data, m.GetData()...)
	}
	return data
}

func TestDownloadByteIdentical(t *testing.T) {
	t.Parallel()
	const chunk = 4 << 10
	e := newEnv(t, service.WithChunkSize(chunk))
	big := newEnv(t)
	sizes := []int64{0, 1, chunk - 1, chunk, chunk + 1, 3*chunk + 5}
	for _, size := range sizes {
		for _, omitLength := range []bool{false, true} {
			task := "stage" + strconv.FormatInt(size, 10)
			if omitLength {
				task += "-chunked"
			}
			e.up.AddLog(recordID, task, upstreamtest.Log{Size: size, OmitLength: omitLength})
			t.Run(task, func(t *testing.T) {
				t.Parallel()
				for _, level := range []buildlogv1.LogLevel{buildlogv1.LogLevel_LOG_LEVEL_UNSPECIFIED, buildlogv1.LogLevel_LOG_LEVEL_DEBUG} {
					msgs, err := e.download(withToken(context.Background(), token), t, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: task, LogLevel: level})
					if err != nil {
						t.Fatalf("download: %v", err)
					}
					upLevel := strings.TrimPrefix(level.String(), "LOG_LEVEL_")
					if level == buildlogv1.LogLevel_LOG_LEVEL_UNSPECIFIED {
						upLevel = "INFO"
					}
					got := checkStream(t, msgs, 0, chunk)
					if want := upstreamtest.Generate(size, upLevel, task); !bytes.Equal(got, want) {
						t.Errorf("%s: got %d bytes differing from the upstream's %d", level, len(got), len(want))
					}
					md := msgs[0].GetMetadata()
					if omitLength == (md.TotalSize != nil) || (md.TotalSize != nil && md.GetTotalSize() != size) {
						t.Errorf("total_size = %v, want %d when the upstream sent a length and unset otherwise", md.TotalSize, size)
					}
					if md.GetContentType() != "application/octet-stream" || md.GetRequestId() == "" || md.GetFileName() != recordID+"-"+task+".log" {
						t.Errorf("metadata = %v", md)
					}
				}
			})
		}
	}
	// At the default chunk size, around the sizes where the relay reads a
	// range that fits in one message into a ring of its own size, or into
	// a pooled one on its own goroutine, or with a reader goroutine.
	for _, size := range []int64{32<<10 - 1, 32 << 10, service.DefaultChunkSize, service.DefaultChunkSize + 1} {
		task := "default" + strconv.FormatInt(size, 10)
		big.up.AddLog(recordID, task, upstreamtest.Log{Size: size})
		t.Run(task, func(t *testing.T) {
			t.Parallel()
			for _, limit := range []int64{0, size - 1} {
				msgs, err := big.download(withToken(context.Background(), token), t, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: task, Limit: limit})
				if err != nil {
					t.Fatal(err)
				}
				want := upstreamtest.Generate(size, "INFO", task)
				if limit > 0 {
					want = want[:limit]
				}
				if got := checkStream(t, msgs, 0, service.DefaultChunkSize); !bytes.Equal(got, want) {
					t.Errorf("limit %d: got %d bytes differing from the upstream's %d", limit, len(got), len(want))
				}
			}
		})
	}
	t.Run("tens of MiB at the default chunk size", func(t *testing.T) {
		t.Parallel()
		const size = 40<<20 + 123
		big.up.AddLog(recordID, "stage1", upstreamtest.Log{Size: size})
		msgs, err := big.download(withToken(context.Background(), token), t, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"})
		if err != nil {
			t.Fatal(err)
		}
		if got := checkStream(t, msgs, 0, service.DefaultChunkSize); !bytes.Equal(got, upstreamtest.Generate(size, "INFO", "stage1")) {
			t.Errorf("got %d bytes differing from the upstream's %d", len(got), size)
		}
	})
}

func TestDownloadOffsetLimit(t *testing.T) {
	t.Parallel()
	const chunk, size = 1 << 10, 10_000
	e := newEnv(t, service.WithChunkSize(chunk))
	e.up.AddLog(recordID, "sized", upstreamtest.Log{Size: size})
	e.up.AddLog(recordID, "unsized", upstreamtest.Log{Size: size, OmitLength: true})
	e.up.AddLog(recordID, "norange", upstreamtest.Log{Size: size, IgnoreRange: true})
	e.up.AddLog(recordID, "neither", upstreamtest.Log{Size: size, IgnoreRange: true, OmitLength: true})
	tests := []struct {
		name          string
		offset, limit int64
		wantFrom      int64
		wantTo        int64
		wantCode      codes.Code
	}{
		{"whole", 0, 0, 0, size, codes.OK},
		{"from the middle", 5000, 0, 5000, size, codes.OK},
		{"last byte", size - 1, 0, size - 1, size, codes.OK},
		{"offset at the end", size, 0, size, size, codes.OK},
		{"offset past the end", size + 1, 0, 0, 0, codes.OutOfRange},
		{"offset far past the end", 1 << 40, 0, 0, 0, codes.OutOfRange},
		{"limit one", 0, 1, 0, 1, codes.OK},
		{"limit a chunk", 100, chunk, 100, 100 + chunk, codes.OK},
		{"offset and limit", 5000, 3000, 5000, 8000, codes.OK},
		{"limit beyond the end", 9000, 5000, 9000, size, codes.OK},
		{"limit at the end", size, 10, size, size, codes.OK},
		{"negative offset", -1, 0, 0, 0, codes.InvalidArgument},
		{"negative limit", 0, -1, 0, 0, codes.InvalidArgument},
	}
	// The upstream may or may not announce sizes and honour Range.
	for _, task := range []string{"sized", "unsized", "norange", "neither"} {
		full := upstreamtest.Generate(size, "INFO", task)
		for _, tt := range tests {
			t.Run(task+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				msgs, err := e.download(withToken(context.Background(), token), t, &buildlogv1.DownloadTaskLogRequest{
					RecordId: recordID, TaskName: task, Offset: tt.offset, Limit: tt.limit,
				})
				if got := status.Code(err); got != tt.wantCode {
					t.Fatalf("code = %v (%v), want %v", got, err, tt.wantCode)
				}
				if tt.wantCode != codes.OK {
					if len(msgs) != 0 {
						t.Errorf("got %d messages before the error, want none", len(msgs))
					}
					return
				}
				if got := checkStream(t, msgs, tt.offset, chunk); !bytes.Equal(got, full[tt.wantFrom:tt.wantTo]) {
					t.Errorf("got %d bytes, want bytes [%d, %d) of the log", len(got), tt.wantFrom, tt.wantTo)
				}
			})
		}
	}
}

func TestDownloadRejectsBeforeCallingUpstream(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.up.AddLog(recordID, "stage1", upstreamtest.Log{Size: 10})
	valid := &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"}
	tests := []struct {
		name       string
		ctx        context.Context
		req        *buildlogv1.DownloadTaskLogRequest
		wantCode   codes.Code
		wantReason string
	}{
		{"no token", context.Background(), valid, codes.Unauthenticated, api.ReasonMissingToken},
		{"empty token", withToken(context.Background(), ""), valid, codes.Unauthenticated, api.ReasonMissingToken},
		{"token over 100,000 bytes", withToken(context.Background(), strings.Repeat("t", 100_001)), valid, codes.Unauthenticated, api.ReasonInvalidToken},
		{"upper case record id", withToken(context.Background(), token), &buildlogv1.DownloadTaskLogRequest{RecordId: strings.ToUpper(recordID), TaskName: "stage1"}, codes.InvalidArgument, api.ReasonInvalidRequest},
		{"path trick record id", withToken(context.Background(), token), &buildlogv1.DownloadTaskLogRequest{RecordId: "..%2F" + recordID[5:], TaskName: "stage1"}, codes.InvalidArgument, api.ReasonInvalidRequest},
		{"no task", withToken(context.Background(), token), &buildlogv1.DownloadTaskLogRequest{RecordId: recordID}, codes.InvalidArgument, api.ReasonInvalidRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.download(tt.ctx, t, tt.req)
			st := status.Convert(err)
			if st.Code() != tt.wantCode || reasonOf(st) != tt.wantReason {
				t.Errorf("got %v %s (%v), want %v %s", st.Code(), reasonOf(st), err, tt.wantCode, tt.wantReason)
			}
			if tt.wantCode == codes.InvalidArgument && badRequestOf(st) == nil {
				t.Error("INVALID_ARGUMENT without google.rpc.BadRequest")
			}
			if strings.Contains(st.Message(), token) {
				t.Errorf("message %q contains the token", st.Message())
			}
		})
	}
	if n := e.up.RequestCount(); n != 0 {
		t.Errorf("the upstream received %d requests, want none", n)
	}
}

func TestDownloadPropagatesRequest(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	bigToken := "MIIB" + strings.Repeat("x", 12<<10)
	hostileTask := "stage 1&log_level=DEBUG#frag%2F/..\r\n日志"
	e.up.AddToken(bigToken)
	e.up.AddLog(recordID, hostileTask, upstreamtest.Log{Size: 10})
	_, err := e.download(withToken(context.Background(), bigToken), t, &buildlogv1.DownloadTaskLogRequest{
		RecordId: recordID, TaskName: hostileTask, LogLevel: buildlogv1.LogLevel_LOG_LEVEL_DEBUG,
	})
	if err != nil {
		t.Fatal(err)
	}
	reqs := e.up.Requests()
	if len(reqs) != 1 {
		t.Fatalf("upstream received %d requests, want 1", len(reqs))
	}
	r := reqs[0]
	if got := r.Header.Get("X-Auth-Token"); got != bigToken {
		t.Errorf("upstream X-Auth-Token: %d bytes, want the caller's %d-byte token", len(got), len(bigToken))
	}
	if got := r.Query["task_name"]; len(got) != 1 || got[0] != hostileTask {
		t.Errorf("upstream task_name = %q, want exactly %q", got, hostileTask)
	}
	if got := r.Query["log_level"]; len(got) != 1 || got[0] != "DEBUG" {
		t.Errorf("upstream log_level = %q, want [DEBUG]", got)
	}
	if r.Path != "/v4/"+recordID+"/task-log" {
		t.Errorf("upstream path = %q", r.Path)
	}
}

func TestDownloadUpstreamErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		fault      upstreamtest.Fault
		wantCode   codes.Code
		wantReason string
		wantRetry  time.Duration
	}{
		{"throttled", upstreamtest.Throttled(3 * time.Second), codes.ResourceExhausted, api.ReasonUpstreamThrottled, 3 * time.Second},
		{"too many requests as a 500", upstreamtest.ErrorFault(500, "CB.00060211", "too many requests"), codes.ResourceExhausted, api.ReasonUpstreamThrottled, time.Second},
		{"network busy", upstreamtest.ErrorFault(500, "CB.00060100", "network busy"), codes.Unavailable, api.ReasonUpstreamBusy, 0},
		{"internal", upstreamtest.ErrorFault(500, "CB.00060101", "internal error"), codes.Internal, api.ReasonUpstreamInternal, 0},
		{"forbidden", upstreamtest.ErrorFault(403, "CB.00060403", "no permission"), codes.PermissionDenied, api.ReasonUpstreamPermissionDenied, 0},
		{"bad gateway in HTML", upstreamtest.Fault{Status: 502, Body: "<html><body>502</body></html>"}, codes.Unavailable, api.ReasonUpstreamUnavailable, 0},
		{"connection closed without an answer", upstreamtest.Fault{Hangup: true}, codes.Unavailable, api.ReasonUpstreamUnreachable, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.up.AddLog(recordID, "stage1", upstreamtest.Log{Size: 10})
			tt.fault.Times = -1 // retries meet it too
			e.up.Inject(tt.fault)
			msgs, err := e.download(withToken(context.Background(), token), t, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"})
			st := status.Convert(err)
			if st.Code() != tt.wantCode || reasonOf(st) != tt.wantReason {
				t.Fatalf("got %v %s (%v), want %v %s", st.Code(), reasonOf(st), err, tt.wantCode, tt.wantReason)
			}
			if len(msgs) != 0 {
				t.Errorf("got %d messages before the error", len(msgs))
			}
			if got := retryOf(st); got != tt.wantRetry {
				t.Errorf("RetryInfo delay = %v, want %v", got, tt.wantRetry)
			}
		})
	}
}

func TestDownloadFailureAfterFirstByte(t *testing.T) {
	t.Parallel()
	const chunk = 4 << 10
	for _, omitLength := range []bool{false, true} {
		t.Run("omit length "+strconv.FormatBool(omitLength), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, service.WithChunkSize(chunk))
			e.up.AddLog(recordID, "stage1", upstreamtest.Log{Size: 1 << 20, OmitLength: omitLength})
			// Every answer breaks: resumption gives up after its limit.
			e.up.Inject(upstreamtest.Fault{Cut: true, CutAfter: 100_000, Times: -1})
			msgs, err := e.download(withToken(context.Background(), token), t, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1", Offset: 10})
			st := status.Convert(err)
			if st.Code() != codes.Unavailable || reasonOf(st) != api.ReasonUpstreamInterrupted {
				t.Fatalf("got %v %s (%v), want UNAVAILABLE %s", st.Code(), reasonOf(st), err, api.ReasonUpstreamInterrupted)
			}
			got := checkStream(t, msgs, 10, chunk)
			if len(got) == 0 || !bytes.Equal(got, upstreamtest.Generate(1<<20, "INFO", "stage1")[10:10+len(got)]) {
				t.Errorf("got %d bytes before the error, want a non-empty, correct prefix", len(got))
			}
			if infoOf(st).GetMetadata()[api.MetadataRequestID] == "" || !hasRequestInfo(st) {
				t.Errorf("details %v, want the upstream request id in ErrorInfo and RequestInfo", st.Details())
			}
			resume, _ := strconv.ParseInt(infoOf(st).GetMetadata()[api.MetadataResumeOffset], 10, 64)
			if resume != 10+int64(len(got)) {
				t.Errorf("resumeOffset = %d, want %d (the offset after the last byte delivered)", resume, 10+len(got))
			}
		})
	}
}

func TestDownloadResumesTransparently(t *testing.T) {
	t.Parallel()
	const chunk = 4 << 10
	e := newEnv(t, service.WithChunkSize(chunk))
	e.up.AddLog(recordID, "stage1", upstreamtest.Log{Size: 1 << 20})
	e.up.Inject(upstreamtest.Fault{Cut: true, CutAfter: 100_000})
	e.up.Inject(upstreamtest.Fault{Cut: true, CutAfter: 300_001})
	msgs, err := e.download(withToken(context.Background(), token), t, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1", Offset: 10})
	if err != nil {
		t.Fatal(err)
	}
	got := checkStream(t, msgs, 10, chunk)
	if !bytes.Equal(got, upstreamtest.Generate(1<<20, "INFO", "stage1")[10:]) {
		t.Errorf("got %d bytes, want the log from offset 10, identical", len(got))
	}
	if n := e.up.RequestCount(); n != 3 {
		t.Errorf("upstream saw %d requests, want 3: one and two resumptions", n)
	}
}

func TestDownloadAbortsWhenTheLogChanges(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.up.AddLog(recordID, "stage1", upstreamtest.Log{Size: 1 << 20})
	e.up.Inject(upstreamtest.Fault{Cut: true, CutAfter: 200_000, After: func() {
		e.up.AddLog(recordID, "stage1", upstreamtest.Log{Size: 2 << 20})
	}})
	msgs, err := e.download(withToken(context.Background(), token), t, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"})
	st := status.Convert(err)
	if st.Code() != codes.Aborted || reasonOf(st) != api.ReasonLogChanged {
		t.Fatalf("got %v %s (%v), want ABORTED %s", st.Code(), reasonOf(st), err, api.ReasonLogChanged)
	}
	got := checkStream(t, msgs, 0, service.DefaultChunkSize)
	if !bytes.Equal(got, upstreamtest.Generate(1<<20, "INFO", "stage1")[:len(got)]) || len(got) > 200_000 {
		t.Errorf("got %d bytes before the error, want a prefix of the first version only", len(got))
	}
	if !strings.Contains(st.Message(), "from the start") {
		t.Errorf("message %q does not tell the caller to start over", st.Message())
	}
}

func TestCancelAndDeadlineReachTheUpstream(t *testing.T) {
	t.Parallel()
	t.Run("caller cancels mid-stream", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, service.WithChunkSize(1<<10))
		e.up.AddLog(recordID, "stage1", upstreamtest.Log{Size: 1 << 20})
		e.up.Inject(upstreamtest.Fault{Stall: true, StallAfter: 8 << 10})
		ctx, cancel := context.WithCancel(withToken(context.Background(), token))
		d, err := e.open(ctx, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"})
		if err != nil {
			t.Fatal(err)
		}
		c, err := d.Next()
		if err != nil {
			t.Fatal(err)
		}
		c.Release()
		cancel()
		waitDone(t, e.up)
		for {
			// Bytes already read may come first; then the cancellation.
			c, err := d.Next()
			if err != nil {
				if status.Code(d.Close(err)) != codes.Canceled {
					t.Errorf("Next after cancel: %v, want Canceled", d.Close(err))
				}
				break
			}
			c.Release()
		}
	})
	t.Run("caller deadline before the upstream answers", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		e.up.AddLog(recordID, "stage1", upstreamtest.Log{Size: 10})
		e.up.Inject(upstreamtest.Fault{Delay: time.Hour})
		ctx, cancel := context.WithTimeout(withToken(context.Background(), token), 100*time.Millisecond)
		defer cancel()
		_, err := e.download(ctx, t, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"})
		if status.Code(err) != codes.DeadlineExceeded {
			t.Errorf("got %v, want DeadlineExceeded", err)
		}
		waitDone(t, e.up)
	})
}

// waitDone waits until the upstream has finished every request it
// received: the facade cancelled them.
func waitDone(t *testing.T, up *upstreamtest.Server) {
	t.Helper()
	for _, r := range up.Requests() {
		select {
		case <-r.Done:
		case <-time.After(30 * time.Second):
			t.Fatal("the upstream request is still running: the facade did not cancel it")
		}
	}
}

func infoOf(st *status.Status) *errdetails.ErrorInfo {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info
		}
	}
	return nil
}

func hasRequestInfo(st *status.Status) bool {
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RequestInfo); ok && ri.GetRequestId() != "" {
			return true
		}
	}
	return false
}

func reasonOf(st *status.Status) string { return infoOf(st).GetReason() }

func badRequestOf(st *status.Status) *errdetails.BadRequest {
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			return br
		}
	}
	return nil
}

func retryOf(st *status.Status) time.Duration {
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	return 0
}

func TestMaxDownloadsRefusesAtOnce(t *testing.T) {
	t.Parallel()
	const limit = 2
	e := newEnv(t, service.WithMaxDownloads(limit), service.WithChunkSize(service.MinChunkSize))
	e.up.AddLog(recordID, "stage1", upstreamtest.Log{Size: 1 << 20})
	// The first two downloads stall after their first chunks, holding their
	// slots until they are cancelled.
	e.up.Inject(upstreamtest.Fault{Stall: true, StallAfter: 4096, Times: limit})
	ctx, cancel := context.WithCancel(withToken(context.Background(), token))
	defer cancel()
	var held []*service.Download
	for range limit {
		d, err := e.open(ctx, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"})
		if err != nil {
			t.Fatalf("a download within the limit: %v", err)
		}
		held = append(held, d)
	}

	_, err := e.download(withToken(context.Background(), token), t, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"})
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted || reasonOf(st) != api.ReasonOverloaded || retryOf(st) <= 0 {
		t.Fatalf("a download beyond the limit: %v %s (%v), want RESOURCE_EXHAUSTED %s with RetryInfo", st.Code(), reasonOf(st), err, api.ReasonOverloaded)
	}
	if n := e.up.RequestCount(); n != limit {
		t.Errorf("upstream saw %d requests, want %d: a refused call never reaches it", n, limit)
	}

	// Closing frees the slots at once: a new download runs to its end.
	for _, d := range held {
		d.Close(context.Canceled)
	}
	msgs, err := e.download(withToken(context.Background(), token), t, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"})
	if err != nil {
		t.Fatalf("after the others ended: %v", err)
	}
	if got := checkStream(t, msgs, 0, service.MinChunkSize); len(got) != 1<<20 {
		t.Errorf("got %d bytes, want the whole log", len(got))
	}
}

// TestSlowUpstreamBytesFlowBeforeAChunkFills checks that the relay sends
// what the upstream has sent so far, rather than holding it until a whole
// chunk has arrived: here the upstream stops after 5000 bytes of a log much
// larger than a chunk, and the caller still receives those 5000 bytes.
func TestSlowUpstreamBytesFlowBeforeAChunkFills(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.up.AddLog(recordID, "stage1", upstreamtest.Log{Size: 1 << 20})
	e.up.Inject(upstreamtest.Fault{Stall: true, StallAfter: 5000})
	// A guard against a hang, not a timing assertion: without the fix the
	// first message never comes.
	ctx, cancel := context.WithTimeout(withToken(context.Background(), token), time.Minute)
	defer cancel()
	d, err := e.open(ctx, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(nil)
	var got []byte
	for len(got) < 5000 {
		c, err := d.Next()
		if err != nil {
			t.Fatalf("after %d bytes: %v, want the 5000 the upstream sent", len(got), err)
		}
		got = append(got, c.Data...)
		c.Release()
	}
	if !bytes.Equal(got, upstreamtest.Generate(1<<20, "INFO", "stage1")[:5000]) {
		t.Errorf("got %d bytes, want the log's first 5000", len(got))
	}
}
