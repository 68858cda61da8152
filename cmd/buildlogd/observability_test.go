package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
)

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

func TestNewSpanExporter(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		env      map[string]string
		wantType string // the exporter's type
		wantErr  string
	}{
		{map[string]string{}, "*otlptrace.Exporter", ""},
		{map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "*otlptrace.Exporter", ""},
		{map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, "*otlptrace.Exporter", ""},
		{map[string]string{"OTEL_TRACES_EXPORTER": "console"}, "*stdouttrace.Exporter", ""},
		{map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, "", "OTEL_TRACES_EXPORTER"},
		{map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "", "OTEL_EXPORTER_OTLP_PROTOCOL"},
	} {
		e, err := newSpanExporter(context.Background(), env(tc.env))
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%v: error %v, want one naming %s", tc.env, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%v: %v", tc.env, err)
		}
		if got := fmt.Sprintf("%T", e); got != tc.wantType {
			t.Errorf("%v: exporter %s, want %s", tc.env, got, tc.wantType)
		}
		e.Shutdown(context.Background())
	}
}
