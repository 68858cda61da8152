package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/propagation"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/buildlog/buildlog/gateway"
	"github.com/buildlog/buildlog/internal/chunkwire"
)

// newInprocServer returns the gRPC server of the REST mirror's in-process
// channel: built with opts, the public server's options, so REST calls pass
// the same interceptors and stats handlers, and with markInproc first. A
// server of its own, never listening on a network, because GracefulStop
// ends ServeHTTP calls at once: the in-process server stops after the REST
// server has drained.
func newInprocServer(opts []grpc.ServerOption) *grpc.Server {
	return grpc.NewServer(append([]grpc.ServerOption{
		grpc.ChainStreamInterceptor(markInprocStream),
		grpc.ChainUnaryInterceptor(markInprocUnary),
	}, opts...)...)
}

// markInprocStream and markInprocUnary give each call on the in-process
// server a peer with inprocAuthInfo, which no network connection can have:
// caller authentication trusts the REST mirror's marker only on such calls
// (auth.go), and metrics and logs tell REST calls by it (callPath).
func markInprocStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if e, ok := ss.Context().Value(callEndKey{}).(*callEnd); ok && e.enter() {
		defer e.close()
	}
	return handler(srv, &markedStream{ServerStream: ss, ctx: inprocContext(ss.Context())})
}

// callEnd tells when an in-process call has ended: its handler has returned
// (and with it released whatever it held, such as a download slot), or the
// call was over without reaching it. ServeHTTP can return before the
// handler does, when the call is cancelled.
type callEnd struct {
	mu      sync.Mutex
	entered bool // the handler was called
	over    bool // ServeHTTP has returned
	ended   chan struct{}
}

type callEndKey struct{}

// enter records that the handler runs, unless the call is already over.
func (e *callEnd) enter() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.entered = !e.over
	return e.entered
}

// serveReturned records that ServeHTTP has returned; a call whose handler
// never ran ends there.
func (e *callEnd) serveReturned() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.over = true
	if !e.entered {
		close(e.ended)
	}
}

func (e *callEnd) close() { close(e.ended) }

func markInprocUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	return handler(inprocContext(ctx), req)
}

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

// inprocMaxMessage bounds a response message on the in-process channel, as
// gRPC clients bound received messages by default (4 MiB).
const inprocMaxMessage = 4 << 20

// inprocChannel is the REST mirror's connection to the service: a
// grpc.ClientConnInterface that runs each call through
// grpc.Server.ServeHTTP in this process, so REST calls pass the gRPC
// server's interceptors and stats handlers as gRPC calls do, without HTTP/2
// framing, flow control or a second copy of the log.
//
// Each response message is copied once, into a buffer of the call that the
// server refills only after the caller's next RecvMsg, and decoded with its
// data aliasing that buffer: the bytes stay valid while the REST mirror
// writes them, even if the call is cancelled meanwhile, and a slow REST
// reader holds the service to a few chunks. The caller must not keep a
// message's bytes past its next RecvMsg, which grpc-gateway's streaming
// forwarder never does.
// (grpc.Server.ServeHTTP is marked experimental in grpc-go; it has kept its
// shape since 2016.)
type inprocChannel struct {
	server http.Handler // a *grpc.Server
	// stats, when set, is told of each call as a gRPC client's stats
	// handler is (begin, end), so the REST call's trace continues into the
	// service as it would over a connection with grpc.WithStatsHandler.
	stats stats.Handler
}

var _ grpc.ClientConnInterface = (*inprocChannel)(nil)

// Invoke implements grpc.ClientConnInterface, for unary methods.
func (c *inprocChannel) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	cs, err := c.NewStream(ctx, &grpc.StreamDesc{}, method, opts...)
	if err != nil {
		return err
	}
	s := cs.(*inprocStream)
	err = s.SendMsg(args)
	if err == nil {
		err = s.CloseSend()
	}
	if err == nil {
		err = s.RecvMsg(reply)
	}
	if err == nil {
		switch err = s.RecvMsg(reply); err {
		case io.EOF:
			return nil
		case nil:
			err = status.Error(codes.Internal, "unary call answered with more than one message")
		}
	}
	if s.err == nil {
		s.fail(err) // release the server side and end the call's stats
	}
	return err
}

// NewStream implements grpc.ClientConnInterface. Call options are ignored:
// the REST mirror passes none. The call starts at CloseSend (or the first
// Header or RecvMsg) with the request messages sent so far: the channel
// serves unary and server-streaming methods, whose request is one message,
// and saves a goroutine handoff per call that way.
func (c *inprocChannel) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
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
	header := http.Header{"Content-Type": {"application/grpc"}}
	if deadline, ok := ctx.Deadline(); ok {
		timeout := time.Until(deadline)
		if timeout <= 0 {
			err := status.Error(codes.DeadlineExceeded, context.DeadlineExceeded.Error())
			end(err)
			return nil, err
		}
		header.Set("Grpc-Timeout", encodeTimeout(timeout))
	}
	if c.stats == nil {
		// With no stats handler to carry the trace context, as tracing's
		// does, the channel passes on the caller's itself.
		propagator.Inject(ctx, propagation.HeaderCarrier(header))
	}
	md, _ := metadata.FromOutgoingContext(ctx)
	for k, vs := range md {
		for _, v := range vs {
			if strings.HasSuffix(k, "-bin") {
				v = base64.RawStdEncoding.EncodeToString([]byte(v))
			}
			header.Add(k, v)
		}
	}

	// The server's context carries the caller's cancellation but none of
	// its values, as over a network, only the call's callEnd.
	callEnd := &callEnd{ended: make(chan struct{})}
	srvCtx, cancel := context.WithCancel(context.WithValue(context.Background(), callEndKey{}, callEnd))
	req := (&http.Request{
		Method:     http.MethodPost,
		URL:        &url.URL{Path: method},
		Proto:      "HTTP/2.0",
		ProtoMajor: 2,
		Header:     header,
		Host:       "buildlog-inprocess",
	}).WithContext(srvCtx)

	s := &inprocStream{
		ctx:    ctx,
		cancel: cancel,
		end:    end,
		resp: &inprocResponse{
			header:      http.Header{},
			headerReady: make(chan struct{}),
			msgs:        make(chan inprocMessage, 1),
			free:        make(chan []byte, 1),
			returned:    make(chan struct{}, 1),
			callerDone:  gateway.CallDone(ctx),
			gone:        srvCtx.Done(),
			stop:        cancel,
		},
		finished: make(chan struct{}),
	}
	s.resp.free <- nil // the call's message buffer, grown on first use
	s.start = func() {
		req.Body = io.NopCloser(bytes.NewReader(s.request))
		gateway.TrackCall(ctx, callEnd.ended)
		// A caller that goes away without a last RecvMsg ends the call too.
		stopAfter := context.AfterFunc(ctx, func() {
			cancel()
			end(status.FromContextError(ctx.Err()).Err())
		})
		go func() {
			defer close(s.finished)
			defer cancel()
			defer stopAfter()
			c.server.ServeHTTP(s.resp, req)
			callEnd.serveReturned()
			s.resp.sendHeader()
		}()
	}
	return s, nil
}

// inprocStream is the client side of one in-process call.
type inprocStream struct {
	ctx      context.Context
	cancel   context.CancelFunc // the server's context
	request  []byte             // the framed request messages
	start    func()             // starts the call, once: see started
	started  bool
	end      func(error) // reports the end of the call to the stats handler, once
	resp     *inprocResponse
	finished chan struct{} // closed when ServeHTTP has returned
	held     []byte        // the buffer of the message last received
	holding  bool          // held is the caller's until its next RecvMsg
	lent     bool          // so is the lent data of that message
	err      error         // the final result of RecvMsg, once known
}

// begin starts the call if CloseSend has not.
func (s *inprocStream) begin() {
	if !s.started {
		s.started = true
		s.start()
	}
}

// Header implements grpc.ClientStream: it waits for the response headers.
func (s *inprocStream) Header() (metadata.MD, error) {
	s.begin()
	select {
	case <-s.resp.headerReady:
		return s.resp.sentHeader, nil
	case <-s.ctx.Done():
		return nil, status.FromContextError(s.ctx.Err()).Err()
	}
}

// Trailer implements grpc.ClientStream; it is valid once RecvMsg has
// returned an error or io.EOF.
func (s *inprocStream) Trailer() metadata.MD {
	select {
	case <-s.finished:
	default:
		return nil
	}
	md := metadata.MD{}
	for k, vs := range s.resp.header {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			addMetadata(md, name, vs)
		}
	}
	return md
}

// CloseSend implements grpc.ClientStream: it starts the call.
func (s *inprocStream) CloseSend() error {
	s.begin()
	return nil
}

// Context implements grpc.ClientStream.
func (s *inprocStream) Context() context.Context { return s.ctx }

// SendMsg implements grpc.ClientStream.
func (s *inprocStream) SendMsg(m any) error {
	msg, ok := m.(proto.Message)
	if !ok {
		return s.fail(status.Errorf(codes.Internal, "in-process call: cannot encode %T", m))
	}
	b, err := proto.Marshal(msg)
	if err != nil {
		return s.fail(status.Errorf(codes.Internal, "in-process call: encode request: %v", err))
	}
	if s.started {
		return s.fail(status.Error(codes.Internal, "in-process call: a request message after CloseSend"))
	}
	s.request = binary.BigEndian.AppendUint32(append(s.request, 0), uint32(len(b)))
	s.request = append(s.request, b...)
	return nil
}

// RecvMsg implements grpc.ClientStream. It releases the previous message's
// bytes to the server, then waits for the next message or the end of the
// call.
func (s *inprocStream) RecvMsg(m any) error {
	if s.err != nil {
		return s.err
	}
	s.begin()
	if s.holding {
		// The buffer goes back to the server for the next message. free is
		// empty while the caller holds the only buffer, so this never blocks.
		s.holding = false
		s.resp.free <- s.held
	}
	if s.lent {
		// So do lent bytes; returned is empty while they are lent.
		s.lent = false
		s.resp.returned <- struct{}{}
	}
	select {
	case b := <-s.resp.msgs:
		return s.receive(b, m)
	case <-s.finished:
		// A last message may still wait, sent before ServeHTTP returned.
		select {
		case b := <-s.resp.msgs:
			return s.receive(b, m)
		default:
			return s.fail(s.resp.result())
		}
	case <-s.ctx.Done():
		return s.fail(status.FromContextError(s.ctx.Err()).Err())
	}
}

// receive decodes message msg, which the caller holds until its next
// RecvMsg.
func (s *inprocStream) receive(msg inprocMessage, m any) error {
	s.held, s.holding = msg.head, true
	s.lent = msg.lent != nil
	if err := chunkwire.Decode(msg.head, msg.lent, m); err != nil {
		return s.fail(status.Errorf(codes.Internal, "in-process call: decode response: %v", err))
	}
	return nil
}

// fail records the call's outcome and releases the server side.
func (s *inprocStream) fail(err error) error {
	s.err = err
	s.cancel()
	s.end(err)
	return err
}

// inprocResponse is the http.ResponseWriter the gRPC server answers one
// in-process call on. Its methods run on the ServeHTTP goroutine; they
// parse the gRPC message framing and hand each message to RecvMsg.
type inprocResponse struct {
	header      http.Header // the server's; read by the client after ServeHTTP returns
	headerOnce  sync.Once
	headerReady chan struct{} // closed once sentHeader is set
	sentHeader  metadata.MD

	// One buffer per call carries the messages: the server copies a message
	// into it, sends it on msgs, and takes it back from free for the next
	// one, which RecvMsg puts there once the caller is done with it. Both
	// channels hold one; the buffer is in exactly one place at a time.
	msgs chan inprocMessage
	free chan []byte
	gone <-chan struct{}
	stop func() // cancels the call, after a failed Write

	// A message's data written apart from the rest of it, as the service's
	// codec does, is not copied but lent to the caller when the caller is
	// a REST request, which says when it is over (callerDone, see
	// gateway.CallDone): Write waits until RecvMsg gives it back (returned)
	// or the request is over, for once Write returns, gRPC gives the bytes
	// back to the service. A caller that went away may still be writing
	// them, so its cancellation is not enough.
	returned   chan struct{}
	callerDone <-chan struct{}

	prefix  [5]byte // the current message's length prefix
	nprefix int     // bytes of prefix received
	want    int     // the current message's length
	msg     []byte  // the call's buffer while it gathers the current message
	err     error   // why the last Write failed: every later one fails too
}

func (w *inprocResponse) Header() http.Header { return w.header }

func (w *inprocResponse) WriteHeader(int) { w.sendHeader() }

func (w *inprocResponse) Flush() { w.sendHeader() }

// sendHeader publishes the response headers, once.
func (w *inprocResponse) sendHeader() {
	w.headerOnce.Do(func() {
		md := metadata.MD{}
		for k, vs := range w.header {
			switch strings.ToLower(k) {
			case "content-type", "trailer", "grpc-status", "grpc-message", "grpc-status-details-bin", "grpc-encoding":
				continue
			}
			addMetadata(md, k, vs)
		}
		w.sentHeader = md
		close(w.headerReady)
	})
}

var errInprocGone = errors.New("in-process call: the client is gone")

// Write receives the length-prefixed messages of the response and hands
// each one to RecvMsg. A message may come in several writes (gRPC writes
// its prefix, and the service's codec the data apart from the other
// fields): each is copied into the call's buffer as it comes.
func (w *inprocResponse) Write(p []byte) (int, error) {
	w.sendHeader()
	if w.err != nil {
		// gRPC goes on writing a message's remaining parts after a failed
		// one; they must not be taken for a message of their own.
		return 0, w.err
	}
	n := len(p)
	for len(p) > 0 {
		if w.nprefix < len(w.prefix) {
			k := copy(w.prefix[w.nprefix:], p)
			w.nprefix += k
			p = p[k:]
			if w.nprefix < len(w.prefix) {
				break
			}
			if w.prefix[0] != 0 {
				return 0, w.fail(errors.New("in-process call: compressed message"))
			}
			size := binary.BigEndian.Uint32(w.prefix[1:])
			if size > inprocMaxMessage {
				return 0, w.fail(errors.New("in-process call: message too large"))
			}
			w.want = int(size)
			if w.err = w.begin(); w.err != nil {
				return 0, w.err
			}
		} else if rest := w.want - len(w.msg); len(p) == rest && rest >= minLentData && w.callerDone != nil {
			w.lend(p)
			break
		} else {
			k := min(len(p), rest)
			w.msg = append(w.msg, p[:k]...)
			p = p[k:]
		}
		if len(w.msg) == w.want {
			w.deliver()
		}
	}
	return n, nil
}

// fail makes this and every later Write fail with err, and cancels the
// call: the response cannot be delivered whole.
func (w *inprocResponse) fail(err error) error {
	w.err = err
	w.stop()
	return err
}

// begin waits until the caller has given back the call's buffer (it holds
// the previous message until its next RecvMsg) and starts gathering the
// next message into it. If the caller goes away meanwhile, the buffer stays
// with it: bytes it may still be writing are never overwritten.
func (w *inprocResponse) begin() error {
	select {
	case buf := <-w.free:
		// Grown as bytes are copied in: a message whose data is lent only
		// copies its first few bytes.
		w.msg = buf[:0]
		return nil
	case <-w.gone:
		return errInprocGone
	}
}

// deliver hands the gathered message to RecvMsg and expects the next
// message's prefix.
func (w *inprocResponse) deliver() {
	w.msgs <- inprocMessage{head: w.msg} // never blocks: msgs is empty while the buffer was here
	w.nprefix, w.want, w.msg = 0, 0, nil
}

// lend hands RecvMsg the gathered start of a message and data, the rest of
// it, without copying data, and waits until the caller gives data back or
// its request is over.
func (w *inprocResponse) lend(data []byte) {
	w.msgs <- inprocMessage{head: w.msg, lent: data}
	w.nprefix, w.want, w.msg = 0, 0, nil
	select {
	case <-w.returned:
	case <-w.callerDone:
	}
}

// minLentData is the smallest data lent rather than copied (see
// service.ServerOption, which lends the same sizes).
const minLentData = 4 << 10

// inprocMessage is a response message: head, in the call's buffer, and,
// when the data was lent, the rest of the message.
type inprocMessage struct{ head, lent []byte }

// result is the call's status from the trailers, once ServeHTTP returned:
// io.EOF for OK.
func (w *inprocResponse) result() error {
	if w.err != nil && w.err != errInprocGone {
		// The rest of the response was dropped: never report it as OK.
		return status.Errorf(codes.Internal, "%v", w.err)
	}
	h := w.header
	code := h.Get("Grpc-Status")
	if code == "" {
		// ServeHTTP refused the call before it started (a stopped server).
		return status.Error(codes.Unavailable, "the service is not serving")
	}
	c, err := strconv.ParseUint(code, 10, 32)
	if err != nil {
		return status.Errorf(codes.Internal, "in-process call: bad grpc-status %q", code)
	}
	if codes.Code(c) == codes.OK {
		return io.EOF
	}
	if details := h.Get("Grpc-Status-Details-Bin"); details != "" {
		b, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(details, "="))
		st := &spb.Status{}
		if err == nil && proto.Unmarshal(b, st) == nil && st.GetCode() == int32(c) {
			return status.FromProto(st).Err()
		}
	}
	msg, err := url.PathUnescape(h.Get("Grpc-Message"))
	if err != nil {
		msg = h.Get("Grpc-Message")
	}
	return status.Error(codes.Code(c), msg)
}

// addMetadata adds an HTTP header's values to md, decoding binary ones.
func addMetadata(md metadata.MD, key string, vs []string) {
	key = strings.ToLower(key)
	for _, v := range vs {
		if strings.HasSuffix(key, "-bin") {
			b, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(v, "="))
			if err != nil {
				continue
			}
			v = string(b)
		}
		md.Append(key, v)
	}
}

// encodeTimeout renders d as a grpc-timeout header value: at most eight
// digits and a unit, rounded up.
func encodeTimeout(d time.Duration) string {
	for _, u := range []struct {
		unit string
		size time.Duration
	}{{"n", time.Nanosecond}, {"u", time.Microsecond}, {"m", time.Millisecond}, {"S", time.Second}, {"M", time.Minute}} {
		if v := (d + u.size - 1) / u.size; v <= 99999999 {
			return strconv.FormatInt(int64(v), 10) + u.unit
		}
	}
	return strconv.FormatInt(int64((d+time.Hour-1)/time.Hour), 10) + "H"
}
