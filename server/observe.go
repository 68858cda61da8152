package server

import (
	"cmp"
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"

	"github.com/buildlog/buildlog/api"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/service"
)

// downloadMethod names the RPC of a download in the access log, whichever
// transport it came by.
var downloadMethod = "/" + buildlogv1.BuildLogService_ServiceDesc.ServiceName + "/DownloadTaskLog"

// observer is the service's observer: the access log, one line per
// download (refused ones included), and the relay metrics. It reads the
// request's fields and the outcome only: never the caller's metadata,
// which holds its token.
type observer struct {
	logger  *slog.Logger
	metrics *metrics
}

func (o observer) Relayed(t service.Transport, n int) { o.metrics.relayed[t].Add(float64(n)) }

func (o observer) Started(t service.Transport) { o.metrics.active[t].Inc() }

func (o observer) Ended(ctx context.Context, e *service.Ended) {
	if e.Admitted {
		o.metrics.active[e.Transport].Dec()
	}
	if g := guardFrom(ctx); g != nil {
		g.ended(e)
	}
	if e.Abandoned || !o.logger.Enabled(ctx, slog.LevelInfo) {
		return
	}
	code := codes.OK
	if e.Err != nil {
		code = e.Err.Code
	}
	attrs := []slog.Attr{
		slog.String("method", downloadMethod),
		slog.String("path", string(e.Transport)),
		slog.String("code", code.String()),
		slog.Int64("bytes", e.Bytes),
		slog.Float64("duration_ms", float64(e.Duration.Microseconds())/1000),
		slog.String("record_id", e.Request.GetRecordId()),
		slog.String("task_name", e.Request.GetTaskName()),
		slog.Int64("offset", e.Request.GetOffset()),
		slog.Int64("limit", e.Request.GetLimit()),
	}
	requestID := e.RequestID
	if e.Err != nil {
		attrs = append(attrs, slog.String("reason", e.Err.Reason))
		if cause := e.Err.Unwrap(); cause != nil && e.Err.Code != codes.Canceled {
			attrs = append(attrs, slog.String("cause", cause.Error())) // for operators: Go's words
		}
		if c := e.Err.Metadata[api.MetadataUpstreamErrorCode]; c != "" {
			attrs = append(attrs, slog.String("upstream_error_code", c))
		}
		if requestID == "" {
			requestID = e.Err.Metadata[api.MetadataRequestID]
		}
	}
	if requestID != "" {
		attrs = append(attrs, slog.String("upstream_request_id", requestID))
	}
	if sc := trace.SpanContextFromContext(ctx); sc.HasTraceID() {
		attrs = append(attrs, slog.String("trace_id", sc.TraceID().String()))
	}
	o.logger.LogAttrs(ctx, slog.LevelInfo, "stream", attrs...)
}

// restMetrics counts the REST mirror's requests by method, route and
// status, and times them: the HTTP server metric of OpenTelemetry's
// semantic conventions, http.server.request.duration.
func (m *metrics) restMetrics(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			// Also when the handler aborts the response (a failure after the
			// first byte): the status is the one sent.
			m.restDuration.WithLabelValues(r.Method, restRoute(r), strconv.Itoa(cmp.Or(sw.status, http.StatusOK))).Observe(time.Since(start).Seconds())
		}()
		next.ServeHTTP(sw, r)
	})
}

// statusWriter notes the status of a response.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the writer's Flush and
// deadlines.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
