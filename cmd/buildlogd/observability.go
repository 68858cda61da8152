package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/otel/attribute"
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
	exporter, err := autoexport.NewSpanExporter(ctx)
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
