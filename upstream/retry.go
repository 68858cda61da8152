package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"time"
)

// RetryPolicy bounds how the client recovers from transient upstream
// failures. Recovery is invisible to the caller: a request that fails before
// any byte of the log is delivered is sent again, and a log body that breaks
// off is resumed where it broke.
type RetryPolicy struct {
	// Attempts is how many times one request is tried, the first included:
	// the opening request, and each request that resumes a broken body.
	// 1 turns retries and resumption off. Default 3.
	Attempts int
	// Backoff is the wait before the first retry. It doubles with each
	// retry up to MaxBackoff, and each wait is drawn at random between half
	// of it and all of it. Defaults 100ms and 2s.
	Backoff    time.Duration
	MaxBackoff time.Duration
	// MaxResumes bounds how many times one download may resume after its
	// body broke. Default 8.
	MaxResumes int
}

// DefaultRetryPolicy is the policy of a client without [WithRetry].
var DefaultRetryPolicy = RetryPolicy{Attempts: 3, Backoff: 100 * time.Millisecond, MaxBackoff: 2 * time.Second, MaxResumes: 8}

// WithRetry sets the client's retry policy, as given: start from
// [DefaultRetryPolicy] to change only some fields.
func WithRetry(p RetryPolicy) Option {
	return func(c *Client) { c.retry = p }
}

// Bounds of a [RetryPolicy]: more tries than these only hold callers up.
const (
	maxAttempts = 10
	maxResumes  = 1000
)

func (p RetryPolicy) validate() error {
	switch {
	case p.Attempts < 1 || p.Attempts > maxAttempts:
		return fmt.Errorf("upstream-attempts %d is out of range: use 1 to %d", p.Attempts, maxAttempts)
	case p.MaxResumes < 0 || p.MaxResumes > maxResumes:
		return fmt.Errorf("upstream-max-resumes %d is out of range: use 0 to %d", p.MaxResumes, maxResumes)
	case p.Backoff < 0 || p.MaxBackoff < p.Backoff:
		return errors.New("upstream retry policy: want 0 ≤ Backoff ≤ MaxBackoff")
	}
	return nil
}

// openWithRetry opens req, retrying failures that another try may cure, as
// long as the policy and ctx's deadline allow. It returns the last error
// when it gives up.
func (c *Client) openWithRetry(ctx context.Context, req Request) (*Log, error) {
	return withRetry(ctx, c, func() (*Log, error) { return c.open(ctx, req) })
}

// withRetry calls try until it succeeds, or fails in a way another try
// cannot cure, or the policy or ctx's deadline allows no more tries; then
// it returns the last error.
func withRetry[T any](ctx context.Context, c *Client, try func() (T, error)) (T, error) {
	for attempt := 1; ; attempt++ {
		v, err := try()
		if err == nil {
			return v, nil
		}
		reason, ok := retryable(ctx, err)
		if !ok || attempt >= c.retry.Attempts {
			return v, err
		}
		wait, ok := c.retry.wait(attempt, err)
		if !ok || !sleep(ctx, wait) {
			return v, err
		}
		c.observer.Retry(reason)
	}
}

// retryable reports whether err, from opening a log, is worth another try,
// with a short reason for metrics. Answers the upstream gave on purpose are
// final, and so is throttling: retrying it only adds load.
func retryable(ctx context.Context, err error) (string, bool) {
	if ctx.Err() != nil {
		return "", false
	}
	var (
		upErr    *Error
		protoErr *ProtocolError
		certErr  *tls.CertificateVerificationError
		authErr  x509.UnknownAuthorityError
		hostErr  x509.HostnameError
		certInv  x509.CertificateInvalidError
		credErr  *CredentialsError // the token source keeps its own state; IAM is not retried here
	)
	switch {
	case errors.As(err, &upErr):
		switch {
		case upErr.Code == busyCode:
			return busyCode, true
		case upErr.StatusCode == http.StatusBadGateway, upErr.StatusCode == http.StatusServiceUnavailable, upErr.StatusCode == http.StatusGatewayTimeout:
			return strconv.Itoa(upErr.StatusCode), true
		}
		return "", false
	case errors.As(err, &protoErr), errors.As(err, &certErr), errors.As(err, &authErr), errors.As(err, &hostErr), errors.As(err, &certInv),
		errors.As(err, &credErr):
		return "", false
	}
	var opErr *net.OpError
	switch {
	case errors.As(err, &opErr) && opErr.Op == "dial":
		return "connect", true
	case isTimeout(err):
		return "timeout", true
	}
	return "network", true
}

// busyCode is the upstream's "network busy" error_code, a transient 500.
const busyCode = "CB.00060100"

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// wait returns the pause before retry number attempt (1 for the first
// retry), or false when err asks for a longer pause than the policy allows:
// an upstream that says "come back in a minute" is answered at once rather
// than held.
func (p RetryPolicy) wait(attempt int, err error) (time.Duration, bool) {
	d := p.Backoff
	for i := 1; i < attempt && d < p.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, p.MaxBackoff)
	if d > 0 {
		d = d/2 + rand.N(d/2+1)
	}
	var upErr *Error
	if errors.As(err, &upErr) && upErr.RetryAfter > 0 {
		if upErr.RetryAfter > p.MaxBackoff {
			return 0, false
		}
		d = max(d, upErr.RetryAfter)
	}
	return d, true
}

// sleep waits for d unless ctx ends first or its deadline would pass during
// the wait, so a retry never starts that the caller could not wait for. It
// reports whether it waited.
func sleep(ctx context.Context, d time.Duration) bool {
	if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) <= d {
		return false
	}
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
