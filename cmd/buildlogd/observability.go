package main

import (
	"context"
	"errors"
	"flag"
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

	"github.com/buildlog/buildlog/server"
)

// obsConfig holds the settings for operating buildlogd: the admin
// endpoints, logs and gRPC connection management.
type obsConfig struct {
	adminAddr string
	pprof     bool
	logFormat string
	logLevel  slog.Level
	keepalive server.Keepalive
}

// addObsFlags defines the flags of obsConfig on fs.
func addObsFlags(fs *flag.FlagSet, c *obsConfig) {
	ka := server.DefaultKeepalive()
	c.keepalive = ka
	fs.StringVar(&c.adminAddr, "admin-addr", server.DefaultAdminAddr, "listen `address` of /healthz, /readyz, /metrics (and /debug/pprof/ with --pprof); \""+server.AdminOff+"\" for none")
	fs.BoolVar(&c.pprof, "pprof", false, "serve Go profiles at /debug/pprof/ on the admin address")
	fs.StringVar(&c.logFormat, "log-format", "json", "log `format`: json (one JSON object a line) or text (key=value, for humans)")
	fs.TextVar(&c.logLevel, "log-level", slog.LevelInfo, "least `level` logged: debug, info, warn or error")
	fs.DurationVar(&c.keepalive.Time, "keepalive-time", ka.Time, "ping a client after its connection is silent this long")
	fs.DurationVar(&c.keepalive.Timeout, "keepalive-timeout", ka.Timeout, "close a connection whose ping is unanswered this long")
	fs.DurationVar(&c.keepalive.MinTime, "keepalive-min-time", ka.MinTime, "shortest interval between client pings tolerated (more often: the connection is closed with ENHANCE_YOUR_CALM)")
	fs.BoolVar(&c.keepalive.PermitWithoutStream, "keepalive-permit-without-stream", ka.PermitWithoutStream, "accept client pings on connections with no call in progress")
	fs.DurationVar(&c.keepalive.MaxConnectionAge, "max-connection-age", ka.MaxConnectionAge, "ask clients to reconnect after a connection lived this long, so L4 balancers spread them over new replicas; 0 for never")
	fs.DurationVar(&c.keepalive.MaxConnectionAgeGrace, "max-connection-age-grace", ka.MaxConnectionAgeGrace, "after --max-connection-age, how long calls in progress may finish before the connection closes; 0 for as long as they need")
}

// check validates c after parsing.
func (c *obsConfig) check() error {
	switch c.logFormat {
	case "json", "text":
	default:
		return fmt.Errorf("--log-format %q: use json or text", c.logFormat)
	}
	for _, d := range []struct {
		name string
		ok   bool
	}{
		{"keepalive-time", c.keepalive.Time > 0},
		{"keepalive-timeout", c.keepalive.Timeout > 0},
		{"keepalive-min-time", c.keepalive.MinTime > 0},
		{"max-connection-age", c.keepalive.MaxConnectionAge >= 0},
		{"max-connection-age-grace", c.keepalive.MaxConnectionAgeGrace >= 0},
	} {
		if !d.ok {
			return fmt.Errorf("--%s must be positive (0 is allowed for the connection age settings)", d.name)
		}
	}
	return nil
}

// newLogger returns the logger c asks for, writing to w.
func (c *obsConfig) newLogger(w io.Writer) *slog.Logger {
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
