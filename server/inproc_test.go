package server

import (
	"bytes"
	"context"
	"io"
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
	"google.golang.org/protobuf/proto"

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

// waitEnds waits until obs has seen n calls end on the server.
func waitEnds(t *testing.T, obs *observer, n int) {
	t.Helper()
	for range 500 {
		obs.mu.Lock()
		ends := obs.ends
		obs.mu.Unlock()
		if ends >= n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("the server never ended the call")
}

// testStream is the method of the service that startStreamServer serves.
const testStream = "/test.Service/Stream"

// startStreamServer returns a channel to an in-process server, with no
// hooks, whose one streaming method (testStream) runs handler.
func startStreamServer(t *testing.T, handler grpc.StreamHandler) *inprocChannel {
	t.Helper()
	srv := newInprocServer(callHooks{})
	t.Cleanup(srv.Stop)
	srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: "test.Service",
		HandlerType: (*any)(nil),
		Streams:     []grpc.StreamDesc{{StreamName: "Stream", ServerStreams: true, Handler: handler}},
	}, nil)
	return &inprocChannel{server: srv}
}

// startInproc serves the real service, in front of a simulated upstream,
// on an in-process server with interceptors and a stats handler, and
// returns a channel to it.
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
	srv := newInprocServer(callHooks{
		stream: []grpc.StreamServerInterceptor{obs.stream},
		unary:  []grpc.UnaryServerInterceptor{obs.unary},
		stats:  []stats.Handler{obs},
	})
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

	// The server's end of the call is reported as its handler returns,
	// which may be a moment after the client has the last message.
	waitEnds(t, obs, 1)
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
	waitEnds(t, obs, 1)
}

func TestInprocStoppedServerIsUnavailable(t *testing.T) {
	t.Parallel()
	ch, _, _ := startInproc(t)
	ch.server.Stop()
	_, err := healthpb.NewHealthClient(ch).Check(context.Background(), &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("got %v, want Unavailable", err)
	}
}

// TestInprocMetadata checks that a handler's header and trailer reach the
// caller, set on the stream or through grpc.SetHeader on its context, and
// that the context names the method.
func TestInprocMetadata(t *testing.T) {
	t.Parallel()
	ch := startStreamServer(t, func(_ any, ss grpc.ServerStream) error {
		req := &buildlogv1.DownloadTaskLogRequest{}
		if err := ss.RecvMsg(req); err != nil {
			return err
		}
		if m, _ := grpc.Method(ss.Context()); m != testStream {
			return status.Errorf(codes.Internal, "grpc.Method = %q", m)
		}
		if err := grpc.SetHeader(ss.Context(), metadata.Pairs("via-context", "1")); err != nil {
			return err
		}
		if err := ss.SetHeader(metadata.Pairs("via-stream", "2")); err != nil {
			return err
		}
		ss.SetTrailer(metadata.Pairs("trailer", "3"))
		if err := ss.SendMsg(&buildlogv1.DownloadTaskLogResponse{Data: []byte(req.GetTaskName())}); err != nil {
			return err
		}
		if err := ss.SetHeader(metadata.Pairs("late", "4")); err == nil {
			return status.Error(codes.Internal, "SetHeader after the first message succeeded")
		}
		return nil
	})
	stream, err := ch.NewStream(context.Background(), &grpc.StreamDesc{ServerStreams: true}, testStream)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.SendMsg(&buildlogv1.DownloadTaskLogRequest{TaskName: "echo"}); err != nil {
		t.Fatal(err)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	header, err := stream.Header()
	if err != nil {
		t.Fatal(err)
	}
	if got := header.Get("via-context"); len(got) != 1 || got[0] != "1" {
		t.Errorf("header via-context = %q, want [1]", got)
	}
	if got := header.Get("via-stream"); len(got) != 1 || got[0] != "2" {
		t.Errorf("header via-stream = %q, want [2]", got)
	}
	resp := &buildlogv1.DownloadTaskLogResponse{}
	if err := stream.RecvMsg(resp); err != nil {
		t.Fatal(err)
	}
	if string(resp.GetData()) != "echo" {
		t.Errorf("got %q, want the request's task name", resp.GetData())
	}
	if err := stream.RecvMsg(resp); err != io.EOF {
		t.Fatalf("end of stream: %v, want io.EOF", err)
	}
	if got := stream.Trailer().Get("trailer"); len(got) != 1 || got[0] != "3" {
		t.Errorf("trailer = %q, want [3]", got)
	}
	if got := header.Get("late"); len(got) != 0 {
		t.Errorf("a header set after the first message reached the caller: %q", got)
	}
}

// TestInprocWrongMessageType checks that a message received into a value
// of another type is an error, not a silent mix of fields.
func TestInprocWrongMessageType(t *testing.T) {
	t.Parallel()
	err := moveMessage(&buildlogv1.DownloadTaskLogRequest{}, &buildlogv1.DownloadTaskLogResponse{Data: []byte("x")})
	if err == nil {
		t.Error("a response moved into a request")
	}
	if err := moveMessage(struct{}{}, &buildlogv1.DownloadTaskLogResponse{}); err == nil {
		t.Error("a response moved into a non-message")
	}
}

// TestInprocUnknownMethod checks that a method nothing registered is
// UNIMPLEMENTED, for streams and unary calls.
func TestInprocUnknownMethod(t *testing.T) {
	t.Parallel()
	ch, _, _ := startInproc(t)
	stream, err := ch.NewStream(context.Background(), &grpc.StreamDesc{ServerStreams: true}, "/no.Such/Method")
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.RecvMsg(&buildlogv1.DownloadTaskLogResponse{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("stream: got %v, want Unimplemented", err)
	}
	err = ch.Invoke(context.Background(), "/no.Such/Unary", &healthpb.HealthCheckRequest{}, &healthpb.HealthCheckResponse{})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("unary: got %v, want Unimplemented", err)
	}
}

// TestInprocFailedReceiveEndsTheCall checks that a message the caller
// cannot take ends the call on both sides: the server, blocked offering
// the next message, is released.
func TestInprocFailedReceiveEndsTheCall(t *testing.T) {
	t.Parallel()
	ch, up, obs := startInproc(t)
	up.AddLog(inprocRecord, "stage1", upstreamtest.Log{Size: 1 << 20})
	ctx := metadata.AppendToOutgoingContext(context.Background(), service.TokenMetadataKey, "tok")
	stream, err := ch.NewStream(ctx, &buildlogv1.BuildLogService_ServiceDesc.Streams[0], buildlogv1.BuildLogService_DownloadTaskLog_FullMethodName)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.SendMsg(&buildlogv1.DownloadTaskLogRequest{RecordId: inprocRecord, TaskName: "stage1"}); err != nil {
		t.Fatal(err)
	}
	if err := stream.RecvMsg(&healthpb.HealthCheckResponse{}); status.Code(err) != codes.Internal {
		t.Fatalf("a chunk received into a health response: got %v, want Internal", err)
	}
	waitEnds(t, obs, 1)
}

// TestInprocStopEndsCallsInFlight checks that Stop cancels a download
// under way, and refuses new calls.
func TestInprocStopEndsCallsInFlight(t *testing.T) {
	t.Parallel()
	ch, up, obs := startInproc(t)
	up.AddLog(inprocRecord, "stage1", upstreamtest.Log{Size: 1 << 30})
	ctx := metadata.AppendToOutgoingContext(context.Background(), service.TokenMetadataKey, "tok")
	stream, err := buildlogv1.NewBuildLogServiceClient(ch).DownloadTaskLog(ctx,
		&buildlogv1.DownloadTaskLogRequest{RecordId: inprocRecord, TaskName: "stage1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	ch.server.Stop()
	for {
		_, err := stream.Recv()
		if err == nil {
			continue // sent before the stop
		}
		if status.Code(err) != codes.Canceled {
			t.Errorf("Recv after Stop: got %v, want Canceled", err)
		}
		break
	}
	waitEnds(t, obs, 1)
	_, err = healthpb.NewHealthClient(ch).Check(context.Background(), &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("a call after Stop: got %v, want Unavailable", err)
	}
}

// TestInprocDeadlineExceeded checks that a call whose caller's deadline
// passes ends with DEADLINE_EXCEEDED on the server too (its access log and
// metrics), never CANCELLED.
func TestInprocDeadlineExceeded(t *testing.T) {
	t.Parallel()
	codesSeen := make(chan codes.Code, 1)
	ch := startStreamServer(t, func(_ any, ss grpc.ServerStream) error {
		<-ss.Context().Done()
		err := status.FromContextError(ss.Context().Err()).Err()
		codesSeen <- status.Code(err)
		return err
	})
	for range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
		stream, err := ch.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, testStream)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.RecvMsg(&buildlogv1.DownloadTaskLogResponse{}); status.Code(err) != codes.DeadlineExceeded {
			t.Errorf("caller got %v, want DeadlineExceeded", err)
		}
		if c := <-codesSeen; c != codes.DeadlineExceeded {
			t.Fatalf("server saw %v, want DeadlineExceeded", c)
		}
		cancel()
	}
}

// TestInprocHeaderAfterFailedSend checks that Header does not wait for
// ever on a call that failed before it started.
func TestInprocHeaderAfterFailedSend(t *testing.T) {
	t.Parallel()
	ch, _, _ := startInproc(t)
	stream, err := ch.NewStream(context.Background(), &grpc.StreamDesc{ServerStreams: true}, buildlogv1.BuildLogService_DownloadTaskLog_FullMethodName)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.SendMsg("not a message"); status.Code(err) != codes.Internal {
		t.Fatalf("SendMsg of a string: got %v, want Internal", err)
	}
	if _, err := stream.Header(); err != nil {
		t.Errorf("Header: %v", err)
	}
	if err := stream.RecvMsg(&buildlogv1.DownloadTaskLogResponse{}); status.Code(err) != codes.Internal {
		t.Errorf("RecvMsg: got %v, want the send's error", err)
	}
}

// TestInprocCancelBeatsAPendingMessage checks that once the caller has
// cancelled, RecvMsg reports it even with a message ready to take.
func TestInprocCancelBeatsAPendingMessage(t *testing.T) {
	t.Parallel()
	ch := &inprocChannel{server: newInprocServer(callHooks{})}
	defer ch.server.Stop()
	for range 20 {
		ctx, cancel := context.WithCancel(context.Background())
		cs, err := ch.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/test.None/Stream")
		if err != nil {
			t.Fatal(err)
		}
		s := cs.(*inprocStream)
		s.started = true // no server side: the test offers the message
		s.call.msgs = make(chan proto.Message, 1)
		s.call.msgs <- &buildlogv1.DownloadTaskLogResponse{Data: []byte("late")}
		cancel()
		if err := s.RecvMsg(&buildlogv1.DownloadTaskLogResponse{}); status.Code(err) != codes.Canceled {
			t.Fatalf("RecvMsg after cancel: got %v, want Canceled", err)
		}
	}
}

// TestInprocWorkersServeEveryCall makes many calls on a server whose
// workers leave after two calls each: every call is served, none is lost
// in a worker's hand-over.
func TestInprocWorkersServeEveryCall(t *testing.T) {
	t.Parallel()
	ch := startStreamServer(t, func(any, grpc.ServerStream) error { return nil })
	ch.server.workerCalls = 2
	for i := range 200 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		stream, err := ch.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, testStream)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if err := stream.RecvMsg(&buildlogv1.DownloadTaskLogResponse{}); err != io.EOF {
			t.Fatalf("call %d: %v, want io.EOF", i, err)
		}
		cancel()
	}
}
