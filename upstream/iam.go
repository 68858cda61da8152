package upstream

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Defaults of [IAMConfig].
const (
	// DefaultIAMRefreshBefore is how long before its expiry a cached IAM
	// token is replaced. Tokens live 24 hours; an hour's margin keeps a
	// token from expiring during a long download that started with it.
	DefaultIAMRefreshBefore = time.Hour
	// iamTimeout bounds one token request.
	iamTimeout = 30 * time.Second
	// maxIAMBody caps how much of IAM's answer is read.
	maxIAMBody = 1 << 20
)

// IAMConfig configures an [IAMTokenSource]: an IAM user and the project its
// tokens are scoped to.
type IAMConfig struct {
	// Endpoint is the IAM endpoint, such as
	// "https://iam.cn-north-4.myhuaweicloud.com" (see [IAMRegionEndpoint]).
	Endpoint string
	// User and Domain name the IAM user and its account (domain); Password
	// is the user's password.
	User, Domain, Password string
	// ProjectID scopes the tokens: CodeArts Build refuses global tokens.
	ProjectID string
	// TLS sets the trust for the IAM endpoint, as [WithTLS] for the upstream.
	TLS TLS
	// RefreshBefore is how long before expiry a token is replaced; default
	// [DefaultIAMRefreshBefore].
	RefreshBefore time.Duration
	// Now is the clock; default time.Now. Tests set it to make tokens expire.
	Now func() time.Time
}

// IAMRegionEndpoint returns the IAM endpoint of a region.
func IAMRegionEndpoint(region string) string {
	return "https://iam." + region + ".myhuaweicloud.com"
}

// IAMTokenSource obtains IAM user tokens with a password grant
// (POST /v3/auth/tokens) and puts them on requests as X-Auth-Token. A token
// is cached until RefreshBefore its expiry; then the next request fetches a
// new one, and concurrent requests wait for that one fetch instead of each
// starting their own. If a refresh fails while the cached token is still
// valid, the cached token is used and the next request tries again. A
// token the upstream refuses is dropped (see [IAMTokenSource.Rejected]).
type IAMTokenSource struct {
	cfg      IAMConfig
	tokenURL string
	client   *http.Client

	mu        sync.Mutex
	token     string
	expiresAt time.Time
	refreshAt time.Time   // when the token is due for replacement
	inflight  *tokenFetch // the refresh in progress, nil when none
}

// tokenFetch is one token request, shared by every caller waiting for it.
type tokenFetch struct {
	done      chan struct{}
	waiters   int // callers sharing this fetch, guarded by IAMTokenSource.mu
	token     string
	expiresAt time.Time
	err       error
}

// NewIAMTokenSource returns a token source for cfg. It fetches no token
// until the first request needs one.
func NewIAMTokenSource(cfg IAMConfig) (*IAMTokenSource, error) {
	u, err := url.Parse(cfg.Endpoint)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("IAM endpoint %q: want https://host[:port]", cfg.Endpoint)
	}
	if cfg.User == "" || cfg.Domain == "" || cfg.Password == "" || cfg.ProjectID == "" {
		return nil, errors.New("an IAM token needs a user, its domain, a password and a project id")
	}
	if cfg.RefreshBefore <= 0 {
		cfg.RefreshBefore = DefaultIAMRefreshBefore
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	t := newTransport()
	cfg.TLS.apply(t)
	return &IAMTokenSource{
		cfg:      cfg,
		tokenURL: strings.TrimSuffix(u.String(), "/") + "/v3/auth/tokens",
		// A redirect would re-send the password to wherever it points: IAM
		// answers a password grant itself, so none is followed.
		client: &http.Client{Transport: t, Timeout: iamTimeout, CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		}},
	}, nil
}

// Authorize implements [Credentials].
func (s *IAMTokenSource) Authorize(ctx context.Context, req *http.Request) (string, error) {
	token, err := s.Token(ctx)
	if err != nil {
		return "", err
	}
	req.Header.Set("X-Auth-Token", token)
	return token, nil
}

// Rejected drops the cached token if it is token, which the upstream
// refused (HTTP 401) although it had not expired: it was revoked, as when
// the user's password changes. The next request fetches a new one.
func (s *IAMTokenSource) Rejected(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if token != "" && token == s.token {
		s.token, s.expiresAt, s.refreshAt = "", time.Time{}, time.Time{}
	}
}

// Token returns a valid token, fetching one when none is cached or the
// cached one is within RefreshBefore of its expiry.
func (s *IAMTokenSource) Token(ctx context.Context) (string, error) {
	s.mu.Lock()
	now := s.cfg.Now()
	valid := s.token != "" && now.Before(s.expiresAt)
	if valid && now.Before(s.refreshAt) {
		token := s.token
		s.mu.Unlock()
		return token, nil
	}
	f := s.inflight
	if f == nil {
		f = &tokenFetch{done: make(chan struct{})}
		s.inflight = f
		// The fetch outlives the caller that started it, whose cancellation
		// must not fail the others waiting.
		go s.fetch(context.WithoutCancel(ctx), f)
	}
	if valid {
		// A refresh is due and runs in the background: the cached token
		// works until it expires, so nobody waits for a slow IAM.
		token := s.token
		s.mu.Unlock()
		return token, nil
	}
	f.waiters++
	s.mu.Unlock()

	select {
	case <-f.done:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	if f.err != nil {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.token != "" && s.cfg.Now().Before(s.expiresAt) {
			return s.token, nil // still valid: retry the refresh next time
		}
		return "", f.err
	}
	return f.token, nil
}

// fetch requests a token, stores it and releases the waiters.
func (s *IAMTokenSource) fetch(ctx context.Context, f *tokenFetch) {
	f.token, f.expiresAt, f.err = s.request(ctx)
	s.mu.Lock()
	if f.err == nil {
		// Due RefreshBefore ahead of expiry, or halfway through a shorter
		// lifetime: a token that lives less than RefreshBefore must not be
		// due at once, which would fetch one per request.
		margin := min(s.cfg.RefreshBefore, f.expiresAt.Sub(s.cfg.Now())/2)
		s.token, s.expiresAt, s.refreshAt = f.token, f.expiresAt, f.expiresAt.Add(-margin)
	}
	s.inflight = nil
	s.mu.Unlock()
	close(f.done)
}

// iamRequest is the body of a password grant scoped to a project.
type iamRequest struct {
	Auth struct {
		Identity struct {
			Methods  []string `json:"methods"`
			Password struct {
				User struct {
					Name     string `json:"name"`
					Password string `json:"password"`
					Domain   struct {
						Name string `json:"name"`
					} `json:"domain"`
				} `json:"user"`
			} `json:"password"`
		} `json:"identity"`
		Scope struct {
			Project struct {
				ID string `json:"id"`
			} `json:"project"`
		} `json:"scope"`
	} `json:"auth"`
}

// request performs one password grant. Its errors name the step and IAM's
// status, never the request or the answer, which hold the password and the
// token.
func (s *IAMTokenSource) request(ctx context.Context) (string, time.Time, error) {
	var body iamRequest
	id := &body.Auth.Identity
	id.Methods = []string{"password"}
	id.Password.User.Name = s.cfg.User
	id.Password.User.Password = s.cfg.Password
	id.Password.User.Domain.Name = s.cfg.Domain
	body.Auth.Scope.Project.ID = s.cfg.ProjectID
	payload, err := json.Marshal(&body)
	if err != nil {
		return "", time.Time{}, &CredentialsError{Op: "encode the IAM request", Err: err}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.tokenURL, bytes.NewReader(payload))
	if err != nil {
		return "", time.Time{}, &CredentialsError{Op: "build the IAM request", Err: err}
	}
	req.Header.Set("Content-Type", "application/json;charset=utf8")
	req.Header.Set("User-Agent", userAgent)
	resp, err := s.client.Do(req)
	if err != nil {
		return "", time.Time{}, &CredentialsError{Op: "get an IAM token", Temporary: true, Err: unwrapURLError(err)}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxIAMBody))
		temporary := resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests
		return "", time.Time{}, &CredentialsError{Op: "get an IAM token", Temporary: temporary, StatusCode: resp.StatusCode}
	}
	var answer struct {
		Token struct {
			ExpiresAt time.Time `json:"expires_at"`
		} `json:"token"`
	}
	token := resp.Header.Get("X-Subject-Token")
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxIAMBody)).Decode(&answer); err != nil || token == "" || answer.Token.ExpiresAt.IsZero() {
		return "", time.Time{}, &CredentialsError{Op: "read the IAM token answer: no X-Subject-Token header or token.expires_at", Temporary: true}
	}
	return token, answer.Token.ExpiresAt, nil
}
