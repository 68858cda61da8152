package main

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/buildlog/buildlog/server"
	"github.com/buildlog/buildlog/server/servertest"
	"github.com/buildlog/buildlog/upstream"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

const (
	cliAK, cliSK, cliProject = "AKCLITEST", "SK-cli-test-secret", "0123456789abcdef0123456789abcdef"
	cliBearer                = "cli-bearer-token-01"
	cliLog                   = "log over TLS\n"
)

// tlsServer is a buildlogd serving TLS (and mTLS when clientCA), holding
// AK/SK credentials for callers with a client certificate or cliBearer.
type tlsServer struct {
	addr     string
	dir      string
	ca       *servertest.CA // issues the server's and the clients' certificates
	caFile   string
	upstream *upstreamtest.Server
}

func startTLSServer(t *testing.T, mtls bool) *tlsServer {
	t.Helper()
	up := upstreamtest.NewServer()
	t.Cleanup(up.Close)
	up.AddToken(servertest.Token)
	up.AddAKSK(cliAK, cliSK)
	up.AddLog(recordID, "stage1", upstreamtest.Log{Content: []byte(cliLog)})
	s := &tlsServer{dir: t.TempDir(), ca: servertest.NewCA(t, "cli CA"), upstream: up}
	s.caFile = servertest.WriteFile(t, s.dir, "ca.crt", s.ca.PEM)
	certPEM, keyPEM, _ := s.ca.Issue(t, "buildlogd", true)
	signer, err := upstream.NewAKSKSigner(cliAK, cliSK, cliProject)
	if err != nil {
		t.Fatal(err)
	}
	cfg := server.DefaultConfig()
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.AdminAddr, cfg.Upstream, cfg.Logger = "127.0.0.1:0", "127.0.0.1:0", server.AdminOff, up.URL, slog.New(slog.DiscardHandler)
	cfg.TLSCertFile = servertest.WriteFile(t, s.dir, "tls.crt", certPEM)
	cfg.TLSKeyFile = servertest.WriteFile(t, s.dir, "tls.key", keyPEM)
	cfg.CallerTokensFile = servertest.WriteFile(t, s.dir, "callers", []byte(cliBearer+"\n"))
	cfg.Credentials = signer
	if mtls {
		cfg.TLSClientCAFile = s.caFile
	}
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.addr = srv.GRPCAddr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve() = %v", err)
		}
	})
	return s
}

// clientFiles writes a client certificate and key issued by s's CA.
func (s *tlsServer) clientFiles(t *testing.T) (cert, key string) {
	t.Helper()
	certPEM, keyPEM, _ := s.ca.Issue(t, "cli", false)
	return servertest.WriteFile(t, s.dir, "client.crt", certPEM), servertest.WriteFile(t, s.dir, "client.key", keyPEM)
}

func TestDownloadOverTLS(t *testing.T) {
	t.Parallel()
	tlsOnly := startTLSServer(t, false)
	mtls := startTLSServer(t, true)
	cert, key := mtls.clientFiles(t)
	args := func(s *tlsServer, extra ...string) []string {
		return append([]string{"download", "--addr", s.addr, "--record-id", recordID, "--task-name", "stage1"}, extra...)
	}
	tests := []struct {
		name     string
		vars     map[string]string
		args     []string
		wantCode int
		wantErr  string // in stderr
	}{
		{"TLS with the caller's token", map[string]string{"BUILDLOG_TOKEN": servertest.Token}, args(tlsOnly, "--tls-ca", tlsOnly.caFile), 0, ""},
		{"TLS with a listed bearer, no token", map[string]string{"BUILDLOG_BEARER": cliBearer}, args(tlsOnly, "--tls-ca", tlsOnly.caFile), 0, ""},
		{"TLS with an unknown bearer", map[string]string{"BUILDLOG_BEARER": "not-listed"}, args(tlsOnly, "--tls-ca", tlsOnly.caFile), 1, "UNAUTHENTICATED"},
		{"TLS without a token or bearer", nil, args(tlsOnly, "--tls-ca", tlsOnly.caFile), 2, "--token or BUILDLOG_TOKEN"},
		{"system roots do not know the server's CA", map[string]string{"BUILDLOG_TOKEN": servertest.Token}, args(tlsOnly, "--tls"), 1, "UNAVAILABLE"},
		{"plaintext to a TLS server", map[string]string{"BUILDLOG_TOKEN": servertest.Token}, args(tlsOnly), 1, "UNAVAILABLE"},
		{"mTLS with a client certificate, no token", nil, args(mtls, "--tls-ca", mtls.caFile, "--tls-cert", cert, "--tls-key", key), 0, ""},
		{"mTLS without a client certificate", map[string]string{"BUILDLOG_TOKEN": servertest.Token}, args(mtls, "--tls-ca", mtls.caFile), 1, "UNAVAILABLE"},
		{"certificate without key", nil, args(mtls, "--tls-cert", cert), 2, "--tls-key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, out, errOut := runCLI(t, tt.vars, false, tt.args...)
			if code != tt.wantCode || (tt.wantCode == 0 && out != cliLog) || !strings.Contains(errOut, tt.wantErr) {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit %d, stderr mentioning %q", code, out, errOut, tt.wantCode, tt.wantErr)
			}
			for _, secret := range []string{cliBearer, servertest.Token, cliSK} {
				if strings.Contains(errOut, secret) {
					t.Errorf("stderr %q contains a secret", errOut)
				}
			}
		})
	}
}
