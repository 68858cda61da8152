package server

import (
	"net/http"
	"strings"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"

	"github.com/buildlog/buildlog/upstream"
)

// propagator carries W3C trace context (traceparent, tracestate) and
// baggage from callers through buildlogd to the upstream.
var propagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

// tracing instruments every hop of a call with OpenTelemetry: the gRPC
// server, the REST mirror's handler and its in-process gRPC client, and the
// upstream HTTP transport. With a no-op TracerProvider (tracing off) no
// span is recorded, yet a caller's traceparent still passes through to the
// upstream, as a mesh expects of its services.
type tracing struct{ tp trace.TracerProvider }

// serverOption is the gRPC server's stats handler, which continues the
// caller's trace.
func (t tracing) serverOption() grpc.ServerOption {
	return grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithTracerProvider(t.tp), otelgrpc.WithPropagators(propagator)))
}

// gatewayStatsHandler carries the REST call's trace into the in-process
// gRPC call (see inprocChannel).
func (t tracing) gatewayStatsHandler() stats.Handler {
	return otelgrpc.NewClientHandler(otelgrpc.WithTracerProvider(t.tp), otelgrpc.WithPropagators(propagator))
}

// restHandler continues a REST caller's trace.
func (t tracing) restHandler(h http.Handler) http.Handler {
	return otelhttp.NewHandler(h, "rest",
		otelhttp.WithTracerProvider(t.tp),
		otelhttp.WithPropagators(propagator),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return r.Method + " " + restRoute(r) }),
	)
}

// restRoute names the route of r for span names: the mirror's one route
// without its record id, which would make every span name unique.
func restRoute(r *http.Request) string {
	if strings.HasPrefix(r.URL.Path, "/v4/") {
		return "/v4/{record_id}/task-log"
	}
	return r.URL.Path
}

// upstreamOption sends the trace context to the upstream with each request.
func (t tracing) upstreamOption() upstream.Option {
	return upstream.WithTransportWrapper(func(rt http.RoundTripper) http.RoundTripper {
		return otelhttp.NewTransport(rt,
			otelhttp.WithTracerProvider(t.tp),
			otelhttp.WithPropagators(propagator),
			otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return "upstream " + r.Method + " /v4/{record_id}/task-log" }),
		)
	})
}
