package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// securityFlags are how the CLI reaches a buildlogd that serves TLS or
// mTLS, and authenticates to one that holds credentials of its own.
type securityFlags struct {
	tls              bool
	caFile           string
	certFile         string
	keyFile          string
	bearer           string // from BUILDLOG_BEARER only: never a flag value
	bearerConfigured bool
}

func (f *securityFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&f.tls, "tls", false, "connect over TLS, verifying the server with the system roots (implied by --tls-ca and --tls-cert)")
	fs.StringVar(&f.caFile, "tls-ca", "", "PEM CA `file` to verify the server with")
	fs.StringVar(&f.certFile, "tls-cert", "", "PEM client certificate `file` for mTLS (with --tls-key)")
	fs.StringVar(&f.keyFile, "tls-key", "", "PEM private key `file` of --tls-cert")
}

// load reads BUILDLOG_BEARER and checks the combination.
func (f *securityFlags) load(getenv func(string) (string, bool)) error {
	f.bearer, f.bearerConfigured = getenv("BUILDLOG_BEARER")
	if f.bearerConfigured && (f.bearer == "" || strings.ContainsAny(f.bearer, " \r\n")) {
		return errors.New("BUILDLOG_BEARER must be one token without spaces")
	}
	if (f.certFile == "") != (f.keyFile == "") {
		return errors.New("give both --tls-cert and --tls-key, or neither")
	}
	return nil
}

// authenticated reports whether the caller can use the server's
// credentials instead of a token of its own.
func (f *securityFlags) authenticated() bool { return f.bearer != "" || f.certFile != "" }

// credentials returns the transport credentials for the connection.
func (f *securityFlags) credentials() (credentials.TransportCredentials, error) {
	if !f.tls && f.caFile == "" && f.certFile == "" {
		return insecure.NewCredentials(), nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.caFile != "" {
		pem, err := os.ReadFile(f.caFile)
		if err != nil {
			return nil, fmt.Errorf("--tls-ca: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--tls-ca: no PEM certificate in %s", f.caFile)
		}
	}
	if f.certFile != "" {
		cert, err := tls.LoadX509KeyPair(f.certFile, f.keyFile)
		if err != nil {
			return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return credentials.NewTLS(cfg), nil
}
