package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/buildlog/buildlog/api"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/internal/syncbuf"
	"github.com/buildlog/buildlog/server"
	"github.com/buildlog/buildlog/server/servertest"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// accessLines returns the logged stream lines, decoded.
func accessLines(t *testing.T, logs string) []map[string]any {
	t.Helper()
	var lines []map[string]any
	sc := bufio.NewScanner(strings.NewReader(logs))
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("log line %q is not JSON: %v", sc.Text(), err)
		}
		if line["msg"] == "stream" {
			lines = append(lines, line)
		}
	}
	return lines
}

func getURL(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

// scrape fetches /metrics and parses it.
func scrape(t *testing.T, s *servertest.Stack) (string, map[string]*dto.MetricFamily) {
	t.Helper()
	code, text := getURL(t, s.AdminURL+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: status %d", code)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return text, families
}

// metricValue returns the value of the counter or gauge sample of family
// name whose labels include want, and whether there is one.
func metricValue(families map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f := families[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue next
			}
		}
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), true
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), true
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

func TestAdminProbesAndPprof(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		pprof     bool
		wantPprof int
	}{
		{"pprof on", true, http.StatusOK},
		{"pprof off", false, http.StatusNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := servertest.StartWith(t, func(cfg *server.Config) { cfg.Pprof = tc.pprof })
			for _, path := range []string{"/healthz", "/readyz"} {
				if code, body := getURL(t, s.AdminURL+path); code != http.StatusOK || body != "ok\n" {
					t.Errorf("GET %s = %d %q, want 200 \"ok\\n\"", path, code, body)
				}
			}
			if code, _ := getURL(t, s.AdminURL+"/debug/pprof/"); code != tc.wantPprof {
				t.Errorf("GET /debug/pprof/ = %d, want %d", code, tc.wantPprof)
			}
		})
	}
}

func TestAdminOff(t *testing.T) {
	t.Parallel()
	s := servertest.StartWith(t, func(cfg *server.Config) { cfg.AdminAddr = server.AdminOff })
	if s.AdminURL != "" {
		t.Errorf("AdminURL = %q with the admin endpoints off, want none", s.AdminURL)
	}
	if _, err := s.Download(&buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"}); status.Code(err) != codes.NotFound {
		t.Errorf("download without admin endpoints: %v, want NOT_FOUND from the upstream", err)
	}
}

func TestReadyzFailsWhileDraining(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: 1 << 20})
	s.Upstream.Inject(upstreamtest.Fault{Stall: true, StallAfter: 16 << 10})
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), api.TokenMetadataKey, token))
	defer cancel()
	stream, err := s.Client.DownloadTaskLog(ctx, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	_, families := scrape(t, s)
	if v, _ := metricValue(families, "buildlog_active_streams", map[string]string{"path": "grpc"}); v != 1 {
		t.Errorf("buildlog_active_streams{path=grpc} = %v during a download, want 1", v)
	}

	s.Shutdown() // the stalled download keeps the server draining
	for {
		code, body := getURL(t, s.AdminURL+"/readyz")
		if code == http.StatusServiceUnavailable {
			break
		}
		if code != http.StatusOK {
			t.Fatalf("GET /readyz = %d %q while draining, want 503 (or 200 before the shutdown begins)", code, body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if code, _ := getURL(t, s.AdminURL+"/healthz"); code != http.StatusOK {
		t.Errorf("GET /healthz = %d while draining, want 200: the process is alive", code)
	}
	cancel() // lets the shutdown finish
}

func TestMetricsAfterTraffic(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	const size = 3*chunk + 5
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: size})

	if data, err := s.Download(&buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"}); err != nil || len(data) != size {
		t.Fatalf("gRPC download: %d bytes, %v", len(data), err)
	}
	if resp, body, err := s.Get(t, logPath("stage1"), token); err != nil || resp.StatusCode != http.StatusOK || len(body) != size {
		t.Fatalf("REST download: %d bytes, %v", len(body), err)
	}
	if _, err := s.Download(&buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage9"}); status.Code(err) != codes.NotFound {
		t.Fatalf("download of a missing log: %v, want NOT_FOUND", err)
	}

	// A REST call's metrics are recorded as its handler returns, which may
	// be a moment after the client has the last byte: wait for them.
	rest := map[string]string{"http_request_method": "GET", "http_route": "/v4/{record_id}/task-log", "http_response_status_code": "200"}
	_, families := scrape(t, s)
	for range 250 {
		handled, _ := metricValue(families, "http_server_request_duration_seconds", rest)
		active, _ := metricValue(families, "buildlog_active_streams", map[string]string{"path": "rest"})
		if handled == 1 && active == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
		_, families = scrape(t, s)
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"buildlog_relayed_bytes_total", map[string]string{"path": "grpc"}, size},
		{"buildlog_relayed_bytes_total", map[string]string{"path": "rest"}, size},
		{"buildlog_active_streams", map[string]string{"path": "grpc"}, 0},
		{"buildlog_active_streams", map[string]string{"path": "rest"}, 0},
		{"buildlog_upstream_requests_total", map[string]string{"status": "200", "error_code": ""}, 2},
		{"buildlog_upstream_requests_total", map[string]string{"status": "404", "error_code": upstreamtest.NotFoundCode}, 1},
		{"buildlog_upstream_response_seconds", map[string]string{"status": "200"}, 2},
		// The two gRPC calls; the REST call has HTTP metrics of its own.
		{"grpc_server_handled_total", map[string]string{"grpc_method": "DownloadTaskLog", "grpc_code": "OK"}, 1},
		{"grpc_server_handled_total", map[string]string{"grpc_method": "DownloadTaskLog", "grpc_code": "NotFound"}, 1},
		{"grpc_server_handling_seconds", map[string]string{"grpc_method": "DownloadTaskLog"}, 2},
		{"http_server_request_duration_seconds", rest, 1},
	} {
		if got, ok := metricValue(families, c.name, c.labels); !ok || got != c.want {
			t.Errorf("%s%v = %v (present: %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
}

// TestLogsAndMetricsNeverHoldTokens sends tokens on successful and failing
// calls, including to an upstream that echoes the token in its error, and
// looks for them in everything logged (at debug level) and in /metrics.
func TestLogsAndMetricsNeverHoldTokens(t *testing.T) {
	t.Parallel()
	var logs syncbuf.Buffer
	s := servertest.StartWith(t, func(cfg *server.Config) {
		cfg.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	const (
		size        = 2*chunk + 1
		wrongToken  = "MIIEwrongTOKEN-secret-987654321"
		traceID     = "4bf92f3577b34da6a3ce929d0e0e4736"
		traceparent = "00-" + traceID + "-00f067aa0ba902b7-01"
	)
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: size})

	grpcCall := func(tok, task string) error {
		ctx := metadata.AppendToOutgoingContext(context.Background(), api.TokenMetadataKey, tok, "traceparent", traceparent)
		stream, err := s.Client.DownloadTaskLog(ctx, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: task})
		if err != nil {
			return err
		}
		for {
			if _, err := stream.Recv(); err != nil {
				if err == io.EOF {
					return nil
				}
				return err
			}
		}
	}
	if err := grpcCall(token, "stage1"); err != nil {
		t.Fatalf("gRPC download: %v", err)
	}
	if err := grpcCall(wrongToken, "stage1"); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("gRPC download with a wrong token: %v, want UNAUTHENTICATED", err)
	}
	s.Upstream.Inject(upstreamtest.ErrorFault(http.StatusInternalServerError, "CB.00060101", "internal error for token "+token))
	if err := grpcCall(token, "stage1"); status.Code(err) != codes.Internal {
		t.Fatalf("gRPC download from an upstream echoing the token: %v, want INTERNAL", err)
	}
	if resp, _, _ := s.Get(t, logPath("stage1"), token, "traceparent", traceparent); resp.StatusCode != http.StatusOK {
		t.Fatalf("REST download: status %d", resp.StatusCode)
	}
	if resp, _, _ := s.Get(t, logPath("stage1"), wrongToken); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("REST download with a wrong token: status %d, want 401", resp.StatusCode)
	}

	metricsText, _ := scrape(t, s)
	s.Shutdown()
	// The access line of the last REST call is written when its stream
	// ends, which may follow the response by a moment: wait for it.
	for len(accessLines(t, logs.String())) < 5 {
		time.Sleep(10 * time.Millisecond)
	}
	logText := logs.String()
	for _, tok := range []string{token, wrongToken} {
		if strings.Contains(logText, tok) {
			t.Errorf("the logs hold a token:\n%s", logText)
		}
		if strings.Contains(metricsText, tok) {
			t.Errorf("/metrics holds a token")
		}
	}

	requests := s.Upstream.Requests()
	type want struct {
		path, code, reason string
		bytes              float64
		traced             bool
	}
	wants := []want{
		{"grpc", "OK", "", size, true},
		{"grpc", "Unauthenticated", "UPSTREAM_UNAUTHENTICATED", 0, true},
		{"grpc", "Internal", "UPSTREAM_INTERNAL", 0, true},
		{"rest", "OK", "", size, true},
		{"rest", "Unauthenticated", "UPSTREAM_UNAUTHENTICATED", 0, false},
	}
	lines := accessLines(t, logText)
	if len(lines) != len(wants) {
		t.Fatalf("%d access lines, want %d:\n%s", len(lines), len(wants), logText)
	}
	for i, w := range wants {
		l := lines[i]
		if l["method"] != "/buildlog.v1.BuildLogService/DownloadTaskLog" || l["path"] != w.path || l["code"] != w.code ||
			l["bytes"] != w.bytes || l["record_id"] != recordID || l["task_name"] != "stage1" {
			t.Errorf("access line %d = %v, want path %s, code %s, %v bytes", i, l, w.path, w.code, w.bytes)
		}
		if w.reason != "" && l["reason"] != w.reason {
			t.Errorf("access line %d: reason %v, want %s", i, l["reason"], w.reason)
		}
		// Each call made one upstream request, whose id the line names.
		if got, want := l["upstream_request_id"], requests[i].Header.Get("X-Request-Id"); got == nil || got == "" {
			t.Errorf("access line %d: no upstream_request_id (upstream request header %q)", i, want)
		}
		if _, ok := l["duration_ms"]; !ok {
			t.Errorf("access line %d: no duration_ms", i)
		}
		if w.traced && l["trace_id"] != traceID {
			t.Errorf("access line %d: trace_id %v, want the caller's %s", i, l["trace_id"], traceID)
		}
	}
}

// TestTraceReachesUpstream checks that a caller's W3C traceparent reaches
// the upstream with the same trace id, through gRPC and through the REST
// mirror's in-process hop, and that the server records its spans in it.
func TestTraceReachesUpstream(t *testing.T) {
	t.Parallel()
	exporter := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exporter))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	s := servertest.StartWith(t, func(cfg *server.Config) { cfg.TracerProvider = tp })
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: 100})

	for _, tc := range []struct {
		name, traceID string
		call          func(traceparent string) error
	}{
		{"grpc", "0af7651916cd43dd8448eb211c80319c", func(tp string) error { return grpcFetch(s, "traceparent", tp) }},
		{"rest", "5b8efff798038103d269b633813fc60c", func(tp string) error { return restFetch(t, s, "traceparent", tp) }},
	} {
		// Sequential: each call is matched with the upstream's last request.
		if err := tc.call("00-" + tc.traceID + "-b7ad6b7169203331-01"); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		reqs := s.Upstream.Requests()
		got := reqs[len(reqs)-1].Header.Get("Traceparent")
		parts := strings.Split(got, "-")
		if len(parts) != 4 || parts[1] != tc.traceID {
			t.Errorf("%s: upstream got traceparent %q, want trace id %s", tc.name, got, tc.traceID)
		}
		if len(parts) == 4 && parts[2] == "b7ad6b7169203331" {
			t.Errorf("%s: upstream got the caller's own span id: buildlogd's spans are missing from the trace", tc.name)
		}
		// Each transport's server span, and the upstream request's span as
		// its child. The REST span ends as its handler returns, which may be
		// a moment after the client has the last byte: wait for it.
		serverSpan := map[string]string{"grpc": "buildlog.v1.BuildLogService/DownloadTaskLog", "rest": "GET /v4/{record_id}/task-log"}[tc.name]
		var spans map[string]sdktrace.ReadOnlySpan
		for range 500 {
			spans = map[string]sdktrace.ReadOnlySpan{}
			for _, span := range exporter.GetSpans().Snapshots() {
				if span.SpanContext().TraceID().String() == tc.traceID {
					spans[span.Name()] = span
				}
			}
			if spans[serverSpan] != nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		srv, up := spans[serverSpan], spans["upstream GET /v4/{record_id}/task-log"]
		if srv == nil || up == nil || up.Parent().SpanID() != srv.SpanContext().SpanID() || srv.Parent().SpanID().String() != "b7ad6b7169203331" {
			t.Errorf("%s: spans in the trace: %v; want %q, child of the caller's, and the upstream request's as its child", tc.name, slices.Collect(maps.Keys(spans)), serverSpan)
		}
	}
}

// TestTraceContextPassesThroughWithTracingOff checks that with tracing off
// (no TracerProvider), when none of OpenTelemetry's instrumentation runs, a
// caller's trace context still reaches the upstream unchanged, through
// gRPC and through the REST mirror, and that a call
// without one sends none.
func TestTraceContextPassesThroughWithTracingOff(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: 100})
	const (
		traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
		tracestate  = "vendor=opaque"
	)
	grpcCall := func(kv ...string) error { return grpcFetch(s, kv...) }
	restCall := func(kv ...string) error { return restFetch(t, s, kv...) }
	for _, tc := range []struct {
		name string
		call func(kv ...string) error
	}{{"grpc", grpcCall}, {"rest", restCall}} {
		// Sequential: each call is matched with the upstream's last request.
		// Baggage may come as several entries; the upstream gets them all.
		if err := tc.call("traceparent", traceparent, "tracestate", tracestate, "baggage", "tenant=team-a", "baggage", "env=ci"); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		reqs := s.Upstream.Requests()
		h := reqs[len(reqs)-1].Header
		bag := strings.Join(h.Values("Baggage"), ",")
		if h.Get("Traceparent") != traceparent || h.Get("Tracestate") != tracestate || !strings.Contains(bag, "tenant=team-a") || !strings.Contains(bag, "env=ci") {
			t.Errorf("%s: upstream got traceparent %q, tracestate %q, baggage %q; want the caller's %q, %q, tenant=team-a and env=ci",
				tc.name, h.Get("Traceparent"), h.Get("Tracestate"), bag, traceparent, tracestate)
		}
		if err := tc.call(); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		reqs = s.Upstream.Requests()
		if h := reqs[len(reqs)-1].Header; h.Get("Traceparent") != "" || h.Get("Baggage") != "" {
			t.Errorf("%s: a call without a trace sent traceparent %q, baggage %q upstream", tc.name, h.Get("Traceparent"), h.Get("Baggage"))
		}
	}
}

// TestReflectionServesErrorDetails checks that reflection can describe the
// status detail types, so grpcurl prints ErrorInfo and the others decoded.
func TestReflectionServesErrorDetails(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	stream, err := reflectionpb.NewServerReflectionClient(s.Conn).ServerReflectionInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer stream.CloseSend()
	for _, symbol := range []string{"google.rpc.ErrorInfo", "google.rpc.RetryInfo", "google.rpc.RequestInfo", "google.rpc.BadRequest"} {
		if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: symbol}}); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if e := resp.GetErrorResponse(); e != nil || len(resp.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
			t.Errorf("reflection of %s: %v, want its file", symbol, e)
		}
	}
}

// TestReflectionServesComments asks reflection for the request message's
// file, as `grpcurl describe buildlog.v1.DownloadTaskLogRequest` does, and
// checks that it comes with the proto's comments.
func TestReflectionServesComments(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	stream, err := reflectionpb.NewServerReflectionClient(s.Conn).ServerReflectionInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer stream.CloseSend()
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "buildlog.v1.DownloadTaskLogRequest"}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var file *descriptorpb.FileDescriptorProto
	for _, b := range resp.GetFileDescriptorResponse().GetFileDescriptorProto() {
		fd := new(descriptorpb.FileDescriptorProto)
		if err := proto.Unmarshal(b, fd); err != nil {
			t.Fatal(err)
		}
		if fd.GetName() == "buildlog/v1/buildlog.proto" {
			file = fd
		}
	}
	if file == nil {
		t.Fatalf("reflection answered %v, without buildlog/v1/buildlog.proto", resp)
	}
	// The message's comment is at path [4 (message_type), its index].
	var comment string
	for i, m := range file.GetMessageType() {
		if m.GetName() != "DownloadTaskLogRequest" {
			continue
		}
		for _, loc := range file.GetSourceCodeInfo().GetLocation() {
			if p := loc.GetPath(); len(p) == 2 && p[0] == 4 && p[1] == int32(i) {
				comment = loc.GetLeadingComments()
			}
		}
	}
	if !strings.Contains(comment, "names one build action's log") {
		t.Errorf("reflection's DownloadTaskLogRequest comment = %q, want the proto's", comment)
	}
}

// TestRetryAndResumeMetrics makes the upstream fail once before the first
// byte and once in the body, and checks both are counted.
func TestRetryAndResumeMetrics(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	const size = 64 << 10
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: size})
	s.Upstream.Inject(upstreamtest.ErrorFault(http.StatusServiceUnavailable, "", "unavailable"))
	s.Upstream.Inject(upstreamtest.Fault{Cut: true, CutAfter: 10 << 10})
	if data, err := s.Download(&buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"}); err != nil || len(data) != size {
		t.Fatalf("download through a retry and a resume: %d bytes, %v; want all %d", len(data), err, size)
	}
	_, families := scrape(t, s)
	if v, _ := metricValue(families, "buildlog_upstream_retries_total", map[string]string{}); v != 1 {
		t.Errorf("buildlog_upstream_retries_total = %v, want 1", v)
	}
	if v, _ := metricValue(families, "buildlog_upstream_resumes_total", map[string]string{}); v != 1 {
		t.Errorf("buildlog_upstream_resumes_total = %v, want 1", v)
	}
	if v, _ := metricValue(families, "buildlog_upstream_requests_total", map[string]string{"status": "503"}); v != 1 {
		t.Errorf("buildlog_upstream_requests_total{status=503} = %v, want 1", v)
	}
}

// grpcFetch downloads the stage1 log over gRPC with the token and the
// metadata pairs kv, discarding it.
func grpcFetch(s *servertest.Stack, kv ...string) error {
	ctx := metadata.AppendToOutgoingContext(context.Background(), append([]string{api.TokenMetadataKey, token}, kv...)...)
	stream, err := s.Client.DownloadTaskLog(ctx, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"})
	if err != nil {
		return err
	}
	for {
		if _, err := stream.Recv(); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
	}
}

// restFetch downloads the stage1 log over the REST mirror with the token
// and the header pairs kv; an answer other than 200 is an error.
func restFetch(t *testing.T, s *servertest.Stack, kv ...string) error {
	resp, _, err := s.Get(t, logPath("stage1"), token, kv...)
	if err == nil && resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return err
}
