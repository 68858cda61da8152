package server

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
)

// maxWatchedFile caps what is read of a certificate, key, CA or token file.
const maxWatchedFile = 1 << 20

// readSmallFile reads a file of at most maxWatchedFile bytes.
func readSmallFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxWatchedFile+1))
	if err == nil && len(b) > maxWatchedFile {
		err = fmt.Errorf("%s is larger than %d bytes", path, maxWatchedFile)
	}
	return b, err
}

// certFiles serves a TLS certificate, its key and optionally a client CA
// bundle from files, and follows changes to them without a restart: each
// handshake reads the files again (they are a few KB) and parses them only
// when their content changed. Comparing content rather than modification
// times catches every rewrite, even two within one timestamp tick; renames
// into place (as cert-manager and Kubernetes secrets do) and rewrites in
// place both work. A pair that does not parse, or a key that does not match
// its certificate (as while a rotation has written one file but not yet
// the other), is logged and the last good pair stays in use.
type certFiles struct {
	certFile, keyFile, caFile string
	logger                    *slog.Logger

	mu              sync.Mutex
	certPEM, keyPEM []byte
	caPEM           []byte
	cert            *tls.Certificate
	clientCAs       *x509.CertPool // nil without caFile
	lastErr         string         // the last reload error logged, to log each once
}

// newCertFiles loads the files once, failing when they are unusable, so a
// bad configuration stops buildlogd at start.
func newCertFiles(certFile, keyFile, caFile string, logger *slog.Logger) (*certFiles, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("TLS needs both a certificate and a key file")
	}
	f := &certFiles{certFile: certFile, keyFile: keyFile, caFile: caFile, logger: logger}
	if err := f.reload(); err != nil {
		return nil, err
	}
	return f, nil
}

// reload reads the files and parses those that changed. It holds the lock
// while it reads, so a slower reader of older files cannot install them
// over newer ones.
func (f *certFiles) reload() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	certPEM, err := readSmallFile(f.certFile)
	if err != nil {
		return fmt.Errorf("read TLS certificate: %w", err)
	}
	keyPEM, err := readSmallFile(f.keyFile)
	if err != nil {
		return fmt.Errorf("read TLS key: %w", err)
	}
	var caPEM []byte
	if f.caFile != "" {
		if caPEM, err = readSmallFile(f.caFile); err != nil {
			return fmt.Errorf("read TLS client CA: %w", err)
		}
	}
	if f.cert == nil || !bytes.Equal(certPEM, f.certPEM) || !bytes.Equal(keyPEM, f.keyPEM) {
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			// tls's messages name the problem, never key material.
			return fmt.Errorf("load TLS certificate %s and key %s: %w", f.certFile, f.keyFile, err)
		}
		f.cert, f.certPEM, f.keyPEM = &cert, certPEM, keyPEM
	}
	if f.caFile != "" && (f.clientCAs == nil || !bytes.Equal(caPEM, f.caPEM)) {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return fmt.Errorf("load TLS client CA %s: no PEM certificate in it", f.caFile)
		}
		f.clientCAs, f.caPEM = pool, caPEM
	}
	return nil
}

// current reloads the files and returns the certificate and client CAs to
// use, the last good ones when the files are unusable right now.
func (f *certFiles) current() (*tls.Certificate, *x509.CertPool) {
	err := f.reload()
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil && err.Error() != f.lastErr {
		f.logger.Warn("TLS files unusable; keeping the previous certificate", "error", err.Error())
	}
	if err != nil {
		f.lastErr = err.Error()
	} else {
		f.lastErr = ""
	}
	return f.cert, f.clientCAs
}

// cipherSuites are the TLS 1.2 suites both listeners offer: forward-secret
// key exchange and AEAD encryption only (no CBC, no SHA-1 MACs), those
// HTTP/2 allows (RFC 9113, appendix A). TLS 1.3's suites are all AEAD and
// not configurable.
var cipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// serverConfig returns a server TLS configuration offering nextProtos
// (ALPN) that picks up the files' current content at each handshake. With
// a client CA, clients must present a certificate it verifies (mTLS).
func (f *certFiles) serverConfig(nextProtos ...string) *tls.Config {
	base := &tls.Config{MinVersion: tls.VersionTLS12, CipherSuites: cipherSuites, NextProtos: nextProtos}
	cfg := base.Clone()
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		cert, clientCAs := f.current()
		c := base.Clone()
		c.Certificates = []tls.Certificate{*cert}
		if clientCAs != nil {
			c.ClientAuth = tls.RequireAndVerifyClientCert
			c.ClientCAs = clientCAs
		}
		return c, nil
	}
	return cfg
}

// tlsListener serves TLS only on ln: a client speaking plaintext fails the
// handshake.
func tlsListener(ln net.Listener, cfg *tls.Config) net.Listener { return tls.NewListener(ln, cfg) }
