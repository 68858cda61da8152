package service

import "strings"

// Caller is who asks for a download, as its transport saw them.
type Caller struct {
	// Tokens are the values of the x-auth-token metadata (REST: the
	// X-Auth-Token header): the caller's IAM token, sent exactly once.
	Tokens []string
	// Authorization are the values of the authorization metadata or header,
	// where a caller authenticated by a bearer token sends "Bearer T".
	Authorization []string
	// CertVerified is set when the caller's connection presented a client
	// certificate the server verified (mTLS).
	CertVerified bool
}

// CallerTokens are the bearer tokens that authenticate callers.
type CallerTokens interface {
	// Contains reports whether token is one of them.
	Contains(token string) bool
}

// WithServerCredentials lets callers the server authenticates omit their
// token, to use the upstream client's own credentials (an empty
// upstream.Request.Token) instead: with certs, callers whose client
// certificate the server verified; with tokens (nil for none), callers
// sending "authorization: Bearer T" with T among them. Anonymous callers
// never do.
func WithServerCredentials(certs bool, tokens CallerTokens) Option {
	return func(s *Service) { s.callers = &callerAuth{certs: certs, tokens: tokens} }
}

// callerAuth decides which callers may use the server's credentials; nil
// lets none.
type callerAuth struct {
	certs  bool
	tokens CallerTokens
}

// authenticated reports whether the server authenticated c: a verified
// client certificate, or exactly one "Bearer T" with T a listed token.
func (a *callerAuth) authenticated(c Caller) bool {
	switch {
	case a == nil:
		return false
	case a.certs && c.CertVerified:
		return true
	case a.tokens == nil || len(c.Authorization) != 1:
		return false
	}
	scheme, token, ok := strings.Cut(c.Authorization[0], " ")
	return ok && strings.EqualFold(scheme, "Bearer") && a.tokens.Contains(strings.TrimSpace(token))
}
