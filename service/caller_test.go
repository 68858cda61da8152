package service

import (
	"strings"
	"testing"
)

// listed are the caller tokens of the tests.
type listed []string

func (l listed) Contains(token string) bool {
	for _, t := range l {
		if t == token {
			return true
		}
	}
	return false
}

// FuzzBearer checks the Authorization parser on untrusted input: only
// "Bearer <listed token>" (scheme in any case), sent once, authenticates.
func FuzzBearer(f *testing.F) {
	tokens := listed{"listed-token-123", "other-token"}
	a := &callerAuth{tokens: tokens}
	for _, seed := range []string{"Bearer listed-token-123", "bearer listed-token-123", "Bearer  listed-token-123 ", "Basic listed-token-123",
		"listed-token-123", "Bearer", "Bearer ", "Bearer other-token", "Bearer listed-token-12", "Bearer\tlisted-token-123", ""} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, v string) {
		got := a.authenticated(Caller{Authorization: []string{v}})
		scheme, token, _ := strings.Cut(v, " ")
		want := strings.EqualFold(scheme, "Bearer") && tokens.Contains(strings.TrimSpace(token))
		if got != want {
			t.Errorf("authenticated(Authorization %q) = %v, want %v", v, got, want)
		}
		if a.authenticated(Caller{Authorization: []string{v, v}}) {
			t.Errorf("two Authorization values %q authenticated", v)
		}
	})
}

func TestCallerAuthenticated(t *testing.T) {
	t.Parallel()
	certs := &callerAuth{certs: true}
	tokens := &callerAuth{tokens: listed{"t"}}
	var none *callerAuth
	tests := []struct {
		name string
		auth *callerAuth
		c    Caller
		want bool
	}{
		{"no server credentials", none, Caller{CertVerified: true, Authorization: []string{"Bearer t"}}, false},
		{"verified certificate", certs, Caller{CertVerified: true}, true},
		{"certificate without mTLS", tokens, Caller{CertVerified: true}, false},
		{"listed bearer", tokens, Caller{Authorization: []string{"Bearer t"}}, true},
		{"bearer without a tokens file", certs, Caller{Authorization: []string{"Bearer t"}}, false},
		{"unlisted bearer", tokens, Caller{Authorization: []string{"Bearer u"}}, false},
	}
	for _, tt := range tests {
		if got := tt.auth.authenticated(tt.c); got != tt.want {
			t.Errorf("%s: authenticated = %v, want %v", tt.name, got, tt.want)
		}
	}
}
