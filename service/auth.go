package service

import (
	"context"
	"errors"
)

// Server-held credentials. A caller normally sends its own IAM token; when
// the server holds credentials of its own (upstream.WithCredentials) and
// was built WithServerCredentials, a caller that sends no token may use
// them, but only if whatever serves the call has first authenticated the
// caller and said so with [WithAuthenticatedCaller]. Anonymous callers never
// do.

// WithServerCredentials lets callers authenticated by the server (see
// [WithAuthenticatedCaller]) omit their token: the upstream request is then
// made with the upstream client's own credentials (an empty
// upstream.Request.Token).
func WithServerCredentials() Option {
	return func(s *Server) { s.serverCredentials = true }
}

// authenticatedCallerKey marks a context whose caller was authenticated.
type authenticatedCallerKey struct{}

// WithAuthenticatedCaller returns ctx marked as coming from a caller that
// the server has authenticated (a verified client certificate, a known
// bearer token). Only server code sets it: it is a context value, which
// nothing a caller sends can set.
func WithAuthenticatedCaller(ctx context.Context) context.Context {
	return context.WithValue(ctx, authenticatedCallerKey{}, true)
}

// CallerAuthenticated reports whether ctx was marked by
// [WithAuthenticatedCaller].
func CallerAuthenticated(ctx context.Context) bool {
	ok, _ := ctx.Value(authenticatedCallerKey{}).(bool)
	return ok
}

// callerToken returns the caller's token, or "" to use the server's
// credentials when the caller sent none, the server has some and the
// caller is authenticated.
func (s *Server) callerToken(ctx context.Context) (string, error) {
	token, err := tokenFromContext(ctx)
	var te *tokenError
	if !errors.As(err, &te) || te.reason != ReasonMissingToken || !s.serverCredentials {
		return token, err
	}
	if CallerAuthenticated(ctx) {
		return "", nil
	}
	te.message += "; or authenticate to buildlog (a client certificate or a bearer token it accepts) to use its credentials"
	return "", te
}
