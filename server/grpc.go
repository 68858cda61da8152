package server

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/buildlog/buildlog/api"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/service"
)

// grpcService is BuildLogService over gRPC: each call is one download of
// the service, its chunks sent as messages without a copy (codec.go), its
// failure returned as the *api.Error's status.
type grpcService struct {
	buildlogv1.UnimplementedBuildLogServiceServer
	svc *service.Service
	// maxAge is the connections' maximum age (0: none), after which
	// followed downloads end so that their callers move to a new one.
	maxAge time.Duration
}

// DownloadTaskLog implements buildlogv1.BuildLogServiceServer.
func (g grpcService) DownloadTaskLog(req *buildlogv1.DownloadTaskLogRequest, stream grpc.ServerStreamingServer[buildlogv1.DownloadTaskLogResponse]) error {
	ctx := stream.Context()
	snd := startSender(stream)
	defer snd.stop()
	d, err := g.svc.Open(ctx, service.Request{Message: req, Caller: grpcCaller(ctx), Transport: service.GRPC, Interrupt: snd.interrupt,
		FollowUntil: g.followUntil(ctx)})
	if err != nil {
		return err
	}
	metadata := d.Metadata()
	for {
		c, err := d.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return d.Close(err)
		}
		msg := &lentChunk{DownloadTaskLogResponse: &buildlogv1.DownloadTaskLogResponse{Data: c.Data, Offset: c.Offset, Metadata: metadata, Action: c.Action}, release: c.Release}
		if err := snd.send(msg); err != nil {
			return d.Close(err)
		}
		metadata = nil
	}
	if metadata != nil {
		// The range is empty: one message still carries the metadata, so
		// callers always learn what the log is.
		msg := &lentChunk{DownloadTaskLogResponse: &buildlogv1.DownloadTaskLogResponse{Offset: d.Offset(), Metadata: metadata}, release: func() {}}
		if err := snd.send(msg); err != nil {
			return d.Close(err)
		}
	}
	return d.Close(nil)
}

// followUntil is when a followed download on the call's connection must
// end: once grpc-go has sent GOAWAY for the connection's maximum age,
// which it does within 10% of it, so that the caller follows on over a new
// connection rather than hold this one open for ever.
func (g grpcService) followUntil(ctx context.Context) time.Time {
	guard := guardFrom(ctx)
	if g.maxAge <= 0 || guard == nil {
		return time.Time{}
	}
	return guard.opened.Add(g.maxAge + g.maxAge/10)
}

// sender sends a call's messages on a goroutine of its own, so that the
// handler can end the call with its own status while a send is blocked on
// a caller that reads nothing (the service's caller idle timeout): grpc-go's
// SendMsg takes no deadline, and only the end of the call unblocks it, as
// grpc-go's maintainers advise (grpc/grpc-go#1229). The blocked send then
// fails, and its message goes nowhere.
type sender struct {
	stream      grpc.ServerStream
	msgs        chan *lentChunk
	results     chan error
	interrupted context.Context
	interrupt   context.CancelFunc // makes a send in progress, or the next, return at once
}

// errInterrupted ends a send that the service interrupted.
var errInterrupted = errors.New("the send was interrupted")

func startSender(stream grpc.ServerStream) *sender {
	s := &sender{stream: stream, msgs: make(chan *lentChunk), results: make(chan error, 1)}
	s.interrupted, s.interrupt = context.WithCancel(context.Background())
	go s.run()
	return s
}

func (s *sender) run() {
	for m := range s.msgs {
		err := s.stream.SendMsg(m)
		if !m.taken {
			m.release()
		}
		s.results <- err
	}
}

// send sends m and returns the send's error, or errInterrupted: then m
// may still be sent, as the call ends (but nothing after it).
func (s *sender) send(m *lentChunk) error {
	select {
	case <-s.interrupted.Done():
		m.release()
		return errInterrupted
	case s.msgs <- m:
	}
	select {
	case err := <-s.results:
		return err
	case <-s.interrupted.Done():
		select {
		case err := <-s.results: // a send that completed as it was interrupted
			return err
		default:
			return errInterrupted
		}
	}
}

// stop ends the sender once its send in progress, if any, is over.
func (s *sender) stop() {
	s.interrupt()
	close(s.msgs)
}

// grpcCaller is who makes the call of ctx: its token and authorization
// metadata, and whether its connection's client certificate was verified.
func grpcCaller(ctx context.Context) service.Caller {
	c := service.Caller{
		Tokens:        metadata.ValueFromIncomingContext(ctx, api.TokenMetadataKey),
		Authorization: metadata.ValueFromIncomingContext(ctx, "authorization"),
	}
	if p, ok := peer.FromContext(ctx); ok {
		info := p.AuthInfo
		if g, ok := info.(guardedAuthInfo); ok {
			info = g.AuthInfo
		}
		ti, ok := info.(credentials.TLSInfo)
		c.CertVerified = ok && len(ti.State.VerifiedChains) > 0
	}
	return c
}
