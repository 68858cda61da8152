package server

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
)

// observeStreams is the stream interceptor behind the access log and the
// relay metrics: it counts the log bytes each download sends and the
// downloads in progress, and logs one line when a stream ends.
//
// It reads only the request's fields and the responses' sizes and
// metadata: never the call's metadata, which holds the caller's token.
func (s *Server) observeStreams(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx := ss.Context()
	path := callPath(ctx)
	download := strings.HasPrefix(info.FullMethod, "/"+buildlogv1.BuildLogService_ServiceDesc.ServiceName+"/")
	if download {
		active := s.metrics.activeStreams.WithLabelValues(path)
		active.Inc()
		defer active.Dec()
	}
	obs := &observedStream{ServerStream: ss, relayed: s.metrics.relayedBytes.WithLabelValues(path)}
	start := time.Now()
	err := handler(srv, obs)
	elapsed := time.Since(start)

	level := slog.LevelInfo
	if !download {
		// Health watches and reflection are the mesh's and tools' chatter.
		level = slog.LevelDebug
	}
	if !s.cfg.Logger.Enabled(ctx, level) {
		return err
	}
	st := status.Convert(err)
	attrs := []slog.Attr{
		slog.String("method", info.FullMethod),
		slog.String("path", path),
		slog.String("code", st.Code().String()),
		slog.Int64("bytes", obs.bytes),
		slog.Float64("duration_ms", float64(elapsed.Microseconds())/1000),
	}
	if obs.req != nil {
		attrs = append(attrs,
			slog.String("record_id", obs.req.GetRecordId()),
			slog.String("task_name", obs.req.GetTaskName()),
			slog.Int64("offset", obs.req.GetOffset()),
			slog.Int64("limit", obs.req.GetLimit()))
	}
	requestID := obs.requestID
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			attrs = append(attrs, slog.String("reason", d.GetReason()))
			if c := d.GetMetadata()["upstreamErrorCode"]; c != "" {
				attrs = append(attrs, slog.String("upstream_error_code", c))
			}
		case *errdetails.RequestInfo:
			if requestID == "" {
				requestID = d.GetRequestId()
			}
		}
	}
	if requestID != "" {
		attrs = append(attrs, slog.String("upstream_request_id", requestID))
	}
	if sc := trace.SpanContextFromContext(ctx); sc.HasTraceID() {
		attrs = append(attrs, slog.String("trace_id", sc.TraceID().String()))
	}
	s.cfg.Logger.LogAttrs(ctx, level, "stream", attrs...)
	return err
}

// callPath tells REST mirror calls, which the in-process server marks
// (inprocContext), from gRPC callers'.
func callPath(ctx context.Context) string {
	if isInprocCall(ctx) {
		return pathREST
	}
	return pathGRPC
}

// observedStream notes a download's request, the log bytes sent and the
// upstream request id of its first message.
type observedStream struct {
	grpc.ServerStream
	relayed   interface{ Add(float64) }
	req       *buildlogv1.DownloadTaskLogRequest
	bytes     int64
	requestID string
}

func (s *observedStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if req, ok := m.(*buildlogv1.DownloadTaskLogRequest); ok && err == nil {
		s.req = req
	}
	return err
}

func (s *observedStream) SendMsg(m any) error {
	err := s.ServerStream.SendMsg(m)
	if resp, ok := m.(*buildlogv1.DownloadTaskLogResponse); ok && err == nil {
		n := len(resp.GetData())
		s.bytes += int64(n)
		s.relayed.Add(float64(n))
		if md := resp.GetMetadata(); md != nil && s.requestID == "" {
			s.requestID = md.GetRequestId()
		}
	}
	return err
}
