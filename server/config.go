package server

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/keepalive"

	"github.com/buildlog/buildlog/service"
	"github.com/buildlog/buildlog/upstream"
)

// Config is the daemon's configuration. [DefaultConfig] holds every
// default; start from it. Settings are named as buildlogd's flags are
// (ChunkSize is --chunk-size), and so are they in New's errors.
type Config struct {
	// GRPCAddr, HTTPAddr and AdminAddr are the listen addresses of the gRPC
	// service, the REST mirror and the admin endpoints (/healthz, /readyz,
	// /metrics and, with Pprof, /debug/pprof/); "127.0.0.1:0" picks a free
	// loopback port, [AdminOff] turns the admin endpoints off.
	GRPCAddr, HTTPAddr, AdminAddr string
	Pprof                         bool
	// Upstream is the upstream API endpoint, such as
	// "https://cloudbuild-ext.cn-north-4.myhuaweicloud.com". Required.
	Upstream string
	// ChunkSize is the largest data size of one stream message.
	ChunkSize int
	// MaxDownloads caps the downloads in flight, gRPC and REST together;
	// beyond it calls fail at once with RESOURCE_EXHAUSTED (HTTP 429). It
	// also sizes the upstream connection pool.
	MaxDownloads int
	// MaxStreamsPerConnection caps the calls (HTTP/2 streams) one client
	// connection may have open at once, on both listeners, so that no one
	// connection can take every download slot; a client's further calls
	// wait for one of its own to end.
	MaxStreamsPerConnection int
	// CallerIdleTimeout ends a download whose caller has accepted no bytes
	// for so long, freeing its slot (0: never).
	CallerIdleTimeout time.Duration
	// FollowPollInterval is how often a followed download polls the
	// upstream while its log grows (less often while it does not), and
	// FollowMaxDuration how long one may follow before it ends, its caller
	// to follow on with a new call.
	FollowPollInterval, FollowMaxDuration time.Duration
	// SharedReads makes concurrent readers of one log share upstream
	// reads: followers share polls, downloads ride a read in flight. Each
	// caller's access is still proven by an upstream answer to a request
	// of its own, at most SharedReauthorize old. On by default.
	SharedReads       bool
	SharedReauthorize time.Duration
	// ShutdownTimeout is how long in-flight downloads may run on after
	// shutdown begins before they are cancelled.
	ShutdownTimeout time.Duration
	// UpstreamConnectTimeout, UpstreamHeaderTimeout and UpstreamIdleTimeout
	// bound opening a connection to the upstream, the wait for its response
	// headers and the wait for its next body bytes.
	UpstreamConnectTimeout, UpstreamHeaderTimeout, UpstreamIdleTimeout time.Duration
	// UpstreamRetry is how transient upstream failures are retried and
	// broken logs resumed.
	UpstreamRetry upstream.RetryPolicy
	// Keepalive sets how the gRPC server pings silent connections and how
	// long one may live (MaxConnectionAge: in a mesh or behind an L4
	// balancer, clients then reconnect now and then, and new replicas get
	// their share); a zero duration is grpc-go's default (for the age,
	// forever). KeepalivePolicy sets how often clients may ping (more often:
	// GOAWAY ENHANCE_YOUR_CALM), and whether with no call in progress, as
	// clients of other languages keep idle connections warm.
	Keepalive       keepalive.ServerParameters
	KeepalivePolicy keepalive.EnforcementPolicy
	// Logger receives the server's logs, including one line per download;
	// nil for slog.Default().
	Logger *slog.Logger
	// TracerProvider records spans. Nil or a no-op provider turns tracing
	// off: no spans, and none of their cost, but a caller's trace context
	// still passes through to the upstream and the access log.
	TracerProvider trace.TracerProvider
	// CORSAllowedOrigins lets browser pages from these origins (or "*")
	// call the REST mirror; none by default.
	CORSAllowedOrigins []string

	// Security (see auth.go and tls.go). TLSCertFile and TLSKeyFile serve
	// both listeners over TLS only; the files are reloaded when they change.
	// TLSClientCAFile also requires client certificates it verifies (mTLS).
	TLSCertFile, TLSKeyFile, TLSClientCAFile string
	// CallerTokensFile lists bearer tokens that authenticate callers, one a
	// line, re-read when it changes.
	CallerTokensFile string
	// UpstreamTLS is the trust for the upstream; the zero value trusts the
	// system roots.
	UpstreamTLS upstream.TLS
	// Credentials, when set, are the server's own upstream credentials,
	// used for callers that send no token and are authenticated by a client
	// certificate or a caller token; one of those must be configured.
	Credentials upstream.Credentials
}

// AdminOff is the AdminAddr that turns the admin endpoints off.
const AdminOff = "off"

// DefaultConfig returns the default configuration, without the required
// Upstream.
func DefaultConfig() Config {
	return Config{
		GRPCAddr:                ":9090",
		HTTPAddr:                ":8080",
		AdminAddr:               ":9091",
		ChunkSize:               service.DefaultChunkSize,
		MaxDownloads:            512,
		MaxStreamsPerConnection: 100, // the least HTTP/2 recommends (RFC 9113, 5.1.2)
		CallerIdleTimeout:       5 * time.Minute,
		FollowPollInterval:      service.DefaultFollowPollInterval,
		FollowMaxDuration:       service.DefaultFollowMaxDuration,
		SharedReads:             true,
		SharedReauthorize:       service.DefaultSharedReauthorize,
		ShutdownTimeout:         30 * time.Second,
		UpstreamConnectTimeout:  upstream.DefaultConnectTimeout,
		UpstreamHeaderTimeout:   upstream.DefaultHeaderTimeout,
		UpstreamIdleTimeout:     upstream.DefaultIdleTimeout,
		UpstreamRetry:           upstream.DefaultRetryPolicy,
		Keepalive:               keepalive.ServerParameters{Time: time.Minute, Timeout: 20 * time.Second},
		KeepalivePolicy:         keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true},
	}
}

// maxCount bounds the settings that count downloads and streams.
const maxCount = 1 << 20

// check checks the settings New uses itself; the service (chunk size,
// caller idle timeout) and the upstream client (its timeouts and retries)
// check theirs.
func (c *Config) check() error {
	var errs []error
	for _, n := range []struct {
		name  string
		value int
	}{{"max-downloads", c.MaxDownloads}, {"max-streams-per-connection", c.MaxStreamsPerConnection}} {
		if n.value < 1 || n.value > maxCount {
			errs = append(errs, fmt.Errorf("%s %d is out of range: use 1 to %d", n.name, n.value, maxCount))
		}
	}
	for _, d := range []struct {
		name  string
		value time.Duration
		zero  bool // 0 is allowed (never)
	}{
		{"shutdown-timeout", c.ShutdownTimeout, false},
		{"shared-reauthorize", c.SharedReauthorize, !c.SharedReads},
		{"keepalive-time", c.Keepalive.Time, false}, {"keepalive-timeout", c.Keepalive.Timeout, false},
		{"keepalive-min-time", c.KeepalivePolicy.MinTime, false},
		{"max-connection-age", c.Keepalive.MaxConnectionAge, true}, {"max-connection-age-grace", c.Keepalive.MaxConnectionAgeGrace, true},
	} {
		if d.value < 0 || (d.value == 0 && !d.zero) {
			errs = append(errs, fmt.Errorf("%s must be positive, got %s", d.name, d.value))
		}
	}
	return errors.Join(errs...)
}
