package upstream_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/buildlog/buildlog/upstream"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

const (
	accessKey = "AKTEST0123456789"
	secretKey = "SK-very-secret-0123456789abcdef"
	projectID = "0123456789abcdef0123456789abcdef"
	password  = "iam-Passw0rd!secret"
)

var iamUser = upstreamtest.IAMUser{Domain: "acme", Name: "buildlog-bot", Password: password, ProjectID: projectID}

// newCredentialsUpstream returns a simulated upstream with one log, and a
// client for it authorizing token-less requests with creds.
func newCredentialsUpstream(t *testing.T, creds func(up *upstreamtest.Server) upstream.Credentials) (*upstreamtest.Server, *upstream.Client) {
	t.Helper()
	up := upstreamtest.NewServer()
	up.AddToken(token)
	up.AddAKSK(accessKey, secretKey)
	up.AddIAMUser(iamUser)
	up.AddLog(recordID, "stage 1/ü", upstreamtest.Log{Content: []byte("signed log\n")})
	c, err := upstream.New(up.URL, upstream.WithCredentials(creds(up)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.CloseIdleConnections()
		up.Close()
	})
	return up, c
}

func fetchLog(c *upstream.Client, tok string) (string, error) {
	log, err := c.DownloadTaskLog(context.Background(), upstream.Request{RecordID: recordID, TaskName: "stage 1/ü", Token: tok})
	if err != nil {
		return "", err
	}
	defer log.Body.Close()
	b, err := io.ReadAll(log.Body)
	return string(b), err
}

func signer(t *testing.T, ak, sk string) func(*upstreamtest.Server) upstream.Credentials {
	return func(*upstreamtest.Server) upstream.Credentials {
		s, err := upstream.NewAKSKSigner(ak, sk, projectID)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
}

func TestAKSKSigning(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		ak, sk     string
		wantStatus int // 0: success
	}{
		{"right key", accessKey, secretKey, 0},
		{"wrong secret key", accessKey, "SK-wrong", http.StatusUnauthorized},
		{"unknown access key", "AKUNKNOWN", secretKey, http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			up, c := newCredentialsUpstream(t, signer(t, tt.ak, tt.sk))
			got, err := fetchLog(c, "")
			if tt.wantStatus == 0 {
				if err != nil || got != "signed log\n" {
					t.Fatalf("download = %q, %v; want the log", got, err)
				}
			} else {
				var ue *upstream.Error
				if !errors.As(err, &ue) || ue.StatusCode != tt.wantStatus {
					t.Fatalf("download error = %v, want an HTTP %d answer", err, tt.wantStatus)
				}
				if strings.Contains(err.Error(), tt.sk) {
					t.Errorf("error %q contains the secret key", err)
				}
			}
			h := up.Requests()[0].Header
			if h.Get("X-Project-Id") != projectID || !strings.HasPrefix(h.Get("Authorization"), "SDK-HMAC-SHA256 Access="+tt.ak+", ") || h.Get("X-Sdk-Date") == "" {
				t.Errorf("request headers %v, want X-Project-Id, X-Sdk-Date and an SDK-HMAC-SHA256 Authorization", h)
			}
			for k, vs := range h {
				if strings.Contains(strings.Join(vs, " "), tt.sk) {
					t.Errorf("header %s carries the secret key", k)
				}
			}
		})
	}
}

// A signature is bound to the request: the simulator refuses one replayed
// for another record or with a stale date.
func TestAKSKSignatureIsBound(t *testing.T) {
	t.Parallel()
	up, _ := newCredentialsUpstream(t, signer(t, accessKey, secretKey))
	s, _ := upstream.NewAKSKSigner(accessKey, secretKey, projectID)
	signed := func(target string) *http.Request {
		req, _ := http.NewRequest(http.MethodGet, up.URL+target, nil)
		if _, err := s.Authorize(context.Background(), req); err != nil {
			t.Fatal(err)
		}
		return req
	}
	status := func(req *http.Request) int {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	target := "/v4/" + recordID + "/task-log?task_name=stage%201%2F%C3%BC"
	if got := status(signed(target)); got != http.StatusOK {
		t.Fatalf("signed request: HTTP %d, want 200", got)
	}
	replayed := signed(target)
	replayed.URL.RawQuery = "task_name=stage2"
	if got := status(replayed); got != http.StatusUnauthorized {
		t.Errorf("signature replayed for another task: HTTP %d, want 401", got)
	}
	up.SetClock(func() time.Time { return time.Now().Add(time.Hour) })
	if got := status(signed(target)); got != http.StatusUnauthorized {
		t.Errorf("signature dated an hour ago: HTTP %d, want 401", got)
	}
}

// A caller's own token always wins over the server's credentials.
func TestCallerTokenWinsOverCredentials(t *testing.T) {
	t.Parallel()
	up, c := newCredentialsUpstream(t, signer(t, accessKey, secretKey))
	if _, err := fetchLog(c, token); err != nil {
		t.Fatal(err)
	}
	h := up.Requests()[0].Header
	if h.Get("X-Auth-Token") != token || h.Get("Authorization") != "" || h.Get("X-Project-Id") != "" {
		t.Errorf("headers %v: want the caller's token only", h)
	}
}

// fakeClock is a settable clock shared by a token source and the simulator.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newIAM(t *testing.T, up *upstreamtest.Server, clock *fakeClock, pw string) *upstream.IAMTokenSource {
	t.Helper()
	src, err := upstream.NewIAMTokenSource(upstream.IAMConfig{
		Endpoint: up.URL, User: iamUser.Name, Domain: iamUser.Domain, Password: pw, ProjectID: projectID,
		RefreshBefore: 10 * time.Minute, Now: clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	return src
}

func TestIAMTokenCachedAndRefreshed(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{now: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	var src *upstream.IAMTokenSource
	up, c := newCredentialsUpstream(t, func(up *upstreamtest.Server) upstream.Credentials {
		up.SetClock(clock.Now)
		up.SetIAMTokenTTL(time.Hour)
		src = newIAM(t, up, clock, password)
		return src
	})
	for range 3 {
		if _, err := fetchLog(c, ""); err != nil {
			t.Fatal(err)
		}
	}
	if got := up.IAMRequestCount(); got != 1 {
		t.Errorf("IAM requests after 3 downloads = %d, want 1 (cached)", got)
	}
	first := up.Requests()[0].Header.Get("X-Auth-Token")

	// Within RefreshBefore of expiry, but not expired: the download goes
	// on with the cached token while a refresh runs in the background, and
	// later ones get the new token.
	clock.Advance(55 * time.Minute)
	if _, err := fetchLog(c, ""); err != nil {
		t.Fatal(err)
	}
	reqs := up.Requests()
	if got := reqs[len(reqs)-1].Header.Get("X-Auth-Token"); got != first {
		t.Errorf("token while the refresh runs = %q, want the cached one", got)
	}
	second := first
	for range 1000 {
		if _, err := fetchLog(c, ""); err != nil {
			t.Fatal(err)
		}
		reqs = up.Requests()
		if second = reqs[len(reqs)-1].Header.Get("X-Auth-Token"); second != first {
			break
		}
		time.Sleep(10 * time.Millisecond) // the refresh is finishing
	}
	if second == first || second == "" {
		t.Errorf("token after the refresh = %q, want a new one", second)
	}
	if got := up.IAMRequestCount(); got != 2 {
		t.Errorf("IAM requests near expiry = %d, want 2", got)
	}

	// Past expiry, with IAM down: no usable token.
	clock.Advance(2 * time.Hour)
	up.FailIAM(http.StatusServiceUnavailable)
	iamBefore := up.IAMRequestCount()
	_, err := fetchLog(c, "")
	if got := up.IAMRequestCount() - iamBefore; got != 1 {
		t.Errorf("IAM requests for one download during an outage = %d, want 1 (not retried)", got)
	}
	var ce *upstream.CredentialsError
	if !errors.As(err, &ce) || !ce.Temporary {
		t.Fatalf("download during an IAM outage = %v, want a temporary CredentialsError", err)
	}
	if strings.Contains(err.Error(), password) || strings.Contains(err.Error(), first) {
		t.Errorf("error %q contains a credential", err)
	}
	up.FailIAM(0)
	if _, err := fetchLog(c, ""); err != nil {
		t.Errorf("download after the outage = %v, want success", err)
	}
}

// During an IAM outage a cached token that has not expired is still used.
func TestIAMOutageKeepsValidToken(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{now: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	up, c := newCredentialsUpstream(t, func(up *upstreamtest.Server) upstream.Credentials {
		up.SetClock(clock.Now)
		up.SetIAMTokenTTL(time.Hour)
		return newIAM(t, up, clock, password)
	})
	if _, err := fetchLog(c, ""); err != nil {
		t.Fatal(err)
	}
	clock.Advance(55 * time.Minute) // due for refresh, 5 minutes left
	up.FailIAM(http.StatusInternalServerError)
	if _, err := fetchLog(c, ""); err != nil {
		t.Errorf("download with a valid cached token during an outage = %v, want success", err)
	}
	// The refresh runs in the background: wait for it to be tried.
	for i := 0; up.IAMRequestCount() < 2 && i < 1000; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if got := up.IAMRequestCount(); got != 2 {
		t.Errorf("IAM requests = %d, want 2 (the refresh was tried)", got)
	}
}

func TestIAMWrongPassword(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{now: time.Now()}
	_, c := newCredentialsUpstream(t, func(up *upstreamtest.Server) upstream.Credentials {
		return newIAM(t, up, clock, "wrong-"+password)
	})
	_, err := fetchLog(c, "")
	var ce *upstream.CredentialsError
	if !errors.As(err, &ce) || ce.Temporary || ce.StatusCode != http.StatusUnauthorized {
		t.Fatalf("download = %v, want a permanent CredentialsError with HTTP 401", err)
	}
	if strings.Contains(err.Error(), password) {
		t.Errorf("error %q contains the password", err)
	}
}

// Concurrent callers needing a token share a single IAM request.
func TestIAMSingleRefresh(t *testing.T) {
	t.Parallel()
	const callers = 20
	clock := &fakeClock{now: time.Now()}
	up := upstreamtest.NewServer()
	defer up.Close()
	up.AddIAMUser(iamUser)
	src := newIAM(t, up, clock, password)
	release := up.HoldIAM()
	var wg sync.WaitGroup
	tokens := make([]string, callers)
	errs := make([]error, callers)
	for i := range callers {
		wg.Go(func() { tokens[i], errs[i] = src.Token(context.Background()) })
	}
	for upstream.IAMWaiters(src) < callers {
		time.Sleep(time.Millisecond) // polling, not a timed assertion
	}
	release()
	wg.Wait()
	if got := up.IAMRequestCount(); got != 1 {
		t.Errorf("IAM requests = %d, want 1 for %d concurrent callers", got, callers)
	}
	for i := range callers {
		if errs[i] != nil || tokens[i] != tokens[0] || tokens[0] == "" {
			t.Fatalf("caller %d: %q, %v; want the same token as caller 0 (%q)", i, tokens[i], errs[i], tokens[0])
		}
	}
}

// A caller that gives up does not fail the refresh the others wait for.
func TestIAMCallerCancelDoesNotFailOthers(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{now: time.Now()}
	up := upstreamtest.NewServer()
	defer up.Close()
	up.AddIAMUser(iamUser)
	src := newIAM(t, up, clock, password)
	release := up.HoldIAM()
	ctx, cancel := context.WithCancel(context.Background())
	firstErr := make(chan error, 1)
	go func() { _, err := src.Token(ctx); firstErr <- err }()
	for upstream.IAMWaiters(src) < 1 {
		time.Sleep(time.Millisecond)
	}
	second := make(chan error, 1)
	go func() { _, err := src.Token(context.Background()); second <- err }()
	for upstream.IAMWaiters(src) < 2 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-firstErr; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled caller: %v, want context.Canceled", err)
	}
	release()
	if err := <-second; err != nil {
		t.Errorf("second caller: %v, want a token", err)
	}
}

// writePEM writes the certificate of a TLS test server to a file.
func writePEM(t *testing.T, ts *httptest.Server) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestUpstreamTLSTrust(t *testing.T) {
	t.Parallel()
	up := upstreamtest.NewServer()
	t.Cleanup(up.Close)
	up.AddToken(token)
	up.AddLog(recordID, "stage 1/ü", upstreamtest.Log{Content: []byte("over TLS\n")})
	ts := httptest.NewTLSServer(up) // the simulator's handler behind a self-signed certificate
	t.Cleanup(ts.Close)
	pool, err := upstream.LoadCAFile(writePEM(t, ts))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		opts    []upstream.Option
		wantErr bool
	}{
		{"system roots refuse a private CA", nil, true},
		{"private CA", []upstream.Option{upstream.WithTLS(upstream.TLS{RootCAs: pool})}, false},
		{"insecure skip verify", []upstream.Option{upstream.WithTLS(upstream.TLS{InsecureSkipVerify: true})}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := upstream.New(ts.URL, tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer c.CloseIdleConnections()
			got, err := fetchLog(c, token)
			var certErr *tls.CertificateVerificationError
			switch {
			case tt.wantErr && !errors.As(err, &certErr):
				t.Errorf("download = %q, %v; want a certificate verification error", got, err)
			case !tt.wantErr && (err != nil || got != "over TLS\n"):
				t.Errorf("download = %q, %v; want the log", got, err)
			}
		})
	}
	if _, err := upstream.LoadCAFile(filepath.Join(t.TempDir(), "missing.pem")); err == nil {
		t.Error("LoadCAFile(missing file) succeeded")
	}
}

// An upstream that echoes the server's IAM token in an error message does
// not pass it on: it is redacted like a caller's token.
func TestIAMTokenRedactedFromErrors(t *testing.T) {
	t.Parallel()
	iam := upstreamtest.NewServer()
	defer iam.Close()
	iam.AddIAMUser(iamUser)
	var echoed atomic.Value
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		echoed.Store(r.Header.Get("X-Auth-Token"))
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_ = json.NewEncoder(w).Encode(map[string]string{"error_code": "APIGW.0301", "error_msg": "token " + r.Header.Get("X-Auth-Token") + " is invalid"})
	}))
	defer echo.Close()
	c, err := upstream.New(echo.URL, upstream.WithCredentials(newIAM(t, iam, &fakeClock{now: time.Now()}, password)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	_, err = fetchLog(c, "")
	var ue *upstream.Error
	if !errors.As(err, &ue) || ue.StatusCode != http.StatusUnauthorized {
		t.Fatalf("download = %v, want the upstream's 401", err)
	}
	tok, _ := echoed.Load().(string)
	if tok == "" || strings.Contains(ue.Message, tok) || !strings.Contains(ue.Message, "[REDACTED]") {
		t.Errorf("message %q: want the IAM token (%d bytes) redacted", ue.Message, len(tok))
	}
}

// A revoked IAM token fails one download with the upstream's 401; the next
// one fetches a new token instead of failing until the old one expires.
func TestIAMRevokedTokenIsReplaced(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{now: time.Now()}
	up, c := newCredentialsUpstream(t, func(up *upstreamtest.Server) upstream.Credentials {
		return newIAM(t, up, clock, password)
	})
	if _, err := fetchLog(c, ""); err != nil {
		t.Fatal(err)
	}
	up.RevokeIAMTokens()
	var ue *upstream.Error
	if _, err := fetchLog(c, ""); !errors.As(err, &ue) || ue.StatusCode != http.StatusUnauthorized {
		t.Fatalf("download with a revoked token = %v, want the upstream's 401", err)
	}
	if got, err := fetchLog(c, ""); err != nil || got != "signed log\n" {
		t.Fatalf("download after the 401 = %q, %v; want the log with a new token", got, err)
	}
	if got := up.IAMRequestCount(); got != 2 {
		t.Errorf("IAM requests = %d, want 2", got)
	}
	// A caller's own token refused by the upstream leaves the server's alone.
	if _, err := fetchLog(c, "not-a-valid-token"); !errors.As(err, &ue) || ue.StatusCode != http.StatusUnauthorized {
		t.Fatalf("download with a bad caller token = %v, want 401", err)
	}
	if _, err := fetchLog(c, ""); err != nil || up.IAMRequestCount() != 2 {
		t.Errorf("download after a caller's 401 = %v with %d IAM requests; want the cached token (2)", err, up.IAMRequestCount())
	}
}

// A redirect that leaves the origin carries no credential of any kind. The
// target here is another port of the same host, which net/http treats as
// the same host (it would keep Authorization). A request signed with AK/SK
// is not redirected at all: its signature does not cover the host.
func TestRedirectCarriesNoCredentials(t *testing.T) {
	t.Parallel()
	up := upstreamtest.NewServer()
	up.AddIAMUser(iamUser)
	defer up.Close()
	received := make(chan http.Header, 1)
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		received <- r.Header.Clone()
		io.WriteString(w, "elsewhere")
	}))
	defer other.Close()
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/task-log") {
			http.Redirect(w, r, other.URL+r.URL.RequestURI(), http.StatusFound)
			return
		}
		up.ServeHTTP(w, r) // IAM
	}))
	defer origin.Close()
	signer, _ := upstream.NewAKSKSigner(accessKey, secretKey, projectID)
	iam, err := upstream.NewIAMTokenSource(upstream.IAMConfig{
		Endpoint: origin.URL, User: iamUser.Name, Domain: iamUser.Domain, Password: password, ProjectID: projectID,
	})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name         string
		token        string
		creds        upstream.Credentials
		wantFollowed bool
	}{
		{"caller token", token, nil, true},
		{"IAM token", "", iam, true},
		{"AK/SK signature", "", signer, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var opts []upstream.Option
			if tt.creds != nil {
				opts = append(opts, upstream.WithCredentials(tt.creds))
			}
			c, err := upstream.New(origin.URL, opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer c.CloseIdleConnections()
			got, err := fetchLog(c, tt.token)
			if !tt.wantFollowed {
				var ue *upstream.Error
				if !errors.As(err, &ue) || ue.StatusCode != http.StatusFound {
					t.Fatalf("download = %q, %v; want the redirect itself as an HTTP 302 error", got, err)
				}
				select {
				case h := <-received:
					t.Fatalf("the redirect was followed, with headers %v", h)
				default:
				}
				return
			}
			if err != nil || got != "elsewhere" {
				t.Fatalf("download = %q, %v; want the redirect followed", got, err)
			}
			h := <-received
			for _, name := range []string{"X-Auth-Token", "Authorization", "X-Sdk-Date", "X-Project-Id"} {
				if v := h.Get(name); v != "" {
					t.Errorf("the other origin received %s: %q", name, v)
				}
			}
		})
	}
}

func TestSameOrigin(t *testing.T) {
	t.Parallel()
	tests := []struct {
		a, b string
		want bool
	}{
		{"https://cloudbuild-ext.example.com/v4/x", "https://CloudBuild-Ext.example.com:443/other?q", true},
		{"http://127.0.0.1:8080/a", "http://127.0.0.1:8080/b", true},
		{"http://example.com/a", "http://example.com:80/b", true},
		{"https://example.com/a", "https://example.com:8443/a", false},
		{"https://example.com/a", "http://example.com/a", false},
		{"https://example.com/a", "https://sub.example.com/a", false},
		{"http://127.0.0.1:8080/a", "http://127.0.0.1:8081/a", false},
	}
	for _, tt := range tests {
		a, _ := url.Parse(tt.a)
		b, _ := url.Parse(tt.b)
		if got := upstream.SameOrigin(a, b); got != tt.want {
			t.Errorf("SameOrigin(%s, %s) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}
