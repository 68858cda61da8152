package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// newLogger returns the logger c asks for, writing to w.
func (c *config) newLogger(w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.logLevel}
	if c.logFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// tracingEnabled reports whether the OTEL_* environment asks for traces: an
// exporter other than "none", or an OTLP endpoint. Tracing is off by
// default, so buildlogd never tries to reach a collector nobody runs.
func tracingEnabled(getenv func(string) (string, bool)) bool {
	get := func(k string) string { v, _ := getenv(k); return strings.TrimSpace(v) }
	if strings.EqualFold(get("OTEL_SDK_DISABLED"), "true") {
		return false
	}
	if e := get("OTEL_TRACES_EXPORTER"); e != "" {
		return e != "none"
	}
	return get("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// newTracerProvider returns the tracer provider the OTEL_* environment
// configures (exporter, endpoint, protocol, sampler, resource attributes:
// the OpenTelemetry SDK reads them itself) and a function that flushes and
// stops it; a no-op provider when tracing is off.
func newTracerProvider(ctx context.Context, getenv func(string) (string, bool)) (trace.TracerProvider, func(context.Context) error, error) {
	if !tracingEnabled(getenv) {
		return noop.NewTracerProvider(), func(context.Context) error { return nil }, nil
	}
	exporter, err := newSpanExporter(ctx, getenv)
	if err != nil {
		return nil, nil, fmt.Errorf("set up trace export from OTEL_* variables: %w", err)
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", "buildlogd")), // unless OTEL_SERVICE_NAME says otherwise
		resource.WithFromEnv(),
		resource.WithTelemetrySDK(),
	)
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, nil, fmt.Errorf("describe the service for tracing: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter), sdktrace.WithResource(res))
	return tp, tp.Shutdown, nil
}

// newSpanExporter returns the span exporter OTEL_TRACES_EXPORTER names:
// "otlp" (the default) over OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else
// OTEL_EXPORTER_OTLP_PROTOCOL ("http/protobuf", the default, or "grpc"),
// or "console". ("none" turns tracing off: see tracingEnabled.) The OTLP
// exporters read their endpoint, headers and TLS settings from the
// environment themselves. It is what contrib's autoexport does for traces,
// without the metric and log exporters autoexport links in.
func newSpanExporter(ctx context.Context, getenv func(string) (string, bool)) (sdktrace.SpanExporter, error) {
	get := func(k string) string { v, _ := getenv(k); return strings.TrimSpace(v) }
	switch name := get("OTEL_TRACES_EXPORTER"); name {
	case "", "otlp":
		switch protocol := cmp.Or(get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"), get("OTEL_EXPORTER_OTLP_PROTOCOL")); protocol {
		case "", "http/protobuf":
			return otlptracehttp.New(ctx)
		case "grpc":
			return otlptracegrpc.New(ctx)
		default:
			return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL %q: use grpc or http/protobuf", protocol)
		}
	case "console":
		return stdouttrace.New()
	default:
		return nil, fmt.Errorf("OTEL_TRACES_EXPORTER %q: use otlp, console or none", name)
	}
}
