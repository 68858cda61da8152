package server

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/buildlog/buildlog/gateway"
)

// callHooks are what every call passes through, whether it came over a
// gRPC connection or from the REST mirror: the interceptors, in the order
// they run, and the stats handlers.
type callHooks struct {
	stream []grpc.StreamServerInterceptor
	unary  []grpc.UnaryServerInterceptor
	stats  []stats.Handler
}

// serverOptions installs h on a grpc.Server.
func (h callHooks) serverOptions() []grpc.ServerOption {
	opts := []grpc.ServerOption{grpc.ChainStreamInterceptor(h.stream...), grpc.ChainUnaryInterceptor(h.unary...)}
	for _, sh := range h.stats {
		opts = append(opts, grpc.StatsHandler(sh))
	}
	return opts
}

// inprocServer serves the REST mirror's calls in this process. The
// services registered on it are called directly, on a goroutine of the
// call, through the same hooks as the public gRPC server's: no transport,
// no encoding, and no copy of the messages (see inprocChannel).
type inprocServer struct {
	methods map[string]inprocMethod // by full method name
	hooks   callHooks
	// serving is cancelled by Stop; every call's server context derives
	// from it.
	serving context.Context
	stop    context.CancelFunc
	// calls hands a call's server side to an idle worker (see run);
	// workers counts the workers, each of which leaves after workerCalls
	// calls.
	calls       chan func()
	workers     atomic.Int32
	workerCalls int
}

// inprocMethod is a registered method: a unary one's handler, or a
// streaming one's description.
type inprocMethod struct {
	impl   any
	unary  grpc.MethodHandler
	stream *grpc.StreamDesc
}

var _ grpc.ServiceRegistrar = (*inprocServer)(nil)

func newInprocServer(hooks callHooks) *inprocServer {
	serving, stop := context.WithCancel(context.Background())
	return &inprocServer{methods: map[string]inprocMethod{}, hooks: hooks, serving: serving, stop: stop,
		calls: make(chan func()), workerCalls: workerCalls}
}

// streamWorkers is how many goroutines of each server serve calls one
// after another, this server's and the gRPC server's
// (grpc.NumStreamWorkers): a call's handler runs deep (interceptors, the
// service, an HTTP client), and growing a new goroutine's stack to that
// depth, copying it at each step, cost about a tenth of a small log's CPU.
// Calls beyond them get a new goroutine.
func streamWorkers() int { return 4 * runtime.GOMAXPROCS(0) }

// workerCalls is how many calls a worker serves before it leaves, so
// that a stack once grown large for one call is not kept for ever (as
// grpc-go's stream workers do); a new worker takes its place when needed.
const workerCalls = 1 << 16

// run runs f, the server side of a call, on an idle worker, else on a new
// one, or, with all the workers busy, on a goroutine of its own.
func (s *inprocServer) run(f func()) {
	select {
	case s.calls <- f:
		return
	default:
	}
	if s.workers.Add(1) <= int32(streamWorkers()) {
		go s.work(f)
		return
	}
	s.workers.Add(-1)
	go f()
}

// work runs f, then serves calls until the server stops or it has served
// its share. It takes a call only when it will run it.
func (s *inprocServer) work(f func()) {
	defer s.workers.Add(-1)
	for n := 1; ; n++ {
		f()
		if n == s.workerCalls {
			return
		}
		select {
		case f = <-s.calls:
		case <-s.serving.Done():
			return
		}
	}
}

// RegisterService implements grpc.ServiceRegistrar.
func (s *inprocServer) RegisterService(desc *grpc.ServiceDesc, impl any) {
	for i := range desc.Methods {
		m := &desc.Methods[i]
		s.methods["/"+desc.ServiceName+"/"+m.MethodName] = inprocMethod{impl: impl, unary: m.Handler}
	}
	for i := range desc.Streams {
		d := &desc.Streams[i]
		s.methods["/"+desc.ServiceName+"/"+d.StreamName] = inprocMethod{impl: impl, stream: d}
	}
}

// Stop refuses new calls with UNAVAILABLE and cancels those in flight. A
// call that has lent a message to the REST mirror ends once the mirror is
// done writing it (see inprocChannel): the REST server stops first.
func (s *inprocServer) Stop() { s.stop() }

// serveStream runs a streaming call through the stream interceptors to its
// handler.
func (s *inprocServer) serveStream(ss *inprocServerStream, m inprocMethod) error {
	info := &grpc.StreamServerInfo{FullMethod: ss.call.method, IsClientStream: m.stream.ClientStreams, IsServerStream: m.stream.ServerStreams}
	handler := m.stream.Handler
	for i := len(s.hooks.stream) - 1; i >= 0; i-- {
		interceptor, next := s.hooks.stream[i], handler
		handler = func(srv any, ss grpc.ServerStream) error { return interceptor(srv, ss, info, next) }
	}
	return handler(m.impl, ss)
}

// serveUnary runs a unary call through the unary interceptors to its
// handler, which decodes its request with dec.
func (s *inprocServer) serveUnary(ctx context.Context, method string, m inprocMethod, dec func(any) error) (any, error) {
	var interceptor grpc.UnaryServerInterceptor
	if len(s.hooks.unary) > 0 {
		info := &grpc.UnaryServerInfo{Server: m.impl, FullMethod: method}
		interceptor = func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			for i := len(s.hooks.unary) - 1; i >= 0; i-- {
				interceptor, next := s.hooks.unary[i], handler
				handler = func(ctx context.Context, req any) (any, error) { return interceptor(ctx, req, info, next) }
			}
			return handler(ctx, req)
		}
	}
	return m.unary(m.impl, ctx, dec, interceptor)
}

// inprocContext gives ctx the peer of in-process calls, with
// inprocAuthInfo, which no network connection can have: caller
// authentication trusts the REST mirror's marker only on such calls
// (auth.go), and metrics and logs tell REST calls by it (callPath).
func inprocContext(ctx context.Context) context.Context {
	return peer.NewContext(ctx, &peer.Peer{
		Addr:     inprocAddr{},
		AuthInfo: inprocAuthInfo{credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}},
	})
}

// isInprocCall reports whether ctx is a call that came through the REST
// mirror's in-process channel.
func isInprocCall(ctx context.Context) bool {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return false
	}
	_, inproc := p.AuthInfo.(inprocAuthInfo)
	return inproc
}

// inprocAddr is the peer address of in-process calls.
type inprocAddr struct{}

func (inprocAddr) Network() string { return "inprocess" }
func (inprocAddr) String() string  { return "buildlog-rest-mirror" }

// inprocChannel is the REST mirror's connection to the service: a
// grpc.ClientConnInterface whose calls run on an inprocServer in this
// process, so REST calls pass the interceptors and stats handlers gRPC calls
// do, without a transport between them.
//
// Messages are handed over, not copied: the server's SendMsg waits until
// the caller's next RecvMsg, when the caller is done with the message, so
// the service may reuse its memory only after that, and a slow REST reader
// holds the service to the message it is writing. A caller that is a REST
// request (see gateway.CallDone) may not keep a message's bytes past its
// next RecvMsg, which grpc-gateway's streaming forwarder never does; SendMsg
// also returns once the request is over, for a caller may leave without a
// last RecvMsg. Any other caller gets a copy of each message.
type inprocChannel struct {
	server *inprocServer
	// stats, when set, is told of each call as a gRPC client's stats
	// handler is (begin, end), so the REST call's trace continues into the
	// service as it would over a connection with grpc.WithStatsHandler.
	stats stats.Handler
}

var _ grpc.ClientConnInterface = (*inprocChannel)(nil)

// inprocCall is one call on the channel, shared by its two sides.
type inprocCall struct {
	method string
	desc   *grpc.StreamDesc
	ctx    context.Context // the server's
	cancel func()          // ends the server's side (see start)
	// requests are the request messages: the client's copies, sent before
	// the call starts.
	requests []proto.Message
	// callerDone is closed when the REST request the call serves is over;
	// nil when the caller is not a REST request.
	callerDone <-chan struct{}

	headerOnce  sync.Once
	headerReady chan struct{} // closed once header is final
	header      metadata.MD

	// msgs carries each response message from SendMsg to RecvMsg; returned
	// gives a lent message back (see inprocChannel).
	msgs     chan proto.Message
	returned chan struct{}

	stream *inprocServerStream // the server's side

	ended   chan struct{} // closed once the handler has returned
	trailer metadata.MD   // set before ended is closed
	result  error         // io.EOF for OK; set before ended is closed
}

// sendHeader makes the response header final, once.
func (c *inprocCall) sendHeader() {
	c.headerOnce.Do(func() { close(c.headerReady) })
}

// start prepares a call of method: the server's context, which carries
// the caller's cancellation and deadline and its outgoing metadata as
// incoming, but none of its values, as over a network. It returns the call
// and end, which reports the client's end of the call to the channel's
// stats handler, once.
func (c *inprocChannel) start(ctx context.Context, method string, desc *grpc.StreamDesc) (*inprocCall, func(error), error) {
	end := func(error) {}
	if c.stats != nil {
		ctx = c.stats.TagRPC(ctx, &stats.RPCTagInfo{FullMethodName: method})
		begin := time.Now()
		c.stats.HandleRPC(ctx, &stats.Begin{Client: true, BeginTime: begin, IsClientStream: desc.ClientStreams, IsServerStream: desc.ServerStreams})
		var once sync.Once
		end = func(err error) {
			once.Do(func() {
				if err == io.EOF {
					err = nil
				}
				c.stats.HandleRPC(ctx, &stats.End{Client: true, BeginTime: begin, EndTime: time.Now(), Error: err})
			})
		}
	}
	fail := func(err error) (*inprocCall, func(error), error) {
		end(err)
		return nil, nil, err
	}
	if c.server.serving.Err() != nil {
		return fail(status.Error(codes.Unavailable, "the service is not serving"))
	}
	if err := ctx.Err(); err != nil {
		return fail(status.FromContextError(err).Err())
	}
	md, _ := metadata.FromOutgoingContext(ctx) // a copy
	if md == nil {
		md = metadata.MD{}
	}
	for k := range md {
		if reservedMetadata(k) {
			// grpc-go's transport keeps these from a server's metadata; a
			// REST caller can set any key through Grpc-Metadata- headers.
			delete(md, k)
		}
	}
	if c.stats == nil {
		// With no stats handler to carry the trace context, as tracing's
		// does, the channel passes on the caller's itself.
		propagator.Inject(ctx, metadataCarrier(md))
	}

	srvCtx, cancel := context.WithCancel(c.server.serving)
	if deadline, ok := ctx.Deadline(); ok {
		var cancelDeadline context.CancelFunc
		srvCtx, cancelDeadline = context.WithDeadline(srvCtx, deadline)
		cancelServing := cancel
		cancel = func() { cancelDeadline(); cancelServing() }
	}
	// stop ends the server's side, except once the caller's deadline has
	// passed: the server's is the same and expires too, and cancelling as
	// well would have the server see CANCELLED as often as
	// DEADLINE_EXCEEDED.
	stop := func() {
		if ctx.Err() != context.DeadlineExceeded {
			cancel()
		}
	}
	// A caller that goes away without a last RecvMsg ends the call too.
	stopAfter := context.AfterFunc(ctx, func() {
		stop()
		end(status.FromContextError(ctx.Err()).Err())
	})
	call := &inprocCall{
		method: method,
		desc:   desc,
		cancel: func() {
			stopAfter()
			stop()
		},
		callerDone:  gateway.CallDone(ctx),
		headerReady: make(chan struct{}),
		header:      metadata.MD{},
		msgs:        make(chan proto.Message),
		returned:    make(chan struct{}, 1),
		ended:       make(chan struct{}),
		trailer:     metadata.MD{},
	}
	gateway.TrackCall(ctx, call.ended)
	call.stream = &inprocServerStream{call: call}
	call.ctx = grpc.NewContextWithServerTransportStream(inprocContext(metadata.NewIncomingContext(srvCtx, md)), transportStream{call.stream})
	return call, end, nil
}

// serve runs the server's side of call, then records its result.
func (c *inprocChannel) serve(call *inprocCall, run func(ctx context.Context) error) {
	defer close(call.ended)
	defer call.cancel()
	ctx := call.ctx
	hooks := c.server.hooks.stats
	begin := time.Now()
	var md metadata.MD
	if len(hooks) > 0 {
		md, _ = metadata.FromIncomingContext(ctx)
	}
	for _, h := range hooks {
		// As grpc-go reports a call to its server's stats handlers.
		ctx = h.TagRPC(ctx, &stats.RPCTagInfo{FullMethodName: call.method})
		h.HandleRPC(ctx, &stats.InHeader{FullMethod: call.method, RemoteAddr: inprocAddr{}, LocalAddr: inprocAddr{}, Header: md})
		h.HandleRPC(ctx, &stats.Begin{BeginTime: begin, IsClientStream: call.desc.ClientStreams, IsServerStream: call.desc.ServerStreams})
	}
	call.stream.ctx = ctx
	err := run(ctx)
	if _, ok := status.FromError(err); !ok {
		// As grpc-go does: a context's error keeps its code, any other
		// error is UNKNOWN.
		err = status.FromContextError(err).Err()
	}
	for _, h := range hooks {
		h.HandleRPC(ctx, &stats.End{BeginTime: begin, EndTime: time.Now(), Error: err})
	}
	call.result = err
	if err == nil {
		call.result = io.EOF
	}
	call.sendHeader()
}

// Invoke implements grpc.ClientConnInterface, for unary methods. It runs
// the call on the caller's goroutine, and reply takes the handler's
// response as it is, which no one else holds. Call options are ignored:
// the REST mirror has no unary route.
func (c *inprocChannel) Invoke(ctx context.Context, method string, args, reply any, _ ...grpc.CallOption) error {
	call, end, err := c.start(ctx, method, &grpc.StreamDesc{})
	if err != nil {
		return err
	}
	m, ok := c.server.methods[method]
	req, isProto := args.(proto.Message)
	var resp any
	c.serve(call, func(ctx context.Context) error {
		switch {
		case !ok || m.unary == nil:
			return status.Errorf(codes.Unimplemented, "unknown method %s", method)
		case !isProto:
			return status.Errorf(codes.Internal, "in-process call: %T is not a proto message", args)
		}
		dec := func(into any) error { return moveMessage(into, proto.Clone(req)) }
		var err error
		resp, err = c.server.serveUnary(ctx, method, m, dec)
		return err
	})
	err = call.result
	if err == io.EOF {
		if msg, ok := resp.(proto.Message); ok {
			err = moveMessage(reply, msg)
		} else {
			err = status.Errorf(codes.Internal, "in-process call: the handler answered %T", resp)
		}
	}
	end(err)
	return err
}

// NewStream implements grpc.ClientConnInterface. Call options are ignored:
// the REST mirror passes none. The call starts at CloseSend (or the first
// Header or RecvMsg) with the request messages sent so far: the channel
// serves server-streaming methods, whose request is one message.
func (c *inprocChannel) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
	call, end, err := c.start(ctx, method, desc)
	if err != nil {
		return nil, err
	}
	return &inprocStream{ctx: ctx, call: call, end: end, channel: c}, nil
}

// inprocStream is the client side of one in-process call.
type inprocStream struct {
	ctx     context.Context
	call    *inprocCall
	channel *inprocChannel
	started bool
	end     func(error) // reports the end of the call to the stats handler, once
	lent    bool        // the last message received is lent until the next RecvMsg
	err     error       // the final result of RecvMsg, once known
}

// begin starts the server's side of the call, once.
func (s *inprocStream) begin() {
	if s.started {
		return
	}
	s.started = true
	s.channel.server.run(func() {
		s.channel.serve(s.call, func(ctx context.Context) error {
			m, ok := s.channel.server.methods[s.call.method]
			if !ok || m.stream == nil {
				return status.Errorf(codes.Unimplemented, "unknown method %s", s.call.method)
			}
			return s.channel.server.serveStream(s.call.stream, m)
		})
	})
}

// Header implements grpc.ClientStream: it waits for the response header.
func (s *inprocStream) Header() (metadata.MD, error) {
	s.begin()
	select {
	case <-s.call.headerReady:
		return s.call.header, nil
	case <-s.ctx.Done():
		return nil, status.FromContextError(s.ctx.Err()).Err()
	}
}

// Trailer implements grpc.ClientStream; it is valid once RecvMsg has
// returned an error or io.EOF.
func (s *inprocStream) Trailer() metadata.MD {
	select {
	case <-s.call.ended:
		return s.call.trailer
	default:
		return nil
	}
}

// CloseSend implements grpc.ClientStream: it starts the call.
func (s *inprocStream) CloseSend() error {
	s.begin()
	return nil
}

// Context implements grpc.ClientStream.
func (s *inprocStream) Context() context.Context { return s.ctx }

// SendMsg implements grpc.ClientStream: it keeps a copy of m for the
// server.
func (s *inprocStream) SendMsg(m any) error {
	msg, ok := m.(proto.Message)
	if !ok {
		return s.fail(status.Errorf(codes.Internal, "in-process call: %T is not a proto message", m))
	}
	if s.started {
		return s.fail(status.Error(codes.Internal, "in-process call: a request message after CloseSend"))
	}
	s.call.requests = append(s.call.requests, proto.Clone(msg))
	return nil
}

// RecvMsg implements grpc.ClientStream. It gives the previous message back
// to the server, then waits for the next message or the end of the call.
func (s *inprocStream) RecvMsg(m any) error {
	if s.err != nil {
		return s.err
	}
	s.begin()
	if s.lent {
		// returned is empty while a message is lent: this never blocks.
		s.lent = false
		s.call.returned <- struct{}{}
	}
	if err := s.ctx.Err(); err != nil {
		// The caller has gone: no message it might still take counts.
		return s.fail(status.FromContextError(err).Err())
	}
	select {
	case msg := <-s.call.msgs:
		if err := moveMessage(m, msg); err != nil {
			// fail cancels the call; a server waiting to have msg back
			// waits for the caller's end (callerDone).
			return s.fail(status.Errorf(codes.Internal, "in-process call: %v", err))
		}
		s.lent = s.call.callerDone != nil
		return nil
	case <-s.call.ended:
		return s.fail(s.call.result)
	case <-s.ctx.Done():
		return s.fail(status.FromContextError(s.ctx.Err()).Err())
	}
}

// fail records the call's outcome and releases the server side.
func (s *inprocStream) fail(err error) error {
	s.err = err
	if !s.started {
		// The call ends without its server side having run.
		s.started = true
		s.call.result = err
		s.call.sendHeader()
		close(s.call.ended)
	}
	s.call.cancel()
	s.end(err)
	return err
}

// inprocServerStream is the server side of one in-process call.
type inprocServerStream struct {
	call     *inprocCall
	ctx      context.Context
	received int // request messages received
}

var _ grpc.ServerStream = (*inprocServerStream)(nil)

func (ss *inprocServerStream) Context() context.Context { return ss.ctx }

var errHeaderSent = status.Error(codes.Internal, "in-process call: the header was already sent")

// SetHeader implements grpc.ServerStream.
func (ss *inprocServerStream) SetHeader(md metadata.MD) error {
	select {
	case <-ss.call.headerReady:
		return errHeaderSent
	default:
	}
	for k, vs := range md {
		ss.call.header.Append(k, vs...)
	}
	return nil
}

// SendHeader implements grpc.ServerStream.
func (ss *inprocServerStream) SendHeader(md metadata.MD) error {
	if err := ss.SetHeader(md); err != nil {
		return err
	}
	ss.call.sendHeader()
	return nil
}

// SetTrailer implements grpc.ServerStream.
func (ss *inprocServerStream) SetTrailer(md metadata.MD) {
	for k, vs := range md {
		ss.call.trailer.Append(k, vs...)
	}
}

// SendMsg implements grpc.ServerStream: it hands m to the caller's
// RecvMsg and, when the caller is a REST request, waits until the caller
// is done with it (see inprocChannel).
func (ss *inprocServerStream) SendMsg(m any) error {
	msg, ok := m.(proto.Message)
	if !ok {
		return status.Errorf(codes.Internal, "in-process call: %T is not a proto message", m)
	}
	ss.call.sendHeader()
	lend := ss.call.callerDone != nil
	if !lend {
		msg = proto.Clone(msg)
	}
	select {
	case ss.call.msgs <- msg:
	case <-ss.ctx.Done():
		return status.FromContextError(ss.ctx.Err()).Err()
	}
	if lend {
		select {
		case <-ss.call.returned:
		case <-ss.call.callerDone:
		}
	}
	return nil
}

// RecvMsg implements grpc.ServerStream: it gives the request messages,
// then io.EOF.
func (ss *inprocServerStream) RecvMsg(m any) error {
	if ss.received == len(ss.call.requests) {
		return io.EOF
	}
	req := ss.call.requests[ss.received]
	ss.received++
	if err := moveMessage(m, req); err != nil {
		return status.Errorf(codes.Internal, "in-process call: %v", err)
	}
	return nil
}

// reservedMetadata reports whether key is one grpc-go's transport keeps
// out of a server's incoming metadata.
func reservedMetadata(key string) bool {
	switch key {
	case "content-type", "grpc-message-type", "grpc-encoding", "grpc-message", "grpc-status", "grpc-timeout", "te":
		return true
	}
	return strings.HasPrefix(key, ":")
}

// transportStream is an in-process call's grpc.ServerTransportStream, so
// grpc.SetHeader and the like work on its context as on a gRPC server's.
type transportStream struct{ ss *inprocServerStream }

func (t transportStream) Method() string                  { return t.ss.call.method }
func (t transportStream) SetHeader(md metadata.MD) error  { return t.ss.SetHeader(md) }
func (t transportStream) SendHeader(md metadata.MD) error { return t.ss.SendHeader(md) }
func (t transportStream) SetTrailer(md metadata.MD) error {
	t.ss.SetTrailer(md)
	return nil
}

// moveMessage sets the fields of dst, a message of the same type as src,
// to src's, without copying: bytes and messages then alias src's.
func moveMessage(dst any, src proto.Message) error {
	d, ok := dst.(proto.Message)
	if !ok {
		return fmt.Errorf("%T is not a proto message", dst)
	}
	dm, sm := d.ProtoReflect(), src.ProtoReflect()
	if dm.Descriptor().FullName() != sm.Descriptor().FullName() {
		return fmt.Errorf("a %s received into a %s", sm.Descriptor().FullName(), dm.Descriptor().FullName())
	}
	proto.Reset(d)
	sm.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		dm.Set(fd, v)
		return true
	})
	if u := sm.GetUnknown(); len(u) > 0 {
		dm.SetUnknown(u)
	}
	return nil
}
