package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/buildlog/buildlog/service"
	"github.com/buildlog/buildlog/upstream"
)

// Caller authentication, for server-held credentials.
//
// A caller that sends no token may use the server's credentials only when
// it is authenticated to buildlog: a client certificate verified against
// Config.TLSClientCAFile, or "authorization: Bearer T" with T listed in
// Config.CallerTokensFile. The gRPC interceptor decides this for gRPC calls
// from the connection's TLS state and the request metadata, and marks the
// context with service.WithAuthenticatedCaller.
//
// REST calls reach the service through the in-process server (inproc.go),
// whose peer is the gateway, not the caller: the REST handler authenticates
// the HTTP request (its TLS client certificate, its Authorization header)
// and passes the result as a metadata value, callerMarkerKey = a random
// secret made at start. The interceptor believes that value only on calls
// the in-process server made (their peer's AuthInfo is inprocAuthInfo,
// which no network connection can get: the in-process server listens on
// none); grpc-gateway maps no HTTP header to that key, and a forged one
// would still need the secret. On network connections the key means
// nothing.

// callerMarkerKey is the metadata key by which the REST mirror tells the
// gRPC server, over the in-process channel, that it authenticated the HTTP
// caller.
const callerMarkerKey = "x-buildlog-authenticated-caller"

// callerAuth authenticates callers that send no token.
type callerAuth struct {
	mtls   bool       // client certificates are required and verified
	tokens *tokenFile // nil without a caller tokens file
	marker string     // the in-process marker's secret value
}

func newCallerAuth(mtls bool, tokensFile string, logger *slog.Logger) (*callerAuth, error) {
	var secret [32]byte
	_, _ = rand.Read(secret[:]) // never fails (crypto/rand)
	a := &callerAuth{mtls: mtls, marker: hex.EncodeToString(secret[:])}
	if tokensFile != "" {
		a.tokens = &tokenFile{path: tokensFile, logger: logger}
		if _, err := a.tokens.load(); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// bearer reports whether values (the Authorization header or metadata)
// hold exactly one "Bearer T" with T a listed caller token.
func (a *callerAuth) bearer(values []string) bool {
	if a.tokens == nil || len(values) != 1 {
		return false
	}
	scheme, token, ok := strings.Cut(values[0], " ")
	return ok && strings.EqualFold(scheme, "Bearer") && a.tokens.contains(strings.TrimSpace(token))
}

// grpcCaller reports whether the caller of a gRPC call is authenticated.
func (a *callerAuth) grpcCaller(ctx context.Context) bool {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return false
	}
	if _, inproc := p.AuthInfo.(inprocAuthInfo); inproc {
		v := metadata.ValueFromIncomingContext(ctx, callerMarkerKey)
		return len(v) == 1 && subtle.ConstantTimeCompare([]byte(v[0]), []byte(a.marker)) == 1
	}
	if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && a.mtls && len(ti.State.VerifiedChains) > 0 {
		return true
	}
	return a.bearer(metadata.ValueFromIncomingContext(ctx, "authorization"))
}

// streamInterceptor marks the context of authenticated callers' calls.
func (a *callerAuth) streamInterceptor(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if a.grpcCaller(ss.Context()) {
		ss = &markedStream{ServerStream: ss, ctx: service.WithAuthenticatedCaller(ss.Context())}
	}
	return handler(srv, ss)
}

type markedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *markedStream) Context() context.Context { return s.ctx }

// restMetadata is the REST mirror's metadata annotator: for an HTTP caller
// authenticated by its TLS client certificate or a listed bearer token, it
// adds the marker to the in-process call. grpc-gateway's header matcher
// maps no HTTP header to callerMarkerKey, so the caller cannot add it.
func (a *callerAuth) restMetadata(_ context.Context, r *http.Request) metadata.MD {
	verified := a.mtls && r.TLS != nil && len(r.TLS.VerifiedChains) > 0
	if verified || a.bearer(r.Header.Values("Authorization")) {
		return metadata.Pairs(callerMarkerKey, a.marker)
	}
	return nil
}

// tokenFile is a list of accepted bearer tokens, one a line (blank lines
// and lines starting with # are ignored), read again at each check so that
// edits take effect at once; it is parsed only when its content changed.
// Only SHA-256 digests are kept, of the tokens and of the whole file. When the file cannot be
// read, no token is accepted (fail closed) and the error is logged once.
type tokenFile struct {
	path   string
	logger *slog.Logger

	mu      sync.Mutex
	sum     [sha256.Size]byte // of the file's content, to tell when it changed
	digests map[[sha256.Size]byte]bool
	lastErr string
}

// load reads the file and returns the digests of its tokens. It holds the
// lock while it reads, so a slower reader of an older file cannot install
// it over a newer one (and accept a token just removed).
func (f *tokenFile) load() (map[[sha256.Size]byte]bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	content, err := readSmallFile(f.path)
	if err != nil {
		if msg := err.Error(); msg != f.lastErr {
			f.lastErr = msg
			f.logger.Warn("caller tokens file unreadable; accepting no bearer token", "error", msg)
		}
		return nil, fmt.Errorf("read caller tokens file: %w", err)
	}
	f.lastErr = ""
	if sum := sha256.Sum256(content); f.digests == nil || sum != f.sum {
		digests := map[[sha256.Size]byte]bool{}
		for line := range strings.Lines(string(content)) {
			if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "#") {
				digests[sha256.Sum256([]byte(t))] = true
			}
		}
		f.sum, f.digests = sum, digests
	}
	return f.digests, nil
}

// contains reports whether token is listed. Comparing digests in a map
// leaks nothing useful through timing.
func (f *tokenFile) contains(token string) bool {
	digests, err := f.load()
	return err == nil && token != "" && digests[sha256.Sum256([]byte(token))]
}

// inprocAuthInfo is the peer AuthInfo of calls on the in-process server:
// only inprocContext gives it.
type inprocAuthInfo struct{ credentials.CommonAuthInfo }

func (inprocAuthInfo) AuthType() string { return "inprocess" }

// security is what Config's security settings add to the server.
type security struct {
	certs *certFiles // nil without TLS
	auth  *callerAuth
	// grpcOpts are the gRPC server's options, streamInterceptors the
	// interceptors of every call, gRPC and REST.
	grpcOpts           []grpc.ServerOption
	streamInterceptors []grpc.StreamServerInterceptor
	gatewayOpts        []runtime.ServeMuxOption
	upOpts             []upstream.Option
	svcOpts            []service.Option
}

// newSecurity checks cfg's security settings and builds what they need.
func newSecurity(cfg Config) (*security, error) {
	s := &security{}
	if cfg.TLSClientCAFile != "" && cfg.TLSCertFile == "" {
		return nil, errors.New("a TLS client CA (mTLS) needs a TLS certificate and key for the listeners")
	}
	if cfg.Credentials != nil && cfg.TLSClientCAFile == "" && cfg.CallerTokensFile == "" {
		return nil, errors.New("server credentials would serve anonymous callers: also configure a TLS client CA or a caller tokens file")
	}
	var tc credentials.TransportCredentials = insecure.NewCredentials()
	if cfg.TLSCertFile != "" || cfg.TLSKeyFile != "" {
		var err error
		if s.certs, err = newCertFiles(cfg.TLSCertFile, cfg.TLSKeyFile, cfg.TLSClientCAFile, cfg.Logger); err != nil {
			return nil, err
		}
		tc = credentials.NewTLS(s.certs.serverConfig("h2"))
	}
	s.grpcOpts = append(s.grpcOpts, grpc.Creds(tc))

	var err error
	if s.auth, err = newCallerAuth(cfg.TLSClientCAFile != "", cfg.CallerTokensFile, cfg.Logger); err != nil {
		return nil, err
	}
	if cfg.Credentials != nil {
		s.streamInterceptors = append(s.streamInterceptors, s.auth.streamInterceptor)
		s.gatewayOpts = append(s.gatewayOpts, runtime.WithMetadata(s.auth.restMetadata))
		s.upOpts = append(s.upOpts, upstream.WithCredentials(cfg.Credentials))
		s.svcOpts = append(s.svcOpts, service.WithServerCredentials())
	}
	if cfg.UpstreamTLS.InsecureSkipVerify {
		cfg.Logger.Warn("upstream TLS certificates are NOT verified (--upstream-insecure-skip-verify): anyone on the network path can read tokens and logs")
	}
	s.upOpts = append(s.upOpts, upstream.WithTLS(cfg.UpstreamTLS))
	return s, nil
}

// listenHTTP wraps the REST mirror's listener in TLS when configured,
// offering HTTP/2 and HTTP/1.1.
func (s *security) listenHTTP(ln net.Listener) net.Listener {
	if s.certs == nil {
		return ln
	}
	return tlsListener(ln, s.certs.serverConfig("h2", "http/1.1"))
}
