package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/http"
)

// Credentials authorize an upstream request on the server's own account,
// for requests that carry no caller token. Implementations are
// [*AKSKSigner] (SDK-HMAC-SHA256 request signing) and [*IAMTokenSource]
// (an IAM user token, cached and refreshed). They must be safe for
// concurrent use.
type Credentials interface {
	// Authorize adds the credentials to req, which is complete otherwise
	// (method, URL and every other header are final), and returns the
	// secret value it put in a header that the upstream might echo (an
	// X-Auth-Token), or "" when none: error messages are redacted of it.
	// Errors are *[CredentialsError]s.
	Authorize(ctx context.Context, req *http.Request) (secret string, err error)
}

// WithCredentials makes the client authorize requests whose
// [Request.Token] is empty with c. Without it such requests are sent with
// an empty X-Auth-Token, which the upstream refuses.
func WithCredentials(c Credentials) Option {
	return func(cl *Client) { cl.credentials = c }
}

// CredentialsError is a failure to obtain the server's own credentials,
// such as an IAM endpoint that cannot be reached or refuses the password.
// Its message never contains a secret.
type CredentialsError struct {
	// Op says what failed, such as "get an IAM token".
	Op string
	// Temporary is true when trying again later may succeed (IAM
	// unreachable, timing out or answering 5xx or 429); false when the
	// server's configuration is wrong (IAM refused the password).
	Temporary bool
	// StatusCode is IAM's HTTP status, 0 when none arrived.
	StatusCode int
	// Err is the cause, if any.
	Err error
}

func (e *CredentialsError) Error() string {
	msg := "server credentials: " + e.Op
	if e.StatusCode != 0 {
		msg += fmt.Sprintf(": HTTP %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *CredentialsError) Unwrap() error { return e.Err }

// authorize puts the caller's token on hreq, or the server's credentials
// when the caller sent none and the client has some. It returns the secret
// to redact from what the upstream answers.
func (c *Client) authorize(ctx context.Context, hreq *http.Request, token string) (string, error) {
	if token != "" || c.credentials == nil {
		hreq.Header.Set("X-Auth-Token", token)
		return token, nil
	}
	secret, err := c.credentials.Authorize(ctx, hreq)
	if err != nil {
		var ce *CredentialsError
		if !errors.As(err, &ce) {
			err = &CredentialsError{Op: "authorize the request", Err: err}
		}
		return "", err
	}
	return secret, nil
}

// rejecter is implemented by credentials that hold a secret the upstream
// may stop accepting before it expires (a revoked IAM token).
type rejecter interface {
	// Rejected reports that the upstream refused secret with HTTP 401.
	Rejected(secret string)
}

// rejected passes an upstream 401 to the credentials, so that a revoked
// token is replaced at the next request instead of failing every request
// until it expires. A caller's token never matches the credentials' own.
func (c *Client) rejected(secret string, status int) {
	if r, ok := c.credentials.(rejecter); ok && status == http.StatusUnauthorized && secret != "" {
		r.Rejected(secret)
	}
}
