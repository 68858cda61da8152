package server

import (
	"context"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/tap"

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
}

// DownloadTaskLog implements buildlogv1.BuildLogServiceServer.
func (g grpcService) DownloadTaskLog(req *buildlogv1.DownloadTaskLogRequest, stream grpc.ServerStreamingServer[buildlogv1.DownloadTaskLogResponse]) error {
	ctx := stream.Context()
	d, err := g.svc.Open(ctx, service.Request{Message: req, Caller: grpcCaller(ctx), Transport: service.GRPC, Interrupt: interrupter(ctx)})
	if err != nil {
		return err
	}
	msg := &lentChunk{DownloadTaskLogResponse: &buildlogv1.DownloadTaskLogResponse{Offset: d.Offset(), Metadata: d.Metadata()}}
	for {
		c, err := d.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return d.Close(err)
		}
		msg.Data, msg.Offset, msg.release, msg.taken = c.Data, c.Offset, c.Release, false
		err = stream.SendMsg(msg)
		if !msg.taken {
			c.Release()
		}
		if err != nil {
			return d.Close(err)
		}
		msg.Metadata = nil
	}
	if msg.Metadata != nil {
		// The range is empty: one message still carries the metadata, so
		// callers always learn what the log is.
		if err := stream.Send(msg.DownloadTaskLogResponse); err != nil {
			return d.Close(err)
		}
	}
	return d.Close(nil)
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

// interruptKey is the context key of a stream's interrupt (withInterrupt).
type interruptKey struct{}

// withInterrupt gives each stream's transport context (see tapCall) a
// cancel of its own, which its handler may call to end
// a send blocked on a caller that reads nothing: grpc-go offers no other
// way to unblock one. What was sent before still reaches the caller,
// followed by the status, if it ever reads.
func withInterrupt(ctx context.Context, _ *tap.Info) (context.Context, error) {
	ctx, cancel := context.WithCancel(ctx)
	return context.WithValue(ctx, interruptKey{}, cancel), nil
}

// interrupter returns the interrupt withInterrupt gave the stream of ctx,
// nil when there is none.
func interrupter(ctx context.Context) func() {
	cancel, _ := ctx.Value(interruptKey{}).(context.CancelFunc)
	if cancel == nil {
		return nil
	}
	return cancel
}
