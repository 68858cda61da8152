package main

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/buildlog/buildlog/server"
)

func TestObsFlags(t *testing.T) {
	t.Parallel()
	defaults := obsConfig{adminAddr: ":9091", logFormat: "json", logLevel: slog.LevelInfo, keepalive: server.DefaultKeepalive()}
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		want    func(*obsConfig)
		wantErr string
	}{
		{name: "defaults", want: func(*obsConfig) {}},
		{
			name: "flags",
			args: []string{"--admin-addr", "off", "--pprof", "--log-format", "text", "--log-level", "debug",
				"--keepalive-time", "30s", "--keepalive-timeout", "5s", "--keepalive-min-time", "15s", "--keepalive-permit-without-stream=false",
				"--max-connection-age", "10m", "--max-connection-age-grace", "2m"},
			want: func(c *obsConfig) {
				c.adminAddr, c.pprof, c.logFormat, c.logLevel = "off", true, "text", slog.LevelDebug
				c.keepalive = server.Keepalive{Time: 30 * time.Second, Timeout: 5 * time.Second, MinTime: 15 * time.Second,
					MaxConnectionAge: 10 * time.Minute, MaxConnectionAgeGrace: 2 * time.Minute}
			},
		},
		{
			name: "environment",
			env:  map[string]string{"BUILDLOG_ADMIN_ADDR": "127.0.0.1:9999", "BUILDLOG_LOG_LEVEL": "WARN", "BUILDLOG_MAX_CONNECTION_AGE": "5m"},
			want: func(c *obsConfig) {
				c.adminAddr, c.logLevel, c.keepalive.MaxConnectionAge = "127.0.0.1:9999", slog.LevelWarn, 5*time.Minute
			},
		},
		{name: "bad log format", args: []string{"--log-format", "xml"}, wantErr: "--log-format"},
		{name: "bad log level", args: []string{"--log-level", "loud"}, wantErr: "log-level"},
		{name: "zero keepalive time", args: []string{"--keepalive-time", "0s"}, wantErr: "--keepalive-time"},
		{name: "negative connection age", env: map[string]string{"BUILDLOG_MAX_CONNECTION_AGE": "-1m"}, wantErr: "--max-connection-age"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := parseConfig(append([]string{"--demo"}, tt.args...), env(tt.env), io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseConfig() error = %v, want one mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := defaults
			tt.want(&want)
			if diff := cmp.Diff(want, cfg.obs, cmp.AllowUnexported(obsConfig{})); diff != "" {
				t.Errorf("obs settings (-want +got):\n%s", diff)
			}
		})
	}
}

func TestTracingEnabled(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		env  map[string]string
		want bool
	}{
		{"nothing set", nil, false},
		{"exporter none", map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, false},
		{"exporter otlp", map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, true},
		{"exporter console", map[string]string{"OTEL_TRACES_EXPORTER": "console"}, true},
		{"endpoint", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, true},
		{"traces endpoint", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, true},
		{"sdk disabled", map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := tracingEnabled(env(tc.env)); got != tc.want {
				t.Errorf("tracingEnabled(%v) = %v, want %v", tc.env, got, tc.want)
			}
		})
	}
}

func TestTracerProviderOffByDefault(t *testing.T) {
	t.Parallel()
	tp, stop, err := newTracerProvider(context.Background(), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer stop(context.Background())
	_, span := tp.Tracer("test").Start(context.Background(), "x")
	defer span.End()
	if span.IsRecording() || span.SpanContext().IsValid() {
		t.Error("with no OTEL_* settings spans are recorded; want tracing off")
	}
}
