package server

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/service"
	"github.com/buildlog/buildlog/upstream"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// observer records what a gRPC server's interceptors and stats handler see.
type observer struct {
	mu        sync.Mutex
	methods   []string
	deadlines []bool
	tokens    []string
	ends      int
}

func (o *observer) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	o.see(ss.Context(), info.FullMethod)
	return handler(srv, ss)
}

func (o *observer) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	o.see(ctx, info.FullMethod)
	return handler(ctx, req)
}

func (o *observer) see(ctx context.Context, method string) {
	_, hasDeadline := ctx.Deadline()
	md, _ := metadata.FromIncomingContext(ctx)
	o.mu.Lock()
	defer o.mu.Unlock()
	o.methods = append(o.methods, method)
	o.deadlines = append(o.deadlines, hasDeadline)
	o.tokens = append(o.tokens, md.Get(service.TokenMetadataKey)...)
}

func (o *observer) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (o *observer) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (o *observer) HandleConn(context.Context, stats.ConnStats) {}
func (o *observer) HandleRPC(_ context.Context, s stats.RPCStats) {
	if _, ok := s.(*stats.End); ok {
		o.mu.Lock()
		o.ends++
		o.mu.Unlock()
	}
}

// startInproc serves the real service, in front of a simulated upstream,
// on a gRPC server with an interceptor and a stats handler, and returns an
// in-process channel to it.
func startInproc(t *testing.T) (*inprocChannel, *upstreamtest.Server, *observer) {
	t.Helper()
	up := upstreamtest.NewServer()
	t.Cleanup(up.Close)
	up.AddToken("tok")
	client, err := upstream.New(up.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.CloseIdleConnections)
	svc, err := service.New(client, service.WithChunkSize(4<<10))
	if err != nil {
		t.Fatal(err)
	}
	obs := &observer{}
	srv := grpc.NewServer(svc.ServerOption(), grpc.ChainStreamInterceptor(obs.stream), grpc.ChainUnaryInterceptor(obs.unary), grpc.StatsHandler(obs))
	buildlogv1.RegisterBuildLogServiceServer(srv, svc)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	t.Cleanup(srv.Stop)
	return &inprocChannel{server: srv}, up, obs
}

const inprocRecord = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"

func TestInprocStreamPassesInterceptorsAndStats(t *testing.T) {
	t.Parallel()
	ch, up, obs := startInproc(t)
	const size = 300<<10 + 7
	up.AddLog(inprocRecord, "stage1", upstreamtest.Log{Size: size})

	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), service.TokenMetadataKey, "tok"), time.Hour)
	defer cancel()
	stream, err := buildlogv1.NewBuildLogServiceClient(ch).DownloadTaskLog(ctx,
		&buildlogv1.DownloadTaskLogRequest{RecordId: inprocRecord, TaskName: "stage1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Header(); err != nil {
		t.Fatal(err)
	}
	var got []byte
	var first *buildlogv1.DownloadTaskLogResponse
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if first == nil {
			first = msg
		}
		if msg.GetOffset() != int64(len(got)) {
			t.Fatalf("message at offset %d, want %d", msg.GetOffset(), len(got))
		}
		got = append(got, msg.GetData()...)
	}
	if want := upstreamtest.Generate(size, "INFO", "stage1"); !bytes.Equal(got, want) {
		t.Errorf("got %d bytes differing from the log's %d", len(got), len(want))
	}
	if first.GetMetadata().GetTotalSize() != size {
		t.Errorf("metadata total_size = %d, want %d", first.GetMetadata().GetTotalSize(), size)
	}

	// grpc-go reports the server's end of the call as its handler returns,
	// which may be a moment after the client has the last message.
	for i := 0; i < 1000; i++ {
		obs.mu.Lock()
		ends := obs.ends
		obs.mu.Unlock()
		if ends > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if len(obs.methods) != 1 || obs.methods[0] != buildlogv1.BuildLogService_DownloadTaskLog_FullMethodName {
		t.Errorf("interceptor saw %v, want one %s", obs.methods, buildlogv1.BuildLogService_DownloadTaskLog_FullMethodName)
	}
	if len(obs.deadlines) != 1 || !obs.deadlines[0] {
		t.Errorf("the server saw no deadline")
	}
	if len(obs.tokens) != 1 || obs.tokens[0] != "tok" {
		t.Errorf("the server saw tokens %q, want the caller's", obs.tokens)
	}
	if obs.ends != 1 {
		t.Errorf("stats handler saw %d ends, want 1", obs.ends)
	}
}

func TestInprocErrorsKeepCodeAndDetails(t *testing.T) {
	t.Parallel()
	ch, _, _ := startInproc(t)
	ctx := metadata.AppendToOutgoingContext(context.Background(), service.TokenMetadataKey, "tok")
	stream, err := buildlogv1.NewBuildLogServiceClient(ch).DownloadTaskLog(ctx,
		&buildlogv1.DownloadTaskLogRequest{RecordId: "not-a-record", TaskName: "stage1"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument {
		t.Fatalf("got %v, want InvalidArgument", err)
	}
	if len(st.Details()) == 0 {
		t.Errorf("status lost its details: %v", st.Proto())
	}
	if _, err := stream.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Errorf("a second Recv got %v, want the same error", err)
	}
}

func TestInprocUnary(t *testing.T) {
	t.Parallel()
	ch, _, obs := startInproc(t)
	resp, err := healthpb.NewHealthClient(ch).Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health = %v, want SERVING", resp.GetStatus())
	}
	_, err = healthpb.NewHealthClient(ch).Check(context.Background(), &healthpb.HealthCheckRequest{Service: "no.such.Service"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("unknown service: got %v, want NotFound", err)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if len(obs.methods) != 2 || obs.deadlines[0] {
		t.Errorf("interceptor saw %v (deadlines %v), want two calls without deadline", obs.methods, obs.deadlines)
	}
}

// TestInprocCancelStopsTheServer cancels a download whose reader holds a
// message, and checks that the call ends on both sides.
func TestInprocCancelStopsTheServer(t *testing.T) {
	t.Parallel()
	ch, up, obs := startInproc(t)
	up.AddLog(inprocRecord, "stage1", upstreamtest.Log{Size: 1 << 30})
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), service.TokenMetadataKey, "tok"))
	stream, err := buildlogv1.NewBuildLogServiceClient(ch).DownloadTaskLog(ctx,
		&buildlogv1.DownloadTaskLogRequest{RecordId: inprocRecord, TaskName: "stage1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
		t.Errorf("Recv after cancel: got %v, want Canceled", err)
	}
	// The server side ends: its stats handler sees the end of the call.
	for range 200 {
		obs.mu.Lock()
		ends := obs.ends
		obs.mu.Unlock()
		if ends == 1 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Error("the server never ended the cancelled call")
}

func TestInprocStoppedServerIsUnavailable(t *testing.T) {
	t.Parallel()
	ch, _, _ := startInproc(t)
	ch.server.(*grpc.Server).Stop()
	_, err := healthpb.NewHealthClient(ch).Check(context.Background(), &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("got %v, want Unavailable", err)
	}
}

func TestEncodeTimeout(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   time.Duration
		want string
	}{
		{time.Nanosecond, "1n"},
		{99999999 * time.Nanosecond, "99999999n"},
		{100000000 * time.Nanosecond, "100000u"},
		{time.Hour, "3600000m"},
		{100000 * time.Second, "100000S"},
		{10000 * time.Hour, "36000000S"},
	}
	for _, tt := range tests {
		if got := encodeTimeout(tt.in); got != tt.want {
			t.Errorf("encodeTimeout(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestInprocFailedWriteIsNeverOK checks that once a Write of the response
// fails (here a compressed message, which the channel cannot decode), the
// rest of the response fails too, instead of being taken for messages of
// its own, the call is cancelled, and its result is an error, not OK.
func TestInprocFailedWriteIsNeverOK(t *testing.T) {
	t.Parallel()
	stopped := false
	w := &inprocResponse{
		header:      http.Header{"Grpc-Status": {"0"}},
		headerReady: make(chan struct{}),
		msgs:        make(chan inprocMessage, 1),
		free:        make(chan []byte, 1),
		gone:        make(chan struct{}),
		stop:        func() { stopped = true },
	}
	w.free <- nil
	if _, err := w.Write([]byte{1, 0, 0, 0, 3}); err == nil {
		t.Fatal("a compressed message was accepted")
	}
	if _, err := w.Write([]byte{0, 0, 0, 0, 0}); err == nil {
		t.Fatal("a Write after a failed one was accepted")
	}
	if len(w.msgs) != 0 {
		t.Fatal("a message was delivered after a failed Write")
	}
	if !stopped {
		t.Error("the call was not cancelled")
	}
	if err := w.result(); status.Code(err) != codes.Internal {
		t.Errorf("result %v, want INTERNAL", err)
	}
}
