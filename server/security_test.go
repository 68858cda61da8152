package server_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/buildlog/buildlog/api"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/internal/syncbuf"
	"github.com/buildlog/buildlog/server"
	"github.com/buildlog/buildlog/server/servertest"
	"github.com/buildlog/buildlog/upstream"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// Server-held credentials of the secure stacks.
const (
	accessKey    = "AKSECURETEST0001"
	secretKey    = "SK-secure-test-0123456789abcdef"
	projectID    = "fedcba9876543210fedcba9876543210"
	iamPassword  = "iam-Passw0rd!secure"
	callerBearer = "bearer-caller-token-0123456789"
	otherBearer  = "bearer-not-listed-9876543210"
	logContent   = "secure log line\n"
)

// secureStack is a buildlogd with security settings in front of a
// simulated upstream that knows the server's AK/SK and IAM user.
type secureStack struct {
	up         *upstreamtest.Server
	grpcAddr   string
	httpAddr   string
	dir        string // holds the TLS and token files
	serverCA   *servertest.CA
	clientCA   *servertest.CA
	tokensFile string
	adminAddr  string // serves /metrics
	logs       *syncbuf.Buffer
}

type stackOptions struct {
	tls, mtls bool
	tokens    bool                                               // a caller tokens file listing callerBearer
	creds     func(up *upstreamtest.Server) upstream.Credentials // nil: no server credentials
}

func akskCreds(t *testing.T, sk string) func(*upstreamtest.Server) upstream.Credentials {
	return func(*upstreamtest.Server) upstream.Credentials {
		s, err := upstream.NewAKSKSigner(accessKey, sk, projectID)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
}

func iamCreds(t *testing.T) func(*upstreamtest.Server) upstream.Credentials {
	return iamCredsWith(t, iamPassword)
}

func iamCredsWith(t *testing.T, password string) func(*upstreamtest.Server) upstream.Credentials {
	return func(up *upstreamtest.Server) upstream.Credentials {
		s, err := upstream.NewIAMTokenSource(upstream.IAMConfig{
			Endpoint: up.URL, User: "bot", Domain: "acme", Password: password, ProjectID: projectID,
		})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
}

func startSecure(t *testing.T, o stackOptions) *secureStack {
	t.Helper()
	s := &secureStack{up: upstreamtest.NewServer(), dir: t.TempDir(), logs: &syncbuf.Buffer{}}
	t.Cleanup(s.up.Close)
	s.up.AddToken(token)
	s.up.AddAKSK(accessKey, secretKey)
	s.up.AddIAMUser(upstreamtest.IAMUser{Domain: "acme", Name: "bot", Password: iamPassword, ProjectID: projectID})
	s.up.AddLog(recordID, "stage1", upstreamtest.Log{Content: []byte(logContent)})
	cfg := server.DefaultConfig()
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.AdminAddr, cfg.Upstream = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", s.up.URL
	cfg.Logger = slog.New(slog.NewTextHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if o.tls || o.mtls {
		s.serverCA = servertest.NewCA(t, "server CA")
		certPEM, keyPEM, _ := s.serverCA.Issue(t, "buildlog", true)
		cfg.TLSCertFile = servertest.WriteFile(t, s.dir, "tls.crt", certPEM)
		cfg.TLSKeyFile = servertest.WriteFile(t, s.dir, "tls.key", keyPEM)
	}
	if o.mtls {
		s.clientCA = servertest.NewCA(t, "client CA")
		cfg.TLSClientCAFile = servertest.WriteFile(t, s.dir, "client-ca.crt", s.clientCA.PEM)
	}
	if o.tokens {
		s.tokensFile = servertest.WriteFile(t, s.dir, "callers", []byte("# callers allowed the server's credentials\n\n"+callerBearer+"\n"))
		cfg.CallerTokensFile = s.tokensFile
	}
	if o.creds != nil {
		cfg.Credentials = o.creds(s.up)
	}
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.grpcAddr, s.httpAddr, s.adminAddr = srv.GRPCAddr().String(), srv.HTTPAddr().String(), srv.AdminAddr().String()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve() = %v", err)
		}
	})
	return s
}

// clientTLS returns a client configuration trusting the stack's server CA,
// presenting certs.
func (s *secureStack) clientTLS(certs ...tls.Certificate) *tls.Config {
	return &tls.Config{RootCAs: s.serverCA.Pool(), Certificates: certs, MinVersion: tls.VersionTLS12}
}

// grpcGet downloads the test log over gRPC with the given transport
// credentials and metadata pairs.
func (s *secureStack) grpcGet(t *testing.T, tc credentials.TransportCredentials, md ...string) (string, error) {
	t.Helper()
	conn, err := grpc.NewClient(s.grpcAddr, grpc.WithTransportCredentials(tc))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(context.Background(), md...)
	stream, err := buildlogv1.NewBuildLogServiceClient(conn).DownloadTaskLog(ctx,
		&buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"})
	if err != nil {
		return "", err
	}
	var data []byte
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			return string(data), nil
		}
		if err != nil {
			return string(data), err
		}
		data = append(data, msg.GetData()...)
	}
}

// restGet fetches the test log over REST with client, adding header pairs.
func (s *secureStack) restGet(t *testing.T, client *http.Client, scheme string, header ...string) (*http.Response, string, error) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, scheme+"://"+s.httpAddr+"/v4/"+recordID+"/task-log?task_name=stage1", nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, string(body), err
}

func httpClient(t *testing.T, cfg *tls.Config, h2 bool) *http.Client {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: h2}
	if cfg != nil && !h2 {
		cfg.NextProtos = []string{"http/1.1"}
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func TestTLSListeners(t *testing.T) {
	t.Parallel()
	s := startSecure(t, stackOptions{tls: true})

	got, err := s.grpcGet(t, credentials.NewTLS(s.clientTLS()), api.TokenMetadataKey, token)
	if err != nil || got != logContent {
		t.Errorf("gRPC over TLS = %q, %v; want the log", got, err)
	}
	for _, h2 := range []bool{false, true} {
		resp, body, err := s.restGet(t, httpClient(t, s.clientTLS(), h2), "https", "X-Auth-Token", token)
		if err != nil || resp.StatusCode != http.StatusOK || body != logContent {
			t.Fatalf("REST over TLS (h2 %v): %v, %q, %v; want 200 and the log", h2, resp, body, err)
		}
		if wantMajor := map[bool]int{false: 1, true: 2}[h2]; resp.ProtoMajor != wantMajor {
			t.Errorf("REST over TLS: protocol %s, want HTTP/%d", resp.Proto, wantMajor)
		}
	}
	requests := s.up.RequestCount()

	// Plaintext to the TLS ports fails, and reaches nothing.
	if _, err := s.grpcGet(t, insecure.NewCredentials(), api.TokenMetadataKey, token); status.Code(err) != codes.Unavailable {
		t.Errorf("plaintext gRPC to the TLS port: %v, want UNAVAILABLE", err)
	}
	if resp, _, err := s.restGet(t, httpClient(t, nil, false), "http", "X-Auth-Token", token); err == nil && resp.StatusCode == http.StatusOK {
		t.Errorf("plain HTTP to the TLS port: %s, want a failure", resp.Status)
	}
	// A client that does not trust the server's CA refuses it.
	if _, err := s.grpcGet(t, credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12}), api.TokenMetadataKey, token); status.Code(err) != codes.Unavailable {
		t.Errorf("gRPC trusting other roots: %v, want UNAVAILABLE", err)
	}
	if got := s.up.RequestCount(); got != requests {
		t.Errorf("upstream requests went from %d to %d after refused connections", requests, got)
	}
}

// Both listeners offer the same AEAD-only suites: a TLS 1.2 client that
// offers only CBC with SHA-1 is refused, one offering AES-GCM is served.
func TestTLSListenersOfferOnlyAEADSuites(t *testing.T) {
	t.Parallel()
	s := startSecure(t, stackOptions{tls: true})
	handshake := func(addr string, suite uint16) error {
		cfg := s.clientTLS()
		cfg.MaxVersion, cfg.CipherSuites, cfg.NextProtos = tls.VersionTLS12, []uint16{suite}, []string{"h2"}
		conn, err := tls.Dial("tcp", addr, cfg)
		if err == nil {
			conn.Close()
		}
		return err
	}
	for name, addr := range map[string]string{"gRPC": s.grpcAddr, "REST": s.httpAddr} {
		if err := handshake(addr, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA); err == nil {
			t.Errorf("%s listener: a handshake offering only ECDHE-ECDSA-AES128-SHA succeeded", name)
		}
		if err := handshake(addr, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256); err != nil {
			t.Errorf("%s listener: a handshake offering ECDHE-ECDSA-AES128-GCM-SHA256 failed: %v", name, err)
		}
	}
}

func TestMTLSAcceptsOnlyClientsOfTheCA(t *testing.T) {
	t.Parallel()
	s := startSecure(t, stackOptions{mtls: true})
	rogue := servertest.NewCA(t, "rogue CA")
	tests := []struct {
		name   string
		certs  []tls.Certificate
		wantOK bool
	}{
		{"certificate from the client CA", []tls.Certificate{s.clientCA.ClientCert(t, "ci")}, true},
		{"no certificate", nil, false},
		{"certificate from another CA", []tls.Certificate{rogue.ClientCert(t, "intruder")}, false},
		{"server certificate of the server CA", []tls.Certificate{s.serverCA.ClientCert(t, "wrong CA")}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := s.grpcGet(t, credentials.NewTLS(s.clientTLS(tt.certs...)), api.TokenMetadataKey, token)
			if ok := err == nil && got == logContent; ok != tt.wantOK {
				t.Errorf("gRPC: %q, %v; want success %v", got, err, tt.wantOK)
			}
			for _, h2 := range []bool{false, true} {
				resp, body, err := s.restGet(t, httpClient(t, s.clientTLS(tt.certs...), h2), "https", "X-Auth-Token", token)
				if ok := err == nil && resp.StatusCode == http.StatusOK && body == logContent; ok != tt.wantOK {
					t.Errorf("REST (h2 %v): %v, %v; want success %v", h2, resp, err, tt.wantOK)
				}
			}
		})
	}
}

// presentedSerial returns the serial number of the certificate the server
// presents in a new handshake.
func presentedSerial(t *testing.T, addr string, roots *x509.CertPool) string {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("TLS handshake with %s: %v", addr, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

func TestCertificatesReloadWithoutRestart(t *testing.T) {
	t.Parallel()
	s := startSecure(t, stackOptions{mtls: true})
	roots := s.serverCA.Pool()
	before := presentedSerial(t, s.grpcAddr, roots)

	// A new certificate and key, written in place: the next handshake on
	// either port presents it.
	certPEM, keyPEM, serialNumber := s.serverCA.Issue(t, "buildlog rotated", true)
	servertest.WriteFile(t, s.dir, "tls.crt", certPEM)
	servertest.WriteFile(t, s.dir, "tls.key", keyPEM)
	for _, addr := range []string{s.grpcAddr, s.httpAddr} {
		if got := presentedSerial(t, addr, roots); got != serialNumber.String() || got == before {
			t.Errorf("%s presents serial %s after rotation, want %s (was %s)", addr, got, serialNumber, before)
		}
	}

	// A half-written rotation (a key that does not match) keeps the last
	// good pair, and says so in the log.
	_, otherKey, _ := s.serverCA.Issue(t, "unrelated", true)
	servertest.WriteFile(t, s.dir, "tls.key", otherKey)
	if got := presentedSerial(t, s.grpcAddr, roots); got != serialNumber.String() {
		t.Errorf("after a mismatched key: serial %s, want the last good %s", got, serialNumber)
	}
	if !strings.Contains(s.logs.String(), "keeping the previous certificate") {
		t.Errorf("logs %q: want a warning about the unusable TLS files", s.logs.String())
	}
	servertest.WriteFile(t, s.dir, "tls.key", keyPEM)

	// A new client CA: its clients get in, the old CA's no longer do.
	oldClient := s.clientCA.ClientCert(t, "old")
	newCA := servertest.NewCA(t, "client CA 2")
	newClient := newCA.ClientCert(t, "new")
	get := func(c tls.Certificate) bool {
		_, err := s.grpcGet(t, credentials.NewTLS(s.clientTLS(c)), api.TokenMetadataKey, token)
		return err == nil
	}
	if !get(oldClient) || get(newClient) {
		t.Fatal("before the CA change: want the old CA's client accepted and the new one's refused")
	}
	servertest.WriteFile(t, s.dir, "client-ca.crt", newCA.PEM)
	if get(oldClient) || !get(newClient) {
		t.Error("after the CA change: want the new CA's client accepted and the old one's refused")
	}
}

// callerCase is one way a caller can present itself.
type callerCase struct {
	name string
	// grpcMD and restHeader are what the caller sends.
	grpcMD     []string
	restHeader []string
	// wantServerCreds: the download succeeds with the server's credentials;
	// wantCallerToken: it succeeds with the caller's own token; otherwise it
	// is refused as unauthenticated before any upstream request.
	wantServerCreds, wantCallerToken bool
}

var callerCases = []callerCase{
	{name: "anonymous without a token"},
	{name: "listed bearer token", grpcMD: []string{"authorization", "Bearer " + callerBearer},
		restHeader: []string{"Authorization", "Bearer " + callerBearer}, wantServerCreds: true},
	{name: "bearer token not listed", grpcMD: []string{"authorization", "Bearer " + otherBearer},
		restHeader: []string{"Authorization", "Bearer " + otherBearer}},
	{name: "listed token under another scheme", grpcMD: []string{"authorization", "Basic " + callerBearer},
		restHeader: []string{"Authorization", "Basic " + callerBearer}},
	{name: "spoofed in-process marker", grpcMD: []string{"x-buildlog-authenticated-caller", "yes"},
		restHeader: []string{"Grpc-Metadata-X-Buildlog-Authenticated-Caller", "yes"}},
	{name: "spoofed marker and a token not listed",
		grpcMD:     []string{"x-buildlog-authenticated-caller", "yes", "authorization", "Bearer " + otherBearer},
		restHeader: []string{"grpc-metadata-x-buildlog-authenticated-caller", "yes", "Authorization", "Bearer " + otherBearer}},
	{name: "own token wins over a listed bearer",
		grpcMD:          []string{api.TokenMetadataKey, token, "authorization", "Bearer " + callerBearer},
		restHeader:      []string{"X-Auth-Token", token, "Authorization", "Bearer " + callerBearer},
		wantCallerToken: true},
	{name: "own token without authentication", grpcMD: []string{api.TokenMetadataKey, token},
		restHeader: []string{"X-Auth-Token", token}, wantCallerToken: true},
}

// checkCaller runs one caller case on both paths.
func checkCaller(t *testing.T, s *secureStack, tc credentials.TransportCredentials, client *http.Client, scheme string, c callerCase) {
	t.Helper()
	check := func(path string, ok bool, refusedRight bool, before int) {
		t.Helper()
		reqs := s.up.Requests()
		switch {
		case c.wantServerCreds || c.wantCallerToken:
			if !ok {
				t.Errorf("%s: refused, want the log", path)
				return
			}
			h := reqs[len(reqs)-1].Header
			signed := strings.HasPrefix(h.Get("Authorization"), "SDK-HMAC-SHA256 ") || (h.Get("X-Auth-Token") != "" && h.Get("X-Auth-Token") != token)
			if c.wantServerCreds && !signed {
				t.Errorf("%s: upstream headers %v, want the server's credentials", path, h)
			}
			if c.wantCallerToken && (h.Get("X-Auth-Token") != token || h.Get("Authorization") != "") {
				t.Errorf("%s: upstream headers %v, want the caller's token only", path, h)
			}
		default:
			if !refusedRight {
				t.Errorf("%s: want UNAUTHENTICATED / 401", path)
			}
			if len(reqs) != before {
				t.Errorf("%s: the upstream received %d requests for a refused caller", path, len(reqs)-before)
			}
		}
	}
	before := len(s.up.Requests())
	got, err := s.grpcGet(t, tc, c.grpcMD...)
	check("gRPC", err == nil && got == logContent, status.Code(err) == codes.Unauthenticated, before)

	before = len(s.up.Requests())
	resp, body, err := s.restGet(t, client, scheme, c.restHeader...)
	if err != nil {
		t.Fatalf("REST: %v", err)
	}
	check("REST", resp.StatusCode == http.StatusOK && body == logContent, resp.StatusCode == http.StatusUnauthorized, before)
}

func TestServerCredentialsOnlyForAuthenticatedCallers(t *testing.T) {
	t.Parallel()
	for _, creds := range []struct {
		name string
		f    func(*upstreamtest.Server) upstream.Credentials
	}{{"AK/SK", akskCreds(t, secretKey)}, {"IAM token", iamCreds(t)}} {
		t.Run(creds.name, func(t *testing.T) {
			t.Parallel()
			s := startSecure(t, stackOptions{tokens: true, creds: creds.f})
			for _, c := range callerCases {
				t.Run(c.name, func(t *testing.T) {
					checkCaller(t, s, insecure.NewCredentials(), httpClient(t, nil, false), "http", c)
				})
			}
			checkNoSecrets(t, s)
		})
	}
}

// With mTLS every caller is authenticated by its certificate, and the same
// rules hold over TLS.
func TestServerCredentialsForClientCertificates(t *testing.T) {
	t.Parallel()
	s := startSecure(t, stackOptions{mtls: true, creds: akskCreds(t, secretKey)})
	cert := s.clientCA.ClientCert(t, "ci")
	tc := credentials.NewTLS(s.clientTLS(cert))
	for _, h2 := range []bool{false, true} {
		checkCaller(t, s, tc, httpClient(t, s.clientTLS(cert), h2), "https",
			callerCase{name: "client certificate, no token", wantServerCreds: true})
		checkCaller(t, s, tc, httpClient(t, s.clientTLS(cert), h2), "https",
			callerCase{name: "client certificate and own token", grpcMD: []string{api.TokenMetadataKey, token},
				restHeader: []string{"X-Auth-Token", token}, wantCallerToken: true})
	}
	checkNoSecrets(t, s)
}

// Without server credentials a listed bearer token changes nothing: the
// caller still needs its own token.
func TestBearerWithoutServerCredentials(t *testing.T) {
	t.Parallel()
	s := startSecure(t, stackOptions{tokens: true})
	checkCaller(t, s, insecure.NewCredentials(), httpClient(t, nil, false), "http", callerCase{
		name: "listed bearer", grpcMD: []string{"authorization", "Bearer " + callerBearer},
		restHeader: []string{"Authorization", "Bearer " + callerBearer}})
}

func TestCallerTokensFileReloads(t *testing.T) {
	t.Parallel()
	s := startSecure(t, stackOptions{tokens: true, creds: akskCreds(t, secretKey)})
	newBearer := "bearer-added-later-555"
	bearerGet := func(b string) error {
		_, err := s.grpcGet(t, insecure.NewCredentials(), "authorization", "Bearer "+b)
		return err
	}
	if err := bearerGet(callerBearer); err != nil {
		t.Fatalf("listed bearer: %v", err)
	}
	// Replaced by rename, as a secret volume update does.
	tmp := servertest.WriteFile(t, s.dir, "callers.new", []byte(newBearer+"\n"))
	if err := os.Rename(tmp, s.tokensFile); err != nil {
		t.Fatal(err)
	}
	if err := bearerGet(callerBearer); status.Code(err) != codes.Unauthenticated {
		t.Errorf("removed bearer: %v, want UNAUTHENTICATED", err)
	}
	if err := bearerGet(newBearer); err != nil {
		t.Errorf("added bearer: %v, want success", err)
	}
	// A file that disappears accepts nobody.
	if err := os.Remove(s.tokensFile); err != nil {
		t.Fatal(err)
	}
	if err := bearerGet(newBearer); status.Code(err) != codes.Unauthenticated {
		t.Errorf("bearer after the file was removed: %v, want UNAUTHENTICATED", err)
	}
}

func TestServerCredentialFailures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		creds      func(*testing.T) func(*upstreamtest.Server) upstream.Credentials
		iamOutage  bool
		wantCode   codes.Code
		wantStatus int
	}{
		{"wrong secret key", func(t *testing.T) func(*upstreamtest.Server) upstream.Credentials {
			return akskCreds(t, "SK-wrong-key")
		},
			false, codes.Unauthenticated, http.StatusUnauthorized},
		{"IAM outage", iamCreds, true, codes.Unavailable, http.StatusServiceUnavailable},
		{"IAM refuses the password", func(t *testing.T) func(*upstreamtest.Server) upstream.Credentials {
			return iamCredsWith(t, "wrong-"+iamPassword)
		},
			false, codes.Internal, http.StatusInternalServerError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := startSecure(t, stackOptions{tokens: true, creds: tt.creds(t)})
			if tt.iamOutage {
				s.up.FailIAM(http.StatusServiceUnavailable)
			}
			_, err := s.grpcGet(t, insecure.NewCredentials(), "authorization", "Bearer "+callerBearer)
			if status.Code(err) != tt.wantCode {
				t.Errorf("gRPC: %v, want %s", err, tt.wantCode)
			}
			resp, body, err := s.restGet(t, httpClient(t, nil, false), "http", "Authorization", "Bearer "+callerBearer)
			if err != nil || resp.StatusCode != tt.wantStatus {
				t.Errorf("REST: %v, %v; want HTTP %d", resp, err, tt.wantStatus)
			}
			for _, secret := range []string{secretKey, "SK-wrong-key", iamPassword, callerBearer} {
				if strings.Contains(body, secret) || (err != nil && strings.Contains(err.Error(), secret)) {
					t.Errorf("error %q / body %q contains a credential", err, body)
				}
			}
			checkNoSecrets(t, s)
		})
	}
}

// checkNoSecrets fails if the server's logs or metrics contain a
// credential: the secret key, the IAM password, a caller bearer token or an
// IAM token the fake IAM issued.
func checkNoSecrets(t *testing.T, s *secureStack) {
	t.Helper()
	resp, err := http.Get("http://" + s.adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || !bytes.Contains(metrics, []byte("buildlog")) {
		t.Fatalf("GET /metrics: %d, %v; want 200 and buildlog's metrics", resp.StatusCode, err)
	}
	logs := s.logs.String() + string(metrics)
	secrets := []string{secretKey, iamPassword, callerBearer, otherBearer, token}
	for _, r := range s.up.Requests() {
		if v := r.Header.Get("X-Auth-Token"); v != "" {
			secrets = append(secrets, v)
		}
	}
	for _, secret := range secrets {
		if strings.Contains(logs, secret) {
			t.Errorf("the server's logs or metrics contain a credential (%d bytes long)", len(secret))
		}
	}
}

// With server credentials at stake, hostile REST input from an
// authenticated caller is refused before any upstream request, so the
// server's signature is never put on a request the caller shaped.
func TestHostileRESTInputNeverReachesUpstream(t *testing.T) {
	t.Parallel()
	s := startSecure(t, stackOptions{tokens: true, creds: akskCreds(t, secretKey)})
	auth := "Authorization: Bearer " + callerBearer + "\r\n"
	tests := []struct {
		name string
		raw  string // the request as sent on the wire
		// harmless: the request may reach the upstream, but nothing is
		// injected into it. net/http reads a bare LF as a line end (RFC 9112
		// allows it), so the "injected" line is a header of its own at
		// buildlog, which forwards only the token; a CR/LF in task_name is
		// data, sent percent-encoded in the query.
		harmless bool
	}{
		{"traversal in record_id", "GET /v4/../../v3/projects/task-log?task_name=stage1 HTTP/1.1\r\nHost: x\r\n" + auth + "\r\n", false},
		{"encoded traversal in record_id", "GET /v4/..%2F..%2Fv3%2Fprojects/task-log?task_name=stage1 HTTP/1.1\r\nHost: x\r\n" + auth + "\r\n", false},
		{"double-encoded slash", "GET /v4/" + recordID[:30] + "%252F..%252F/task-log?task_name=stage1 HTTP/1.1\r\nHost: x\r\n" + auth + "\r\n", false},
		{"CR in a header value", "GET /v4/" + recordID + "/task-log?task_name=stage1 HTTP/1.1\r\nHost: x\r\n" + auth + "X-Auth-Token: a\rInjected: b\r\n\r\n", false},
		{"LF in a header value", "GET /v4/" + recordID + "/task-log?task_name=stage1 HTTP/1.1\r\nHost: x\r\n" + auth + "X-Auth-Token: a\nInjected: b\r\n\r\n", true},
		{"folded header", "GET /v4/" + recordID + "/task-log?task_name=stage1 HTTP/1.1\r\nHost: x\r\n" + auth + "X-Auth-Token: a\r\n Injected: b\r\n\r\n", false},
		{"CRLF encoded in task_name", "GET /v4/" + recordID + "/task-log?task_name=stage1%0D%0AInjected:%20b HTTP/1.1\r\nHost: x\r\n" + auth + "\r\n", true},
		{"CRLF encoded in the path", "GET /v4/" + recordID + "%0D%0AX-Injected:%20b/task-log?task_name=stage1 HTTP/1.1\r\nHost: x\r\n" + auth + "\r\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := s.up.RequestCount()
			conn, err := net.Dial("tcp", s.httpAddr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := io.WriteString(conn, tt.raw); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatalf("read the answer: %v", err)
			}
			resp.Body.Close()
			if tt.harmless {
				for _, r := range s.up.Requests()[before:] {
					if r.Header.Get("Injected") != "" || len(r.Query["task_name"]) != 1 {
						t.Errorf("upstream request %v %v: want no Injected header and one task_name", r.Header, r.Query)
					}
				}
				return
			}
			if resp.StatusCode < 400 || resp.StatusCode >= 500 {
				t.Errorf("status %s, want a 4xx refusal", resp.Status)
			}
			if got := s.up.RequestCount(); got != before {
				t.Errorf("the upstream received %d requests", got-before)
			}
		})
	}
	before := s.up.RequestCount()
	// The same record id over gRPC.
	for _, id := range []string{"../../v3/projects", "..%2F..%2Fv3", "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b%2F..", "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c\r\n"} {
		conn, err := grpc.NewClient(s.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+callerBearer)
		stream, err := buildlogv1.NewBuildLogServiceClient(conn).DownloadTaskLog(ctx, &buildlogv1.DownloadTaskLogRequest{RecordId: id, TaskName: "stage1"})
		if err == nil {
			_, err = stream.Recv()
		}
		conn.Close()
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("record_id %q: %v, want INVALID_ARGUMENT", id, err)
		}
	}
	if got := s.up.RequestCount(); got != before {
		t.Errorf("the upstream received %d requests for hostile gRPC record ids", got-before)
	}
}

func TestSecurityConfigErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	signer, _ := upstream.NewAKSKSigner(accessKey, secretKey, projectID)
	ca := servertest.NewCA(t, "ca")
	certPEM, keyPEM, _ := ca.Issue(t, "s", true)
	_, otherKey, _ := ca.Issue(t, "other", true)
	cert := servertest.WriteFile(t, dir, "c.pem", certPEM)
	key := servertest.WriteFile(t, dir, "k.pem", keyPEM)
	tests := []struct {
		name string
		edit func(*server.Config)
	}{
		{"server credentials for anyone", func(c *server.Config) { c.Credentials = signer }},
		{"client CA without a certificate", func(c *server.Config) { c.TLSClientCAFile = servertest.WriteFile(t, dir, "ca.pem", ca.PEM) }},
		{"certificate without a key", func(c *server.Config) { c.TLSCertFile = cert }},
		{"key that does not match", func(c *server.Config) {
			c.TLSCertFile, c.TLSKeyFile = cert, servertest.WriteFile(t, dir, "o.pem", otherKey)
		}},
		{"missing certificate file", func(c *server.Config) { c.TLSCertFile, c.TLSKeyFile = dir+"/none.pem", key }},
		{"client CA file without certificates", func(c *server.Config) {
			c.TLSCertFile, c.TLSKeyFile, c.TLSClientCAFile = cert, key, servertest.WriteFile(t, dir, "empty.pem", []byte("nothing"))
		}},
		{"missing caller tokens file", func(c *server.Config) { c.CallerTokensFile, c.Credentials = dir+"/none", signer }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := server.DefaultConfig()
			cfg.Upstream, cfg.GRPCAddr, cfg.HTTPAddr, cfg.AdminAddr = "http://127.0.0.1:1", "127.0.0.1:0", "127.0.0.1:0", server.AdminOff
			cfg.Logger = slog.New(slog.DiscardHandler)
			tt.edit(&cfg)
			if _, err := server.New(cfg); err == nil {
				t.Error("New succeeded, want an error")
			} else if strings.Contains(err.Error(), secretKey) || strings.Contains(err.Error(), "PRIVATE KEY") {
				t.Errorf("error %q contains key material", err)
			}
		})
	}
}

// TestNewFailureLeavesNothingRunning checks that when New fails after it
// has built the servers (a port in use), none of their goroutines, such
// as stream workers, lives on.
//
// Not parallel: it compares the goroutines of the whole process.
func TestNewFailureLeavesNothingRunning(t *testing.T) {
	used, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer used.Close()
	for _, edit := range map[string]func(*server.Config){
		"gRPC port in use":  func(cfg *server.Config) { cfg.GRPCAddr = used.Addr().String() },
		"admin port in use": func(cfg *server.Config) { cfg.AdminAddr = used.Addr().String() },
	} {
		before := goleak.IgnoreCurrent()
		cfg := server.DefaultConfig()
		cfg.Upstream, cfg.GRPCAddr, cfg.HTTPAddr, cfg.AdminAddr, cfg.Logger = "http://127.0.0.1:1", "127.0.0.1:0", "127.0.0.1:0", server.AdminOff, slog.New(slog.DiscardHandler)
		edit(&cfg)
		if _, err := server.New(cfg); err == nil {
			t.Fatal("New succeeded on a port in use")
		}
		goleak.VerifyNone(t, before)
	}
}
