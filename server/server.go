// Package server assembles buildlogd: BuildLogService on a gRPC listener,
// the REST mirror on an HTTP listener, standard gRPC health and reflection,
// and a graceful shutdown.
//
// The REST mirror reaches the service over an in-process channel (see
// inproc.go) that calls it directly, through the same interceptors and
// stats handlers as the public gRPC server's: REST calls are observed,
// authenticated and traced as gRPC calls are, with no transport, encoding
// or copy between the mirror and the service.
package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/buildlog/buildlog/gateway"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/internal/liblog"
	"github.com/buildlog/buildlog/service"
	"github.com/buildlog/buildlog/upstream"
)

// Defaults of [Config].
const (
	DefaultGRPCAddr        = ":9090"
	DefaultHTTPAddr        = ":8080"
	DefaultShutdownTimeout = 30 * time.Second
	DefaultMaxDownloads    = 512
)

// DefaultMaxStreamsPerConnection is the default of
// Config.MaxStreamsPerConnection: the least HTTP/2 recommends (RFC 9113,
// 5.1.2), and what one client multiplexing its downloads needs.
const DefaultMaxStreamsPerConnection = 100

// maxHeaderBytes caps the request headers (gRPC metadata) of one call on
// both listeners: the longest token accepted plus 16 KiB for every other
// header (trace context, baggage, user agent). A larger header list is
// refused as it is read, before it is held in memory: the token's own
// limit is checked only once the whole list has been read.
const maxHeaderBytes = service.MaxTokenLength + 16<<10

// Config is the daemon's configuration.
type Config struct {
	// GRPCAddr and HTTPAddr are the listen addresses of the gRPC service
	// and the REST mirror; defaults ":9090" and ":8080". Use
	// "127.0.0.1:0" for a free loopback port.
	GRPCAddr string
	HTTPAddr string
	// Upstream is the upstream API endpoint, such as
	// "https://cloudbuild-ext.cn-north-4.myhuaweicloud.com". Required.
	Upstream string
	// ChunkSize is the largest data size of one stream message; default
	// service.DefaultChunkSize.
	ChunkSize int
	// UpstreamHeaderTimeout bounds the wait for the upstream's response
	// headers, UpstreamIdleTimeout the wait for its next body bytes; defaults
	// upstream.DefaultHeaderTimeout and upstream.DefaultIdleTimeout.
	UpstreamHeaderTimeout time.Duration
	UpstreamIdleTimeout   time.Duration
	// UpstreamConnectTimeout bounds opening a connection to the upstream;
	// default upstream.DefaultConnectTimeout.
	UpstreamConnectTimeout time.Duration
	// UpstreamRetry is how transient upstream failures are retried and
	// broken logs resumed; nil for upstream.DefaultRetryPolicy.
	UpstreamRetry *upstream.RetryPolicy
	// MaxDownloads caps the downloads in flight, gRPC and REST together;
	// beyond it calls fail at once with RESOURCE_EXHAUSTED (HTTP 429).
	// Default 512. It also sizes the upstream connection pool.
	MaxDownloads int
	// MaxStreamsPerConnection caps the calls (HTTP/2 streams) one client
	// connection may have open at once, on both listeners, so that no one
	// connection can take every download slot; a client's further calls
	// wait for one of its own to end. Default
	// [DefaultMaxStreamsPerConnection].
	MaxStreamsPerConnection int
	// ShutdownTimeout is how long in-flight downloads may run on after
	// shutdown begins before they are cancelled; default 30s.
	ShutdownTimeout time.Duration
	// Logger receives the server's logs, including one line per stream;
	// default slog.Default().
	Logger *slog.Logger

	// AdminAddr is the listen address of /healthz, /readyz, /metrics and,
	// with Pprof, /debug/pprof/; default ":9091", [AdminOff] for none.
	AdminAddr string
	Pprof     bool
	// Keepalive sets gRPC keepalive and connection age; nil means
	// [DefaultKeepalive].
	Keepalive *Keepalive
	// TracerProvider records spans. Nil or a no-op provider turns tracing
	// off: no spans, and none of their cost, but a caller's trace context
	// still passes through to the upstream and the access log.
	TracerProvider trace.TracerProvider

	// Security (see auth.go and tls.go). TLSCertFile and TLSKeyFile serve
	// both listeners over TLS only; the files are reloaded when they change.
	// TLSClientCAFile also requires client certificates it verifies (mTLS).
	TLSCertFile, TLSKeyFile, TLSClientCAFile string
	// CallerTokensFile lists bearer tokens that authenticate callers, one a
	// line, re-read when it changes.
	CallerTokensFile string
	// UpstreamTLS is the trust for the upstream; default the system roots.
	UpstreamTLS upstream.TLS
	// Credentials, when set, are the server's own upstream credentials,
	// used for callers that send no token and are authenticated by a client
	// certificate or a caller token; one of those must be configured.
	Credentials upstream.Credentials
}

// Server is an assembled, listening daemon. Run it with [Server.Serve].
type Server struct {
	cfg        Config
	grpcLn     net.Listener
	httpLn     net.Listener
	grpcServer *grpc.Server
	httpServer *http.Server
	health     *health.Server
	upstream   *upstream.Client
	// inprocServer serves the REST mirror's calls; see inprocChannel.
	inprocServer *inprocServer

	metrics     *metrics
	adminLn     net.Listener // nil when the admin endpoints are off
	adminServer *http.Server
}

// New builds the daemon and opens its listeners, so that [Server.GRPCAddr]
// and [Server.HTTPAddr] are known before it serves.
func New(cfg Config) (*Server, error) {
	cfg.GRPCAddr = cmp.Or(cfg.GRPCAddr, DefaultGRPCAddr)
	cfg.HTTPAddr = cmp.Or(cfg.HTTPAddr, DefaultHTTPAddr)
	if cfg.ChunkSize == 0 {
		cfg.ChunkSize = service.DefaultChunkSize
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.AdminAddr = cmp.Or(cfg.AdminAddr, DefaultAdminAddr)
	if cfg.Keepalive == nil {
		ka := DefaultKeepalive()
		cfg.Keepalive = &ka
	}
	tr := newTracing(cfg.TracerProvider)
	m := newMetrics()

	sec, err := newSecurity(cfg)
	if err != nil {
		return nil, err
	}

	cfg.UpstreamHeaderTimeout = cmp.Or(cfg.UpstreamHeaderTimeout, upstream.DefaultHeaderTimeout)
	cfg.UpstreamIdleTimeout = cmp.Or(cfg.UpstreamIdleTimeout, upstream.DefaultIdleTimeout)
	cfg.UpstreamConnectTimeout = cmp.Or(cfg.UpstreamConnectTimeout, upstream.DefaultConnectTimeout)
	cfg.MaxDownloads = cmp.Or(cfg.MaxDownloads, DefaultMaxDownloads)
	if cfg.MaxDownloads < 1 || cfg.MaxDownloads > 1<<20 {
		return nil, fmt.Errorf("max downloads %d is out of range [1, %d]", cfg.MaxDownloads, 1<<20)
	}
	cfg.MaxStreamsPerConnection = cmp.Or(cfg.MaxStreamsPerConnection, DefaultMaxStreamsPerConnection)
	if cfg.MaxStreamsPerConnection < 1 || cfg.MaxStreamsPerConnection > 1<<20 {
		return nil, fmt.Errorf("max streams per connection %d is out of range [1, %d]", cfg.MaxStreamsPerConnection, 1<<20)
	}
	up, err := upstream.New(cfg.Upstream, append([]upstream.Option{
		upstream.WithConnectTimeout(cfg.UpstreamConnectTimeout),
		upstream.WithHeaderTimeout(cfg.UpstreamHeaderTimeout),
		upstream.WithIdleTimeout(cfg.UpstreamIdleTimeout),
		upstream.WithRetry(*cmp.Or(cfg.UpstreamRetry, &upstream.DefaultRetryPolicy)),
		upstream.WithMaxConns(cfg.MaxDownloads),
		upstream.WithObserver(m),
		tr.upstreamOption()}, sec.upOpts...)...)
	if err != nil {
		return nil, err
	}
	svc, err := service.New(up, append([]service.Option{service.WithChunkSize(cfg.ChunkSize), service.WithMaxDownloads(cfg.MaxDownloads)}, sec.svcOpts...)...)
	if err != nil {
		return nil, err
	}

	s := &Server{cfg: cfg, health: health.NewServer(), upstream: up, metrics: m}
	// What every call passes, gRPC and REST alike.
	var hooks callHooks
	tr.addServerHooks(&hooks)
	hooks.stream = append(append(hooks.stream, m.grpc.StreamServerInterceptor(), s.observeStreams), sec.streamInterceptors...)
	hooks.unary = append(hooks.unary, m.grpc.UnaryServerInterceptor())

	grpcOpts := append(append(append(cfg.Keepalive.serverOptions(),
		grpc.MaxConcurrentStreams(uint32(cfg.MaxStreamsPerConnection)),
		grpc.MaxHeaderListSize(maxHeaderBytes),
		grpc.NumStreamWorkers(uint32(streamWorkers())),
		svc.ServerOption(),
	), hooks.serverOptions()...), sec.grpcOpts...)
	s.grpcServer = grpc.NewServer(grpcOpts...)
	buildlogv1.RegisterBuildLogServiceServer(s.grpcServer, svc)
	healthpb.RegisterHealthServer(s.grpcServer, s.health)
	reflection.Register(s.grpcServer)
	m.grpc.InitializeMetrics(s.grpcServer)

	s.inprocServer = newInprocServer(hooks)
	buildlogv1.RegisterBuildLogServiceServer(s.inprocServer, svc)

	// The gRPC server's stream workers run from now on: a failure below
	// stops them (and any the in-process server started).
	abandon := func(err error) (*Server, error) {
		s.grpcServer.Stop()
		s.inprocServer.Stop()
		return nil, err
	}
	mirror, err := gateway.New(context.Background(), buildlogv1.NewBuildLogServiceClient(
		&inprocChannel{server: s.inprocServer, stats: tr.gatewayStatsHandler()}), sec.gatewayOpts...)
	if err != nil {
		return abandon(fmt.Errorf("build the REST mirror: %w", err))
	}
	s.httpServer = &http.Server{
		Handler:           tr.restHandler(mirror),
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    maxHeaderBytes,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: cfg.MaxStreamsPerConnection},
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          liblog.ErrorLog(cfg.Logger),
	}

	if s.grpcLn, err = listen(cfg.GRPCAddr); err != nil {
		return abandon(fmt.Errorf("listen for gRPC on %s: %w", cfg.GRPCAddr, err))
	}
	if s.httpLn, err = listen(cfg.HTTPAddr); err != nil {
		s.grpcLn.Close()
		return abandon(fmt.Errorf("listen for HTTP on %s: %w", cfg.HTTPAddr, err))
	}
	s.httpLn = sec.listenHTTP(s.httpLn)
	if err := s.listenAdmin(); err != nil {
		s.grpcLn.Close()
		s.httpLn.Close()
		return abandon(err)
	}
	return s, nil
}

// GRPCAddr returns the address the gRPC service listens on.
func (s *Server) GRPCAddr() net.Addr { return s.grpcLn.Addr() }

// HTTPAddr returns the address the REST mirror listens on.
func (s *Server) HTTPAddr() net.Addr { return s.httpLn.Addr() }

// Serve serves until ctx is done, then shuts down gracefully: it stops
// accepting calls, reports NOT_SERVING, lets in-flight downloads finish for
// up to the shutdown timeout, then cancels the rest. It returns nil after a
// shutdown that ctx asked for.
func (s *Server) Serve(ctx context.Context) error {
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus(buildlogv1.BuildLogService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)

	errc := make(chan error, 4)
	var wg sync.WaitGroup
	serve := func(name string, f func() error) {
		wg.Go(func() {
			if err := f(); err != nil && !errors.Is(err, grpc.ErrServerStopped) && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		})
	}
	serve("serve gRPC", func() error { return s.grpcServer.Serve(s.grpcLn) })
	serve("serve HTTP", func() error { return s.httpServer.Serve(s.httpLn) })
	if s.adminLn != nil {
		serve("serve admin HTTP", func() error { return s.adminServer.Serve(s.adminLn) })
	}
	s.cfg.Logger.Info("serving", "grpc", s.GRPCAddr().String(), "http", s.HTTPAddr().String(), "admin", s.adminAddrString(), "upstream", s.cfg.Upstream)

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	s.shutdown()
	wg.Wait()
	return serveErr
}

// shutdown stops the servers, giving in-flight calls the shutdown timeout
// to finish.
func (s *Server) shutdown() {
	s.cfg.Logger.Info("shutting down", "timeout", s.cfg.ShutdownTimeout.String())
	s.health.Shutdown() // NOT_SERVING for every service
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()

	// Both servers stop accepting at once and drain under one deadline. REST
	// downloads in flight run on the in-process server, stopped once the
	// REST server has drained (or been closed, which cancels them).
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := s.httpServer.Shutdown(ctx); err != nil {
			s.httpServer.Close()
		}
		s.inprocServer.Stop()
	})
	wg.Go(func() {
		stopped := make(chan struct{})
		go func() {
			s.grpcServer.GracefulStop()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-ctx.Done():
			s.grpcServer.Stop() // cancels the calls still running
			<-stopped
		}
	})
	wg.Wait()
	s.upstream.CloseIdleConnections()
	s.shutdownAdmin()
	s.cfg.Logger.Info("stopped")
}
