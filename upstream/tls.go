package upstream

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
)

// TLS settings of the client's connections to the upstream (and to IAM, see
// [NewIAMTokenSource]). By default the system's root certificates verify
// the upstream, and proxies come from HTTPS_PROXY, HTTP_PROXY and NO_PROXY
// (http.ProxyFromEnvironment, kept from http.DefaultTransport).

// TLS holds the trust settings for upstream connections. The zero value
// trusts the system's roots.
type TLS struct {
	// RootCAs, when not nil, replaces the system roots: only servers with a
	// certificate from these authorities are accepted, as for an upstream
	// reached through a private CA.
	RootCAs *x509.CertPool
	// InsecureSkipVerify accepts any server certificate. It exists for
	// tests against self-signed endpoints; an explicit flag enables it and
	// buildlogd warns at start.
	InsecureSkipVerify bool
}

// config returns the client TLS configuration for t.
func (t TLS) config() *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		RootCAs:            t.RootCAs,
		InsecureSkipVerify: t.InsecureSkipVerify,
	}
}

// apply sets t on a transport, keeping the HTTP/2 negotiation that a
// custom TLSClientConfig would otherwise turn off.
func (t TLS) apply(tr *http.Transport) {
	tr.TLSClientConfig = t.config()
	tr.ForceAttemptHTTP2 = true
}

// WithTLS sets the client's trust settings for the upstream; the default
// is the system's roots.
func WithTLS(t TLS) Option {
	return func(c *Client) {
		c.transportOptions = append(c.transportOptions, t.apply)
	}
}

// LoadCAFile reads the PEM certificates in path into a pool for
// [TLS.RootCAs].
func LoadCAFile(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("read CA file " + path + ": no PEM certificate in it")
	}
	return pool, nil
}
