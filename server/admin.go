package server

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/buildlog/buildlog/internal/liblog"
)

// adminHandler serves the operator's endpoints:
//
//   - /healthz: liveness, 200 while the process can answer at all.
//   - /readyz: readiness, 200 while the gRPC health service reports SERVING
//     and 503 once shutdown has begun, so HTTP probes and gRPC health checks
//     never disagree.
//   - /metrics: Prometheus text exposition.
//   - /debug/pprof/: Go profiles, only with Config.Pprof, as profiles cost
//     CPU and show internals.
func (s *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		resp, err := s.health.Check(r.Context(), &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("not ready: shutting down\n"))
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{Registry: s.metrics.registry}))
	if s.cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// listenAdmin opens the admin listener unless the admin endpoints are off.
func (s *Server) listenAdmin() error {
	if s.cfg.AdminAddr == AdminOff {
		return nil
	}
	ln, err := listen(s.cfg.AdminAddr)
	if err != nil {
		return fmt.Errorf("listen for admin HTTP on %s: %w", s.cfg.AdminAddr, err)
	}
	s.adminLn = ln
	s.adminServer = &http.Server{
		Handler:           s.adminHandler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          liblog.ErrorLog(s.cfg.Logger),
	}
	return nil
}

// AdminAddr returns the address of the admin endpoints, nil when they are
// off.
func (s *Server) AdminAddr() net.Addr {
	if s.adminLn == nil {
		return nil
	}
	return s.adminLn.Addr()
}

func (s *Server) adminAddrString() string {
	if a := s.AdminAddr(); a != nil {
		return a.String()
	}
	return AdminOff
}

// shutdownAdmin stops the admin endpoints last, so /readyz answers 503 and
// /metrics stays scrapable while downloads drain.
func (s *Server) shutdownAdmin() {
	if s.adminServer == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := s.adminServer.Shutdown(ctx); err != nil {
		s.adminServer.Close()
	}
}
