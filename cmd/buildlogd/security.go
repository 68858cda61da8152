package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/buildlog/buildlog/server"
	"github.com/buildlog/buildlog/upstream"
)

// securityFlags are the TLS, caller authentication and server credential
// settings. Secrets are read from files named by flags, never taken as
// flag values: command lines and environments are visible to other users
// and end up in process listings and crash reports.
type securityFlags struct {
	tlsCert, tlsKey, tlsClientCA string
	callerTokensFile             string
	upstreamCA                   string
	upstreamInsecure             bool
	ak, skFile                   string
	projectID                    string
	iamEndpoint, iamUser         string
	iamDomain, iamPasswordFile   string
}

func (f *securityFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.tlsCert, "tls-cert", "", "PEM certificate `file` (with its chain) to serve gRPC and REST over TLS only; reloaded when it changes")
	fs.StringVar(&f.tlsKey, "tls-key", "", "PEM private key `file` of --tls-cert; reloaded when it changes")
	fs.StringVar(&f.tlsClientCA, "tls-client-ca", "", "PEM CA `file`: require client certificates it verifies (mTLS); reloaded when it changes")
	fs.StringVar(&f.callerTokensFile, "caller-tokens-file", "", "`file` of bearer tokens (one a line) that authenticate callers for the server's credentials; re-read when it changes")
	fs.StringVar(&f.upstreamCA, "upstream-ca", "", "PEM CA `file` to verify the upstream and IAM with, instead of the system roots")
	fs.BoolVar(&f.upstreamInsecure, "upstream-insecure-skip-verify", false, "do NOT verify the upstream's and IAM's TLS certificates (testing only; logged as a warning)")
	fs.StringVar(&f.ak, "upstream-ak", "", "access key `id` for signing upstream requests (SDK-HMAC-SHA256) for authenticated callers without a token; needs --upstream-sk-file")
	fs.StringVar(&f.skFile, "upstream-sk-file", "", "`file` holding the secret key of --upstream-ak")
	fs.StringVar(&f.projectID, "project-id", "", "project `id` the server's credentials act in (X-Project-Id, IAM token scope)")
	fs.StringVar(&f.iamEndpoint, "iam-endpoint", "", "IAM endpoint `URL` for --iam-user (default https://iam.<region>.myhuaweicloud.com with --region)")
	fs.StringVar(&f.iamUser, "iam-user", "", "IAM `user` whose token the server uses for authenticated callers without a token; needs --iam-domain and --iam-password-file")
	fs.StringVar(&f.iamDomain, "iam-domain", "", "account (domain) `name` of --iam-user")
	fs.StringVar(&f.iamPasswordFile, "iam-password-file", "", "`file` holding the password of --iam-user")
}

// check validates the combination of settings, before anything is read.
func (f *securityFlags) check() error {
	aksk := f.ak != "" || f.skFile != ""
	iam := f.iamUser != "" || f.iamDomain != "" || f.iamPasswordFile != "" || f.iamEndpoint != ""
	switch {
	case (f.tlsCert == "") != (f.tlsKey == ""):
		return errors.New("give both --tls-cert and --tls-key, or neither")
	case f.tlsClientCA != "" && f.tlsCert == "":
		return errors.New("--tls-client-ca (mTLS) needs --tls-cert and --tls-key")
	case f.upstreamCA != "" && f.upstreamInsecure:
		return errors.New("give --upstream-ca or --upstream-insecure-skip-verify, not both")
	case aksk && iam:
		return errors.New("give AK/SK (--upstream-ak) or an IAM user (--iam-user), not both")
	case aksk && (f.ak == "" || f.skFile == ""):
		return errors.New("AK/SK signing needs both --upstream-ak and --upstream-sk-file")
	case iam && (f.iamUser == "" || f.iamDomain == "" || f.iamPasswordFile == ""):
		return errors.New("an IAM user needs --iam-user, --iam-domain and --iam-password-file")
	case iam && f.iamEndpoint == "":
		return errors.New("--iam-user with --upstream or --demo needs --iam-endpoint")
	case (aksk || iam) && f.projectID == "":
		return errors.New("server credentials need --project-id")
	case (aksk || iam) && f.tlsClientCA == "" && f.callerTokensFile == "":
		return errors.New("server credentials would serve anonymous callers: also give --tls-client-ca or --caller-tokens-file")
	case !aksk && !iam && f.projectID != "":
		return errors.New("--project-id is for server credentials: give --upstream-ak or --iam-user too")
	}
	return nil
}

// apply reads the CA and secret files and sets the server's security
// settings. Errors name files, never their content.
func (f *securityFlags) apply(cfg *server.Config) error {
	cfg.TLSCertFile, cfg.TLSKeyFile, cfg.TLSClientCAFile = f.tlsCert, f.tlsKey, f.tlsClientCA
	cfg.CallerTokensFile = f.callerTokensFile
	cfg.UpstreamTLS.InsecureSkipVerify = f.upstreamInsecure
	if f.upstreamCA != "" {
		pool, err := upstream.LoadCAFile(f.upstreamCA)
		if err != nil {
			return fmt.Errorf("--upstream-ca: %w", err)
		}
		cfg.UpstreamTLS.RootCAs = pool
	}
	switch {
	case f.ak != "":
		sk, err := readSecret("--upstream-sk-file", f.skFile)
		if err != nil {
			return err
		}
		if cfg.Credentials, err = upstream.NewAKSKSigner(f.ak, sk, f.projectID); err != nil {
			return err
		}
	case f.iamUser != "":
		password, err := readSecret("--iam-password-file", f.iamPasswordFile)
		if err != nil {
			return err
		}
		if cfg.Credentials, err = upstream.NewIAMTokenSource(upstream.IAMConfig{
			Endpoint: f.iamEndpoint, User: f.iamUser, Domain: f.iamDomain, Password: password,
			ProjectID: f.projectID, TLS: cfg.UpstreamTLS,
		}); err != nil {
			return fmt.Errorf("--iam-user: %w", err)
		}
	}
	return nil
}

// readSecret reads a secret from a file, without its trailing newline.
func readSecret(flagName, path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", flagName, err)
	}
	secret := strings.TrimRight(string(b), "\r\n")
	if secret == "" || strings.ContainsAny(secret, "\r\n") {
		return "", fmt.Errorf("%s: %s must hold exactly one line, the secret", flagName, path)
	}
	return secret, nil
}
