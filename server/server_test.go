package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	"github.com/buildlog/buildlog/api"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/server/servertest"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	token    = servertest.Token
	recordID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
	chunk    = 4 << 10
)

func startStack(t *testing.T) *servertest.Stack {
	t.Helper()
	return servertest.Start(t, chunk)
}

func logPath(task string, query ...string) string {
	p := "/v4/" + recordID + "/task-log?task_name=" + task
	for _, q := range query {
		p += "&" + q
	}
	return p
}

func TestBothPathsByteIdentical(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	for _, size := range []int64{0, 1, chunk - 1, chunk, chunk + 1, 24<<20 + 7} {
		for _, omitLength := range []bool{false, true} {
			task := "stage" + strconv.FormatInt(size, 10)
			if omitLength {
				task += "-chunked"
			}
			s.Upstream.AddLog(recordID, task, upstreamtest.Log{Size: size, OmitLength: omitLength})
			want := upstreamtest.Generate(size, "INFO", task)
			t.Run(task, func(t *testing.T) {
				t.Parallel()
				resp, body, err := s.Get(t, logPath(task), token)
				if err != nil || resp.StatusCode != http.StatusOK {
					t.Fatalf("REST: status %d, read error %v", resp.StatusCode, err)
				}
				if !bytes.Equal(body, want) {
					t.Errorf("REST: %d bytes differing from the upstream's %d", len(body), len(want))
				}
				wantLength := int64(-1)
				if !omitLength {
					wantLength = size
				}
				if resp.ContentLength != wantLength {
					t.Errorf("REST: Content-Length %d, want %d", resp.ContentLength, wantLength)
				}
				checkHeader(t, resp, "Content-Type", "application/octet-stream")
				checkHeader(t, resp, "Content-Disposition", "attachment; filename="+recordID+"-"+task+".log")
				if resp.Header.Get("X-Request-Id") == "" {
					t.Error("REST: no X-Request-Id")
				}

				data, err := s.Download(&buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: task})
				if err != nil || !bytes.Equal(data, want) {
					t.Errorf("gRPC: %d bytes (error %v), want the upstream's %d", len(data), err, len(want))
				}
			})
		}
	}
}

func TestRESTHeadersAndRanges(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	content := []byte("line one\nline two\nline three\n")
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Content: content, ContentType: "text/plain; charset=utf-8", FileName: "build log 日.txt"})
	s.Upstream.AddLog(recordID, "chunked", upstreamtest.Log{Content: content, OmitLength: true})

	resp, body, err := s.Get(t, logPath("stage1"), token)
	if err != nil || !bytes.Equal(body, content) {
		t.Fatalf("body %q (%v), want %q", body, err, content)
	}
	checkHeader(t, resp, "Content-Type", "text/plain; charset=utf-8")
	checkHeader(t, resp, "Content-Disposition", "attachment; filename=build_log__.txt")

	for _, tt := range []struct {
		task, query string
		want        []byte
		wantLength  int64
	}{
		{"stage1", "offset=5", content[5:], int64(len(content) - 5)},
		{"stage1", "offset=5&limit=3", content[5:8], 3},
		{"stage1", "limit=1000", content, int64(len(content))},
		{"stage1", "offset=" + strconv.Itoa(len(content)), nil, 0},
		{"chunked", "offset=5&limit=3", content[5:8], -1},
	} {
		resp, body, err := s.Get(t, logPath(tt.task, tt.query), token)
		if err != nil || resp.StatusCode != 200 || !bytes.Equal(body, tt.want) || resp.ContentLength != tt.wantLength {
			t.Errorf("%s?%s: status %d, body %q, length %d, error %v; want 200, %q, length %d",
				tt.task, tt.query, resp.StatusCode, body, resp.ContentLength, err, tt.want, tt.wantLength)
		}
	}
}

func TestRESTLogLevelSpellings(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: 100})
	for _, tt := range []struct{ given, want string }{
		{"INFO", "INFO"}, {"info", "INFO"}, {"Debug", "DEBUG"}, {"DEBUG", "DEBUG"},
		{"LOG_LEVEL_DEBUG", "DEBUG"}, {"log_level_info", "INFO"}, {"2", "DEBUG"}, {"", ""},
	} {
		n := s.Upstream.RequestCount()
		resp, body, _ := s.Get(t, logPath("stage1", "log_level="+tt.given), token)
		if resp.StatusCode != 200 {
			t.Errorf("log_level=%s: status %d: %s", tt.given, resp.StatusCode, body)
			continue
		}
		reqs := s.Upstream.Requests()
		if len(reqs) != n+1 || strings.Join(reqs[n].Query["log_level"], ",") != tt.want {
			t.Errorf("log_level=%s reached the upstream as %q, want %q", tt.given, reqs[len(reqs)-1].Query["log_level"], tt.want)
		}
		if tt.want != "" && !bytes.Equal(body, upstreamtest.Generate(100, tt.want, "stage1")) {
			t.Errorf("log_level=%s: body is not the %s log", tt.given, tt.want)
		}
	}
	for _, bad := range []string{"TRACE", "LOG_LEVEL_TRACE", "7"} {
		resp, body, _ := s.Get(t, logPath("stage1", "log_level="+bad), token)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("log_level=%s: status %d (%s), want 400", bad, resp.StatusCode, body)
		}
	}
}

func TestRESTErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name           string
		fault          *upstreamtest.Fault
		path           string
		token          string
		wantStatus     int
		wantCode       string
		wantRequestID  bool
		wantRetryAfter string
	}{
		{"upstream rejects the token", nil, logPath("stage1"), "wrong-token", 401, upstreamtest.AuthFailedCode, true, ""},
		{"upstream does not know the task", nil, logPath("stage9"), token, 404, upstreamtest.NotFoundCode, true, ""},
		{"throttled", ptr(upstreamtest.Throttled(3 * time.Second)), logPath("stage1"), token, 429, upstreamtest.ThrottledCode, true, "3"},
		{"too many requests as a 500", ptr(upstreamtest.ErrorFault(500, "CB.00060211", "too many requests")), logPath("stage1"), token, 429, "CB.00060211", true, "1"},
		// The upstream's answers keep their status; only throttling sent as a
		// 500 becomes a 429.
		{"network busy", ptr(upstreamtest.ErrorFault(500, "CB.00060100", "network busy")), logPath("stage1"), token, 500, "CB.00060100", true, ""},
		{"forbidden", ptr(upstreamtest.ErrorFault(403, "CB.00060403", "no permission")), logPath("stage1"), token, 403, "CB.00060403", true, ""},
		{"precondition failed", ptr(upstreamtest.ErrorFault(412, "CB.00060412", "precondition")), logPath("stage1"), token, 412, "CB.00060412", true, ""},
		{"gateway timeout", ptr(upstreamtest.ErrorFault(504, "APIGW.0504", "backend timeout")), logPath("stage1"), token, 504, "APIGW.0504", true, ""},
		{"bad gateway in HTML", &upstreamtest.Fault{Status: 502, Body: "<html>oops</html>"}, logPath("stage1"), token, 502, "BUILDLOG.UPSTREAM_UNAVAILABLE", true, ""},
		{"no answer at all", &upstreamtest.Fault{Hangup: true}, logPath("stage1"), token, 502, "BUILDLOG.UPSTREAM_UNREACHABLE", false, ""},
		{"missing token", nil, logPath("stage1"), "", 401, "BUILDLOG.MISSING_TOKEN", false, ""},
		{"invalid record id", nil, "/v4/NOT-A-RECORD/task-log?task_name=stage1", token, 400, "BUILDLOG.INVALID_REQUEST", false, ""},
		{"double-encoded path", nil, "/v4/..%252F..%252Fetc/task-log?task_name=stage1", token, 400, "BUILDLOG.INVALID_REQUEST", false, ""},
		{"missing task name", nil, "/v4/" + recordID + "/task-log", token, 400, "BUILDLOG.INVALID_REQUEST", false, ""},
		{"unparsable offset", nil, logPath("stage1", "offset=abc"), token, 400, "BUILDLOG.INVALID_REQUEST", false, ""},
		{"offset past the end", nil, logPath("stage1", "offset=101"), token, 400, "BUILDLOG.OFFSET_OUT_OF_RANGE", false, ""},
		{"unknown route", nil, "/v3/whatever", token, 404, "BUILDLOG.NOT_FOUND", false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := startStack(t)
			s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: 100})
			if tt.fault != nil {
				f := *tt.fault
				f.Times = -1 // retries meet it too
				s.Upstream.Inject(f)
			}
			resp, body, err := s.Get(t, tt.path, tt.token)
			if err != nil {
				t.Fatalf("read error body: %v", err)
			}
			if resp.StatusCode != tt.wantStatus {
				t.Errorf("status %d, want %d (body %s)", resp.StatusCode, tt.wantStatus, body)
			}
			checkHeader(t, resp, "Content-Type", "application/json")
			var doc map[string]string
			if err := json.Unmarshal(body, &doc); err != nil {
				t.Fatalf("body %s is not a JSON object of strings: %v", body, err)
			}
			if doc["error_code"] != tt.wantCode || doc["error_msg"] == "" {
				t.Errorf("body %s, want error_code %s and an error_msg", body, tt.wantCode)
			}
			if tt.wantRequestID != (doc["request_id"] != "") || doc["request_id"] != resp.Header.Get("X-Request-Id") {
				t.Errorf("request_id %q, X-Request-Id %q; want both set (%v) and equal", doc["request_id"], resp.Header.Get("X-Request-Id"), tt.wantRequestID)
			}
			checkHeader(t, resp, "Retry-After", tt.wantRetryAfter)
			if strings.Contains(string(body), token) {
				t.Error("the error body contains the token")
			}
		})
	}
}

func TestRESTOtherMethods(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
		req, _ := http.NewRequest(method, s.RESTURL+logPath("stage1"), nil)
		req.Header.Set("X-Auth-Token", token)
		resp, err := s.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
			t.Errorf("%s: status %d, Allow %q; want 405 and GET, HEAD", method, resp.StatusCode, resp.Header.Get("Allow"))
		}
	}
	if n := s.Upstream.RequestCount(); n != 0 {
		t.Errorf("the upstream received %d requests, want none", n)
	}
}

func TestFailureAfterFirstByteIsNeverComplete(t *testing.T) {
	t.Parallel()
	const size, cut = 1 << 20, 100_000
	for _, omitLength := range []bool{false, true} {
		t.Run("omit length "+strconv.FormatBool(omitLength), func(t *testing.T) {
			t.Parallel()
			s := startStack(t)
			s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: size, OmitLength: omitLength})
			full := upstreamtest.Generate(size, "INFO", "stage1")

			// Every answer breaks, so resumption gives up after its limit.
			s.Upstream.Inject(upstreamtest.Fault{Cut: true, CutAfter: cut, Times: -1})
			resp, body, err := s.Get(t, logPath("stage1"), token)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d, want 200 (the failure comes after the first byte)", resp.StatusCode)
			}
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("REST body ended with %v, want io.ErrUnexpectedEOF (an incomplete transfer)", err)
			}
			if len(body) == 0 || len(body) >= size || !bytes.Equal(body, full[:len(body)]) {
				t.Errorf("REST: %d bytes, want a non-empty correct prefix and no error document", len(body))
			}

			data, err := s.Download(&buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"})
			if err == nil || !bytes.Equal(data, full[:len(data)]) {
				t.Errorf("gRPC: %d bytes, error %v; want a correct prefix and an error", len(data), err)
			}
		})
	}
}

func TestRESTClientGoneCancelsUpstream(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: 1 << 20})
	s.Upstream.Inject(upstreamtest.Fault{Stall: true, StallAfter: 32 << 10})
	req, _ := http.NewRequest(http.MethodGet, s.RESTURL+logPath("stage1"), nil)
	req.Header.Set("X-Auth-Token", token)
	resp, err := s.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close() // the client goes away mid-download
	s.HTTP.CloseIdleConnections()
	select {
	case <-s.Upstream.Requests()[0].Done:
	case <-time.After(30 * time.Second):
		t.Fatal("the upstream request is still running after the REST client left")
	}
}

func TestLargeTokens(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: 100})
	for _, size := range []int{12 << 10, 64 << 10, api.MaxTokenLength - 4} {
		big := "MIIB" + strings.Repeat("Q", size)
		s.Upstream.AddToken(big)
		n := s.Upstream.RequestCount()
		resp, _, err := s.Get(t, logPath("stage1"), big)
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("REST with a %d-byte token: status %d, %v", len(big), resp.StatusCode, err)
		}
		ctx := metadata.AppendToOutgoingContext(context.Background(), api.TokenMetadataKey, big)
		stream, err := s.Client.DownloadTaskLog(ctx, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"})
		if err == nil {
			_, err = stream.Recv()
		}
		if err != nil {
			t.Errorf("gRPC with a %d-byte token: %v", len(big), err)
		}
		for _, r := range s.Upstream.Requests()[n:] {
			if r.Header.Get("X-Auth-Token") != big {
				t.Errorf("upstream got a %d-byte token, want the caller's %d bytes", len(r.Header.Get("X-Auth-Token")), len(big))
			}
		}
	}
}

func TestHealthAndReflection(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	resp, err := healthpb.NewHealthClient(s.Conn).Check(context.Background(), &healthpb.HealthCheckRequest{Service: "buildlog.v1.BuildLogService"})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health check: %v, %v; want SERVING", resp.GetStatus(), err)
	}
	stream, err := reflectionpb.NewServerReflectionClient(s.Conn).ServerReflectionInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer stream.CloseSend()
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	got, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, svc := range got.GetListServicesResponse().GetService() {
		names = append(names, svc.GetName())
	}
	if !strings.Contains(strings.Join(names, " "), "buildlog.v1.BuildLogService") {
		t.Errorf("reflection lists %v, want buildlog.v1.BuildLogService", names)
	}
}

func TestShutdownLetsDownloadsFinish(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	const size = 64 << 10
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: size})
	want := upstreamtest.Generate(size, "INFO", "stage1")
	s.Upstream.Inject(upstreamtest.Fault{DripBytes: 8 << 10, DripEvery: 20 * time.Millisecond, Times: 2})

	// One REST and one gRPC download, each with its first byte received.
	req, _ := http.NewRequest(http.MethodGet, s.RESTURL+logPath("stage1"), nil)
	req.Header.Set("X-Auth-Token", token)
	resp, err := s.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	restFirst := make([]byte, 1)
	if _, err := io.ReadFull(resp.Body, restFirst); err != nil {
		t.Fatal(err)
	}
	ctx := metadata.AppendToOutgoingContext(context.Background(), api.TokenMetadataKey, token)
	stream, err := s.Client.DownloadTaskLog(ctx, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}

	s.Shutdown() // with both downloads in flight

	rest, err := io.ReadAll(resp.Body)
	if got := append(restFirst, rest...); err != nil || !bytes.Equal(got, want) {
		t.Errorf("REST download during shutdown: %d bytes, %v; want the whole %d-byte log", len(got), err, size)
	}
	got := first.GetData()
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("gRPC download broke during shutdown: %v", err)
		}
		got = append(got, msg.GetData()...)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("gRPC download during shutdown: %d bytes, want the whole %d-byte log", len(got), size)
	}
}

func checkHeader(t *testing.T, resp *http.Response, key, want string) {
	t.Helper()
	if got := resp.Header.Get(key); got != want {
		t.Errorf("%s = %q, want %q", key, got, want)
	}
}

func ptr[T any](v T) *T { return &v }

// TestStalledReadersHoldBoundedMemory starts downloads of a 1 GiB log whose
// callers stop reading after the first bytes, and checks that the facade
// pulls only a bounded amount from the upstream (backpressure reaches the
// upstream connection) and that its heap does not grow with the log.
func TestStalledReadersHoldBoundedMemory(t *testing.T) {
	s := startStack(t)
	const (
		size    = 1 << 30
		readers = 8
		// Per stalled download: flow-control windows, a few chunks, and the
		// loopback sockets' buffers (kernel memory, but counted here as sent).
		maxPulledPerReader = 16 << 20
		maxHeapPerReader   = 2 << 20
	)
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: size})

	// The heap measured is the whole test's, the client's too: a client
	// with grpc-go's dynamic windows buffers what its stalled streams have
	// not read (up to 16 MiB a connection, as much as its BDP estimator
	// reaches in the run), so this one keeps fixed 64 KiB windows.
	conn, err := grpc.NewClient(s.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := buildlogv1.NewBuildLogServiceClient(conn)

	heapBefore := heapInUse()
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), api.TokenMetadataKey, token))
	defer cancel()
	for i := range readers {
		if i%2 == 0 {
			stream, err := client.DownloadTaskLog(ctx, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := stream.Recv(); err != nil {
				t.Fatal(err)
			}
			continue
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.RESTURL+logPath("stage1"), nil)
		req.Header.Set("X-Auth-Token", token)
		resp, err := s.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if _, err := io.ReadFull(resp.Body, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
	}

	// Wait until the pipelines are full: nothing more is pulled for a while.
	pulled := waitSettled(s.Upstream.BytesSent, readers*maxPulledPerReader)
	if pulled > readers*maxPulledPerReader {
		t.Errorf("the facade pulled %d MiB of the upstream for %d stalled readers, want at most %d MiB each",
			pulled>>20, readers, maxPulledPerReader>>20)
	}
	if grown := heapInUse() - heapBefore; grown > readers*maxHeapPerReader {
		t.Errorf("heap grew by %d MiB for %d stalled readers, want at most %d MiB each", grown>>20, readers, maxHeapPerReader>>20)
	}
	t.Logf("%d stalled readers: %.1f MiB pulled from the upstream, heap grew %.1f MiB",
		readers, float64(pulled)/(1<<20), float64(heapInUse()-heapBefore)/(1<<20))
}

// waitSettled polls f until its value has not changed for half a second, or
// exceeds limit, and returns the value.
func waitSettled(f func() int64, limit int64) int64 {
	last, still := f(), 0
	for still < 10 && last <= limit {
		time.Sleep(50 * time.Millisecond)
		if v := f(); v != last {
			last, still = v, 0
		} else {
			still++
		}
	}
	return last
}

func heapInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}
