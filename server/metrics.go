package server

import (
	"strconv"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/buildlog/buildlog/service"
)

// metrics are buildlogd's Prometheus collectors, on a registry of their own
// so that tests and embedders never share global state.
type metrics struct {
	registry *prometheus.Registry
	grpc     *grpcprom.ServerMetrics

	upstreamRequests *prometheus.CounterVec
	upstreamLatency  *prometheus.HistogramVec
	upstreamRetries  *prometheus.CounterVec
	upstreamResumes  prometheus.Counter
	relayedBytes     *prometheus.CounterVec
	activeStreams    *prometheus.GaugeVec
	restDuration     *prometheus.HistogramVec
	// The series of relayedBytes and activeStreams for each transport.
	relayed map[service.Transport]prometheus.Counter
	active  map[service.Transport]prometheus.Gauge
}

// latencyBuckets cover a fast upstream answer (5 ms) to the default header
// timeout (30 s) and beyond, in seconds.
var latencyBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// downloadBuckets cover whole downloads, which can run for minutes, in
// seconds.
var downloadBuckets = []float64{.01, .05, .1, .5, 1, 5, 10, 30, 60, 300, 900, 3600}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		grpc: grpcprom.NewServerMetrics(
			grpcprom.WithServerHandlingTimeHistogram(grpcprom.WithHistogramBuckets(downloadBuckets)),
		),
		upstreamRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "buildlog_upstream_requests_total",
			Help: "Upstream HTTP requests by response status (0: no response) and upstream error_code (empty for a log).",
		}, []string{"status", "error_code"}),
		upstreamLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "buildlog_upstream_response_seconds",
			Help:    "Time from sending an upstream request to its response headers (or failure), by status.",
			Buckets: latencyBuckets,
		}, []string{"status"}),
		upstreamRetries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "buildlog_upstream_retries_total",
			Help: "Upstream requests retried before any byte reached the caller, by reason.",
		}, []string{"reason"}),
		upstreamResumes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "buildlog_upstream_resumes_total",
			Help: "Broken upstream log bodies resumed transparently with a Range request.",
		}),
		relayedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "buildlog_relayed_bytes_total",
			Help: "Log bytes sent to callers, by path (grpc, or rest for the REST mirror).",
		}, []string{"path"}),
		activeStreams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "buildlog_active_streams",
			Help: "Downloads in progress, by path (grpc, or rest for the REST mirror).",
		}, []string{"path"}),
		restDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "http_server_request_duration_seconds",
			Help:    "Duration of the REST mirror's HTTP requests, whole body included, by method, route and response status.",
			Buckets: downloadBuckets,
		}, []string{"http_request_method", "http_route", "http_response_status_code"}),
		relayed: map[service.Transport]prometheus.Counter{},
		active:  map[service.Transport]prometheus.Gauge{},
	}
	m.registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.grpc, m.upstreamRequests, m.upstreamLatency, m.upstreamRetries, m.upstreamResumes,
		m.relayedBytes, m.activeStreams, m.restDuration,
	)
	// Both transports show from the start, so rate() and alerts see zeros
	// rather than missing series.
	for _, t := range []service.Transport{service.GRPC, service.REST} {
		m.relayed[t] = m.relayedBytes.WithLabelValues(string(t))
		m.active[t] = m.activeStreams.WithLabelValues(string(t))
	}
	return m
}

// sharedReads exports the shared reads' counters; st is nil when they
// are off, and the series then stay absent.
func (m *metrics) sharedReads(st *service.SharedStats) {
	if st == nil {
		return
	}
	for _, c := range []struct {
		name, help string
		v          interface{ Load() int64 }
	}{
		{"buildlog_shared_joins_total", "Downloads and follower polls served from an upstream read that another caller's request made (each caller's access proven by its own request).", &st.Joins},
		{"buildlog_shared_detaches_total", "Readers that fell behind a shared read's window and went on with an upstream request of their own.", &st.Detaches},
		{"buildlog_shared_upstream_requests_saved_total", "Upstream requests not made thanks to shared reads (log reads, polls and action states taken from another caller's, less the proofs they needed).", &st.RequestsSaved},
		{"buildlog_shared_bytes_saved_total", "Log bytes delivered from another caller's upstream read: bytes the upstream did not send again.", &st.BytesSaved},
	} {
		m.registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: c.name, Help: c.help},
			func() float64 { return float64(c.v.Load()) }))
	}
}

// metrics implements upstream.Observer.

// Exchange counts one upstream request.
func (m *metrics) Exchange(status int, errorCode string, elapsed time.Duration) {
	s := strconv.Itoa(status)
	m.upstreamRequests.WithLabelValues(s, labelValue(errorCode)).Inc()
	m.upstreamLatency.WithLabelValues(s).Observe(elapsed.Seconds())
}

// Retry counts one retried upstream request.
func (m *metrics) Retry(reason string) { m.upstreamRetries.WithLabelValues(labelValue(reason)).Inc() }

// Resume counts one resumed log body.
func (m *metrics) Resume(int64) { m.upstreamResumes.Inc() }

// maxLabelValue bounds label values that come from the upstream.
const maxLabelValue = 32

// labelValue keeps a label value from the upstream (an error_code) to a
// short code-like string, so a misbehaving upstream cannot flood the
// metrics with unbounded or odd values: anything else becomes "other".
func labelValue(v string) string {
	if len(v) > maxLabelValue {
		return "other"
	}
	for _, r := range v {
		switch {
		case r >= 'A' && r <= 'Z', r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
		default:
			return "other"
		}
	}
	return v
}
