package main

import (
	"context"
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
