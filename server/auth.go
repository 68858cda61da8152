package server

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/buildlog/buildlog/service"
	"github.com/buildlog/buildlog/upstream"
)

// security is what Config's security settings add to the server: TLS on
// both listeners, and the server's credentials for the callers the service
// authenticates (a verified client certificate, a bearer token of
// Config.CallerTokensFile; see service.WithServerCredentials).
type security struct {
	certs   *certFiles // nil without TLS
	creds   credentials.TransportCredentials
	upOpts  []upstream.Option
	svcOpts []service.Option
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
	s.creds = insecure.NewCredentials()
	if cfg.TLSCertFile != "" || cfg.TLSKeyFile != "" {
		var err error
		if s.certs, err = newCertFiles(cfg.TLSCertFile, cfg.TLSKeyFile, cfg.TLSClientCAFile, cfg.Logger); err != nil {
			return nil, err
		}
		s.creds = credentials.NewTLS(s.certs.serverConfig("h2"))
	}

	var tokens service.CallerTokens
	if cfg.CallerTokensFile != "" {
		f := &tokenFile{path: cfg.CallerTokensFile, logger: cfg.Logger}
		if _, err := f.load(); err != nil {
			return nil, err
		}
		tokens = f
	}
	if cfg.Credentials != nil {
		s.upOpts = append(s.upOpts, upstream.WithCredentials(cfg.Credentials))
		s.svcOpts = append(s.svcOpts, service.WithServerCredentials(cfg.TLSClientCAFile != "", tokens))
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

// tokenFile is a list of accepted bearer tokens, one a line (blank lines
// and lines starting with # are ignored), read again at each check so that
// edits take effect at once; it is parsed only when its content changed.
// Only SHA-256 digests are kept, of the tokens and of the whole file. When
// the file cannot be read, no token is accepted (fail closed) and the
// error is logged once.
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

// Contains reports whether token is listed: service.CallerTokens.
// Comparing digests in a map leaks nothing useful through timing.
func (f *tokenFile) Contains(token string) bool {
	digests, err := f.load()
	return err == nil && token != "" && digests[sha256.Sum256([]byte(token))]
}
