package server

import (
	"context"
	"maps"
	"net/http"
	"slices"
	"strings"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/buildlog/buildlog/gateway"
	"github.com/buildlog/buildlog/upstream"
)

// propagator carries W3C trace context (traceparent, tracestate) and
// baggage from callers through buildlogd to the upstream.
var propagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

// tracing instruments every hop of a call with OpenTelemetry: the gRPC
// server, the REST mirror's handler, and the upstream HTTP transport.
//
// With tracing off (no TracerProvider, or a no-op one) no span is recorded
// and none of that instrumentation runs, for it costs CPU on every call,
// yet a caller's trace context (traceparent, tracestate, baggage) still
// passes through to the upstream and the access log, as a mesh expects of
// its services.
type tracing struct{ tp trace.TracerProvider }

// newTracing returns the tracing of tp, off for nil or a no-op provider.
func newTracing(tp trace.TracerProvider) tracing {
	if _, noop := tp.(noop.TracerProvider); noop {
		tp = nil
	}
	return tracing{tp: tp}
}

func (t tracing) on() bool { return t.tp != nil }

// grpcOptions continue the caller's trace on the gRPC server: a stats
// handler recording its spans, or with tracing off an interceptor that
// only takes the caller's trace context into the call's context.
func (t tracing) grpcOptions() []grpc.ServerOption {
	if !t.on() {
		return []grpc.ServerOption{grpc.ChainStreamInterceptor(passTraceContext)}
	}
	return []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithTracerProvider(t.tp), otelgrpc.WithPropagators(propagator)))}
}

// restHandler continues a REST caller's trace; with tracing off, it only
// takes the caller's trace context into the request's context.
func (t tracing) restHandler(h http.Handler) http.Handler {
	if !t.on() {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if ctx := propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header)); ctx != r.Context() {
				r = r.WithContext(ctx)
			}
			h.ServeHTTP(w, r)
		})
	}
	return otelhttp.NewHandler(h, "rest",
		otelhttp.WithTracerProvider(t.tp),
		otelhttp.WithPropagators(propagator),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return r.Method + " " + restRoute(r) }),
	)
}

// restRoute names the route of r, for span names and metric labels: the
// mirror's route without its record id (which would make each unique), the
// OpenAPI document, or "other".
func restRoute(r *http.Request) string {
	switch {
	case strings.HasPrefix(r.URL.Path, "/v4/"):
		return gateway.Route
	case r.URL.Path == gateway.OpenAPIPath:
		return gateway.OpenAPIPath
	}
	return "other"
}

// upstreamOption sends the trace context to the upstream with each request.
func (t tracing) upstreamOption() upstream.Option {
	return upstream.WithTransportWrapper(func(rt http.RoundTripper) http.RoundTripper {
		if !t.on() {
			return traceContextTransport{rt}
		}
		return otelhttp.NewTransport(rt,
			otelhttp.WithTracerProvider(t.tp),
			otelhttp.WithPropagators(propagator),
			otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return "upstream " + r.Method + " /v4/{record_id}/task-log" }),
		)
	})
}

// passTraceContext is the gRPC server's interceptor that takes the
// caller's trace context from a stream's metadata into its context, where
// the access log and the upstream transport find it. (The service's only
// unary calls are health checks, which call nothing.)
func passTraceContext(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx := ss.Context()
	md, _ := metadata.FromIncomingContext(ctx)
	if traced := propagator.Extract(ctx, metadataCarrier(md)); traced != ctx {
		ss = &contextStream{ServerStream: ss, ctx: traced}
	}
	return handler(srv, ss)
}

// contextStream is a stream with another context.
type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *contextStream) Context() context.Context { return s.ctx }

// metadataCarrier is gRPC metadata as a propagation.TextMapCarrier.
type metadataCarrier metadata.MD

func (c metadataCarrier) Get(key string) string {
	if v := metadata.MD(c).Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

func (c metadataCarrier) Set(key, value string) { metadata.MD(c).Set(key, value) }

// Values returns every value of key: baggage may come as several entries.
func (c metadataCarrier) Values(key string) []string { return metadata.MD(c).Get(key) }

func (c metadataCarrier) Keys() []string { return slices.Collect(maps.Keys(c)) }

// traceContextTransport sends the trace context of a request's context to
// the upstream, when there is one.
type traceContextTransport struct{ http.RoundTripper }

func (t traceContextTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	if trace.SpanContextFromContext(ctx).IsValid() || baggage.FromContext(ctx).Len() > 0 {
		req = req.Clone(ctx) // a RoundTripper must not change its request
		propagator.Inject(ctx, propagation.HeaderCarrier(req.Header))
	}
	return t.RoundTripper.RoundTrip(req)
}
