// Package servertest runs a complete buildlogd on loopback ports in front
// of a simulated upstream, for tests of anything that talks to buildlogd.
package servertest

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/buildlog/buildlog/api"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/server"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// Token is accepted by the simulated upstream of every Stack.
const Token = "MIIEtestTOKEN-0123456789abcdef"

// Stack is a running buildlogd in front of a simulated upstream.
type Stack struct {
	// Upstream is the simulated upstream; add logs and faults to it.
	Upstream *upstreamtest.Server
	// GRPCAddr is the gRPC listen address, RESTURL the REST mirror's base
	// URL ("http://127.0.0.1:port").
	GRPCAddr string
	RESTURL  string
	// AdminURL is the admin endpoints' base URL ("http://127.0.0.1:port"):
	// /healthz, /readyz, /metrics and /debug/pprof/.
	AdminURL string
	// HTTP is a client for the REST mirror; Conn a gRPC connection and
	// Client a BuildLogService client on it.
	HTTP   *http.Client
	Conn   *grpc.ClientConn
	Client buildlogv1.BuildLogServiceClient

	cancel context.CancelFunc
	served chan error
}

// Start starts a stack with the given chunk size (0 for the default) and
// stops it when the test ends, failing the test if the server does not shut
// down cleanly.
func Start(t testing.TB, chunkSize int) *Stack {
	t.Helper()
	return StartWith(t, func(c *server.Config) {
		if chunkSize > 0 {
			c.ChunkSize = chunkSize
		}
	})
}

// StartWith starts a stack whose configuration edit may change, and stops
// it when the test ends, as [Start] does. The listen addresses (admin
// included, with pprof on), upstream and logger are set before edit sees
// the configuration.
func StartWith(t testing.TB, edit func(*server.Config)) *Stack {
	t.Helper()
	up := upstreamtest.NewServer()
	up.AddToken(Token)
	cfg := server.DefaultConfig()
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.AdminAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Upstream, cfg.Logger, cfg.Pprof = up.URL, slog.New(slog.DiscardHandler), true
	edit(&cfg)
	srv, err := server.New(cfg)
	if err != nil {
		up.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Stack{
		Upstream: up,
		GRPCAddr: srv.GRPCAddr().String(),
		RESTURL:  "http://" + srv.HTTPAddr().String(),
		HTTP:     &http.Client{Transport: &http.Transport{}},
		cancel:   cancel,
		served:   make(chan error, 1),
	}
	if a := srv.AdminAddr(); a != nil {
		s.AdminURL = "http://" + a.String()
	}
	go func() { s.served <- srv.Serve(ctx) }()
	s.Conn, err = grpc.NewClient(s.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	s.Client = buildlogv1.NewBuildLogServiceClient(s.Conn)
	t.Cleanup(func() {
		s.Conn.Close()
		s.HTTP.CloseIdleConnections()
		s.Shutdown()
		if err := <-s.served; err != nil {
			t.Errorf("Serve() = %v, want nil after shutdown", err)
		}
		up.Close()
	})
	return s
}

// Shutdown begins the server's graceful shutdown and returns at once.
func (s *Stack) Shutdown() { s.cancel() }

// Get fetches a REST path, with the X-Auth-Token header when token is not
// empty and any further header pairs, and reads the whole body; readErr is
// the error that ended the body, nil for a complete one.
func (s *Stack) Get(t testing.TB, path, token string, header ...string) (resp *http.Response, body []byte, readErr error) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, s.RESTURL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("X-Auth-Token", token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	resp, err = s.HTTP.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, readErr = io.ReadAll(resp.Body)
	return resp, body, readErr
}

// Download runs a gRPC download with [Token] and returns the data received
// and the error that ended the stream (nil for a complete one).
func (s *Stack) Download(req *buildlogv1.DownloadTaskLogRequest) ([]byte, error) {
	ctx := metadata.AppendToOutgoingContext(context.Background(), api.TokenMetadataKey, Token)
	stream, err := s.Client.DownloadTaskLog(ctx, req)
	if err != nil {
		return nil, err
	}
	var data []byte
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			return data, nil
		}
		if err != nil {
			return data, err
		}
		data = append(data, msg.GetData()...)
	}
}
