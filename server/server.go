// Package server assembles buildlogd: the download service behind two
// adapters, BuildLogService on a gRPC listener (grpc.go) and the REST
// mirror (package gateway) on an HTTP listener, with standard gRPC health
// and reflection, the admin endpoints, TLS, and a graceful shutdown.
//
// What every download passes — caller authentication, the download cap,
// the access log, the relay metrics — runs once, in the service, for both
// transports (the access log and metrics through observer, observe.go).
// Each transport adds only what belongs to it: gRPC's call metrics and
// tracing interceptors, the REST mirror's HTTP metrics, tracing and CORS.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"sync"
	"time"

	"github.com/rs/cors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/buildlog/buildlog/api"
	"github.com/buildlog/buildlog/gateway"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/internal/liblog"
	"github.com/buildlog/buildlog/service"
	"github.com/buildlog/buildlog/upstream"
)

// maxHeaderBytes caps the request headers (gRPC metadata) of one call on
// both listeners: the longest token accepted plus 16 KiB for every other
// header (trace context, baggage, user agent). A larger header list is
// refused as it is read, before it is held in memory: the token's own
// limit is checked only once the whole list has been read.
const maxHeaderBytes = api.MaxTokenLength + 16<<10

// Server is an assembled, listening daemon. Run it with [Server.Serve].
type Server struct {
	cfg        Config
	grpcLn     net.Listener
	httpLn     net.Listener
	grpcServer *grpc.Server
	httpServer *http.Server
	restCalls  restCalls // REST requests being served
	health     *health.Server
	upstream   *upstream.Client
	svc        *service.Service

	metrics     *metrics
	adminLn     net.Listener // nil when the admin endpoints are off
	adminServer *http.Server
}

// New builds the daemon and opens its listeners, so that [Server.GRPCAddr]
// and [Server.HTTPAddr] are known before it serves.
func New(cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	tr := newTracing(cfg.TracerProvider)
	m := newMetrics()
	sec, err := newSecurity(cfg)
	if err != nil {
		return nil, err
	}
	up, err := upstream.New(cfg.Upstream, append([]upstream.Option{
		upstream.WithConnectTimeout(cfg.UpstreamConnectTimeout),
		upstream.WithHeaderTimeout(cfg.UpstreamHeaderTimeout),
		upstream.WithIdleTimeout(cfg.UpstreamIdleTimeout),
		upstream.WithRetry(cfg.UpstreamRetry),
		upstream.WithMaxConns(cfg.MaxDownloads),
		upstream.WithObserver(m),
		tr.upstreamOption()}, sec.upOpts...)...)
	if err != nil {
		return nil, err
	}
	opts := sec.svcOpts
	if cfg.SharedReads {
		opts = append(opts, service.WithSharedReads(cfg.SharedReauthorize))
	}
	svc, err := service.New(up, append([]service.Option{
		service.WithChunkSize(cfg.ChunkSize),
		service.WithMaxDownloads(cfg.MaxDownloads),
		service.WithCallerIdleTimeout(cfg.CallerIdleTimeout),
		service.WithFollow(cfg.FollowPollInterval, cfg.FollowMaxDuration),
		service.WithObserver(observer{logger: cfg.Logger, metrics: m}),
	}, opts...)...)
	if err != nil {
		return nil, err
	}
	m.sharedReads(svc.SharedStats())
	mirror, err := gateway.New(svc)
	if err != nil {
		return nil, fmt.Errorf("build the REST mirror: %w", err)
	}

	s := &Server{cfg: cfg, health: health.NewServer(), upstream: up, svc: svc, metrics: m}
	s.grpcServer = grpc.NewServer(append([]grpc.ServerOption{
		grpc.KeepaliveParams(cfg.Keepalive),
		grpc.KeepaliveEnforcementPolicy(cfg.KeepalivePolicy),
		grpc.MaxConcurrentStreams(uint32(cfg.MaxStreamsPerConnection)),
		grpc.MaxHeaderListSize(maxHeaderBytes),
		grpc.NumStreamWorkers(uint32(4 * runtime.GOMAXPROCS(0))),
		grpc.Creds(guardedCreds{TransportCredentials: sec.creds, logger: cfg.Logger}),
		grpc.InTapHandle(tapCall),
		grpc.ChainStreamInterceptor(m.grpc.StreamServerInterceptor()),
		grpc.ChainUnaryInterceptor(m.grpc.UnaryServerInterceptor()),
		codecOption(),
	}, tr.grpcOptions()...)...)
	buildlogv1.RegisterBuildLogServiceServer(s.grpcServer, grpcService{svc: svc, maxAge: cfg.Keepalive.MaxConnectionAge})
	healthpb.RegisterHealthServer(s.grpcServer, s.health)
	if err := registerReflection(s.grpcServer); err != nil {
		return nil, err
	}
	m.grpc.InitializeMetrics(s.grpcServer)

	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetHTTP2(true)
	protocols.SetUnencryptedHTTP2(sec.certs == nil) // h2c with prior knowledge, as mesh sidecars speak it
	s.httpServer = &http.Server{
		Handler:           s.restHandler(tr, mirror),
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    maxHeaderBytes,
		Protocols:         &protocols,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: cfg.MaxStreamsPerConnection},
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          liblog.ErrorLog(cfg.Logger),
		ConnContext:       s.restConnContext,
	}
	if err := s.listen(sec); err != nil {
		s.grpcServer.Stop()
		return nil, err
	}
	return s, nil
}

// restHandler is the REST mirror with what the HTTP transport adds around
// it: CORS when origins are allowed, tracing, the HTTP metrics, the hold
// of a connection cut off (guard.go), and the count of requests being
// served for the shutdown to wait for.
func (s *Server) restHandler(tr tracing, mirror http.Handler) http.Handler {
	h := s.metrics.restMetrics(tr.restHandler(mirror))
	if len(s.cfg.CORSAllowedOrigins) > 0 {
		h = cors.New(cors.Options{
			AllowedOrigins: s.cfg.CORSAllowedOrigins,
			AllowedMethods: []string{http.MethodGet, http.MethodHead},
			AllowedHeaders: []string{"X-Auth-Token", "Authorization", "Range", "Traceparent", "Tracestate", "Baggage"},
			ExposedHeaders: []string{"Content-Length", "Content-Range", "Content-Disposition", "Accept-Ranges", "X-Request-Id", "Retry-After", "Buildlog-Action-Status", "Buildlog-Action-Finished"},
			MaxAge:         600,
		}).Handler(h)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.restCalls.enter() {
			shuttingDown.WriteREST(w, shuttingDown.HTTPStatus())
			return
		}
		defer s.restCalls.leave()
		if !holdIfCutOff(w, r) {
			h.ServeHTTP(w, r)
		}
	})
}

// listen opens the three listeners, or none.
func (s *Server) listen(sec *security) error {
	var err error
	if s.grpcLn, err = listen(s.cfg.GRPCAddr); err != nil {
		return fmt.Errorf("listen for gRPC on %s: %w", s.cfg.GRPCAddr, err)
	}
	if s.httpLn, err = listen(s.cfg.HTTPAddr); err != nil {
		s.grpcLn.Close()
		return fmt.Errorf("listen for HTTP on %s: %w", s.cfg.HTTPAddr, err)
	}
	s.httpLn = sec.listenHTTP(s.httpLn)
	if err := s.listenAdmin(); err != nil {
		s.grpcLn.Close()
		s.httpLn.Close()
		return err
	}
	return nil
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
// to finish. Followed downloads, which would run until their actions end,
// end at once, asking their callers to follow on elsewhere.
func (s *Server) shutdown() {
	s.cfg.Logger.Info("shutting down", "timeout", s.cfg.ShutdownTimeout.String())
	s.health.Shutdown() // NOT_SERVING for every service
	s.svc.EndFollows()
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()

	// Both servers stop accepting at once and drain under one deadline.
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := s.httpServer.Shutdown(ctx); err != nil {
			s.httpServer.Close() // cancels the requests still running
		}
		s.restCalls.closeAndWait()
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
