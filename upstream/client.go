// Package upstream is a client for Huawei Cloud CodeArts Build's "download
// build action log" API, GET /v4/{record_id}/task-log.
//
// It streams the log body to the caller without buffering it, and turns
// error responses into [*Error] values. It knows nothing of gRPC: the service
// package maps its errors to gRPC statuses.
package upstream

import (
	"cmp"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Request names one action log and carries the caller's credentials.
type Request struct {
	// RecordID is the build record id (path parameter record_id).
	RecordID string
	// TaskName is the build action, such as "stage1" (query task_name).
	TaskName string
	// LogLevel is "INFO" or "DEBUG" (query log_level); empty omits the
	// parameter so the upstream applies its default, INFO.
	LogLevel string
	// Token is the caller's IAM token, sent as X-Auth-Token.
	Token string
	// Offset and Limit ask for a byte range of the log: from Offset, at most
	// Limit bytes (0: to the end). They are sent as a Range header; from an
	// upstream that ignores it, the client skips to Offset itself.
	Offset, Limit int64
	// Growing says the log may grow while it is read (its action runs): a
	// resumption then accepts a longer log, whose version changed with its
	// length, as long as it is not shorter than what was read.
	Growing bool
}

// Log is a successful response: the log file and what the upstream said
// about it. The caller must close Body.
type Log struct {
	// Body streams the log bytes from the request's Offset. Read errors
	// after the headers (a cut connection, fewer bytes than announced)
	// surface here.
	Body io.ReadCloser
	// ContentType is the Content-Type header as sent; empty when absent.
	ContentType string
	// FileName is the filename parameter of Content-Disposition, as sent;
	// empty when absent.
	FileName string
	// Size is the whole log's length in bytes (from Content-Length, or the
	// total of Content-Range), or -1 when the upstream did not announce it.
	// A Size below the request's Offset means the offset is past the end;
	// Body is then empty.
	Size int64
	// RequestID is the X-Request-Id header; empty when absent. After a
	// transparent resumption (during Body reads) it is the resumed answer's.
	RequestID string
	// Skipped counts the bytes before the request's Offset that the
	// upstream sent anyway (it ignored the Range) and the client discarded.
	Skipped int64

	// start is the log offset of the answer's first byte: the request's
	// Offset when the upstream honoured the Range, 0 when it sent the whole
	// log (open then skips to Offset).
	start int64
	// version is the answer's ETag, or else its Last-Modified: what tells
	// one version of the log from another when resuming.
	version string
	// encoded is set when Body decodes a Content-Encoding: its offsets are
	// not the upstream's byte offsets, and a decoding error is no break
	// to resume, so such a body is never resumed.
	encoded bool
}

// Version is the answer's ETag, or else its Last-Modified: what tells one
// version of the log from another. Empty when the upstream sent neither.
func (l *Log) Version() string { return l.version }

// userAgent identifies buildlog in upstream requests.
const userAgent = "buildlog"

// Default timeouts of a [Client].
const (
	DefaultConnectTimeout = 10 * time.Second
	DefaultHeaderTimeout  = 30 * time.Second
	DefaultIdleTimeout    = 60 * time.Second
)

// DefaultMaxConns is the default bound on connections to the upstream.
const DefaultMaxConns = 256

// ErrIdleTimeout is returned by a Log's Body when the upstream sent nothing
// for the idle timeout while a read was waiting for it.
var ErrIdleTimeout = errors.New("the upstream sent no data within the idle timeout")

// Client calls the upstream API. It is safe for concurrent use.
type Client struct {
	base           *url.URL
	httpClient     *http.Client
	connectTimeout time.Duration
	headerTimeout  time.Duration
	idleTimeout    time.Duration
	maxConns       int
	observer       Observer
	retry          RetryPolicy
	// transportWrappers wrap the HTTP transport (WithTransportWrapper).
	transportWrappers []func(http.RoundTripper) http.RoundTripper
	// credentials and transportOptions: see credentials.go and tls.go.
	credentials      Credentials
	transportOptions []func(*http.Transport)
}

// Option configures a [Client].
type Option func(*Client)

// WithConnectTimeout bounds the time to open a connection to the upstream,
// TLS handshake included; the default is [DefaultConnectTimeout].
func WithConnectTimeout(d time.Duration) Option {
	return func(c *Client) { c.connectTimeout = d }
}

// WithMaxConns bounds the connections open to the upstream, and keeps as
// many idle for reuse; the default is [DefaultMaxConns]. Size it to the
// downloads served at once: each holds one connection while it runs.
func WithMaxConns(n int) Option {
	return func(c *Client) { c.maxConns = n }
}

// WithHeaderTimeout bounds the wait for the response headers after the
// request is sent; the default is [DefaultHeaderTimeout].
func WithHeaderTimeout(d time.Duration) Option {
	return func(c *Client) { c.headerTimeout = d }
}

// WithIdleTimeout bounds how long a read of the log body may wait for the
// upstream's next bytes; the default is [DefaultIdleTimeout]. Time the
// caller spends between reads does not count, so a slow reader never trips
// it.
func WithIdleTimeout(d time.Duration) Option {
	return func(c *Client) { c.idleTimeout = d }
}

// New returns a client for the API at endpoint, such as
// "https://cloudbuild-ext.cn-north-4.myhuaweicloud.com" (see
// [RegionEndpoint]). Plain http:// is accepted, for loopback and mesh
// sidecars.
func New(endpoint string, opts ...Option) (*Client, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return nil, fmt.Errorf("parse upstream endpoint: %w", err)
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return nil, fmt.Errorf("upstream endpoint %q: scheme must be https or http", endpoint)
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("upstream endpoint %q: want scheme://host[:port][/path] only", endpoint)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	c := &Client{
		base:           u,
		connectTimeout: DefaultConnectTimeout,
		headerTimeout:  DefaultHeaderTimeout,
		idleTimeout:    DefaultIdleTimeout,
		maxConns:       DefaultMaxConns,
		observer:       nopObserver{},
		retry:          DefaultRetryPolicy,
	}
	for _, opt := range opts {
		opt(c)
	}
	for _, d := range []struct {
		name  string
		value time.Duration
	}{{"upstream-connect-timeout", c.connectTimeout}, {"upstream-header-timeout", c.headerTimeout}, {"upstream-idle-timeout", c.idleTimeout}} {
		if d.value <= 0 {
			return nil, fmt.Errorf("%s must be positive, got %s", d.name, d.value)
		}
	}
	if c.maxConns <= 0 {
		return nil, errors.New("upstream connection limit must be positive")
	}
	if err := c.retry.validate(); err != nil {
		return nil, err
	}
	t := newTransport()
	t.DialContext = (&net.Dialer{Timeout: c.connectTimeout, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = c.connectTimeout
	t.ResponseHeaderTimeout = c.headerTimeout
	t.MaxConnsPerHost = c.maxConns
	t.MaxIdleConnsPerHost = c.maxConns
	t.MaxIdleConns = c.maxConns
	for _, opt := range c.transportOptions {
		opt(t)
	}
	c.httpClient = &http.Client{Transport: c.wrapTransport(t), CheckRedirect: checkRedirect}
	return c, nil
}

// newTransport returns the transport for upstream requests. Compression is
// off so sizes and offsets are in log bytes; a body that arrives gzipped
// anyway is decoded in [Client.DownloadTaskLog].
func newTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DisableCompression = true
	t.ReadBufferSize = 64 << 10
	// Over HTTP/2, the window is what the upstream may send ahead of a slow
	// reader into this process's memory: Go's default is 4 MiB a stream.
	// 1 MiB still sustains about 500 MB/s at a 2 ms round trip.
	t.HTTP2 = &http.HTTP2Config{MaxReceiveBufferPerStream: 1 << 20}
	return t
}

// credentialHeaders are the headers that carry a credential or bind a
// signature: the caller's or the server's IAM token, and AK/SK signing's
// Authorization, X-Sdk-Date and X-Project-Id.
var credentialHeaders = []string{"X-Auth-Token", "Authorization", "X-Sdk-Date", ProjectIDHeader}

// checkRedirect follows up to 10 redirects. A request signed with AK/SK is
// never redirected: its signature covers the path and query but not the
// host, so whoever received it could replay it while X-Sdk-Date is valid.
// A token follows redirects only while they stay at the origin of the
// first request (scheme, host and port): once one leaves it, every
// credential header is dropped from that request on. net/http's own rule
// strips only Authorization and Cookie, and keeps them for another port or
// a subdomain.
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	if via[0].Header.Get("X-Sdk-Date") != "" {
		return http.ErrUseLastResponse
	}
	for _, r := range append(via[1:], req) {
		if !sameOrigin(r.URL, via[0].URL) {
			for _, h := range credentialHeaders {
				req.Header.Del(h)
			}
			break
		}
	}
	return nil
}

// sameOrigin reports whether a and b have the same scheme, host and port
// (RFC 6454), a port left out being the scheme's default.
func sameOrigin(a, b *url.URL) bool {
	return strings.EqualFold(a.Scheme, b.Scheme) && strings.EqualFold(a.Hostname(), b.Hostname()) && originPort(a) == originPort(b)
}

func originPort(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	if strings.EqualFold(u.Scheme, "https") {
		return "443"
	}
	return "80"
}

// CloseIdleConnections closes the idle connections to the upstream, as when
// the client is no longer needed.
func (c *Client) CloseIdleConnections() { c.httpClient.CloseIdleConnections() }

// URL returns the upstream URL for req, with record_id path-escaped and the
// query parameters query-escaped.
func (c *Client) URL(req Request) *url.URL {
	u := *c.base
	u.Path = c.base.Path + "/v4/" + req.RecordID + "/task-log"
	u.RawPath = c.base.EscapedPath() + "/v4/" + url.PathEscape(req.RecordID) + "/task-log"
	q := url.Values{"task_name": {req.TaskName}}
	if req.LogLevel != "" {
		q.Set("log_level", req.LogLevel)
	}
	// Encode spaces as %20 rather than "+": every decoder reads %20 as a
	// space, while "+" is a space only to form decoders. A literal "+" is
	// already %2B.
	u.RawQuery = strings.ReplaceAll(q.Encode(), "+", "%20")
	return &u
}

// DownloadTaskLog requests one action log. On success the caller reads and
// closes the returned Log's Body; ctx governs the whole exchange, body
// included, so cancelling it aborts a download at once.
//
// Transient failures are retried and a broken body is resumed, following
// the client's [RetryPolicy], always within ctx's deadline.
//
// Errors: an *[Error] for a non-200 answer, a *[ProtocolError] for an answer
// that cannot be a log, and otherwise the transport's error (connection
// refused, TLS failure, ctx's error). Body reads fail with a *[ChangedError]
// when the log changed between a break and its resumption.
func (c *Client) DownloadTaskLog(ctx context.Context, req Request) (*Log, error) {
	log, err := c.openWithRetry(ctx, req)
	if err != nil {
		return nil, err
	}
	if c.retry.Attempts > 1 && c.retry.MaxResumes > 0 && !log.encoded {
		log.Body = newResumingBody(ctx, c, req, log)
	}
	return log, nil
}

// open sends req once and returns the answer, its body governed by the idle
// timeout.
func (c *Client) open(ctx context.Context, req Request) (*Log, error) {
	// The request has its own cancel, for the body's idle timeout and for
	// Close; on error it is released here.
	ctx, cancel := context.WithCancel(ctx)
	log, err := c.download(ctx, req)
	if err != nil {
		cancel()
		return nil, err
	}
	log.Body = newIdleBody(log.Body, c.idleTimeout, cancel)
	if err := skipTo(log, req.Offset); err != nil {
		log.Body.Close()
		return nil, err
	}
	return log, nil
}

// skipTo discards the bytes before offset that an upstream ignoring the
// Range sent, so that Body starts at offset. A log that ends before offset
// is described as a 416 answer is: an empty Body and the log's size.
func skipTo(log *Log, offset int64) error {
	skip := offset - log.start
	if skip <= 0 {
		return nil
	}
	n, err := io.CopyN(io.Discard, log.Body, skip)
	log.Skipped = n
	switch {
	case err == io.EOF:
		log.Body.Close()
		log.Body, log.Size = http.NoBody, log.start+n
	case err != nil:
		return fmt.Errorf("skip to offset %d of a log sent whole: %w", offset, err)
	}
	log.start = offset
	return nil
}

func (c *Client) download(ctx context.Context, req Request) (*Log, error) {
	ranged := req.Offset > 0 || req.Limit > 0
	resp, secret, err := c.get(ctx, req, ranged)
	if err != nil {
		return nil, err
	}
	if ranged && resp.StatusCode == http.StatusRequestedRangeNotSatisfiable {
		if size, ok := unsatisfiedRangeSize(resp.Header.Get("Content-Range")); ok {
			// Read to its end (it is short), so the connection is reused:
			// a follower at the end of a log gets this answer at each poll.
			io.CopyN(io.Discard, resp.Body, maxErrorBody)
			resp.Body.Close()
			// The range starts at or past the end: the service tells which.
			return &Log{Body: http.NoBody, start: req.Offset, Size: size, RequestID: requestID(resp, secret)}, nil
		}
		// Without the log's size an offset at the end cannot be told from
		// one past it: ask for the whole log instead.
		resp.Body.Close()
		if resp, secret, err = c.get(ctx, req, false); err != nil {
			return nil, err
		}
	}
	log, err := c.newLog(resp, req, secret)
	if err != nil {
		resp.Body.Close()
		return nil, err
	}
	return log, nil
}

// get sends the request, with a Range header for req's range when ranged.
// It returns a 200 response, or a 206 or 416 one to a ranged request; any
// other answer becomes an *Error. It also returns the credential it sent
// (the caller's token, or the server's), to redact from what the answer
// puts in errors and metadata.
func (c *Client) get(ctx context.Context, req Request, ranged bool) (*http.Response, string, error) {
	header := http.Header{"Accept": {"application/octet-stream, application/json;q=0.9, */*;q=0.1"}}
	if ranged {
		header.Set("Range", rangeHeader(req.Offset, req.Limit))
	}
	return c.send(ctx, c.URL(req), header, req.Token, ranged)
}

// send sends a GET of u with header and the caller's token (or the
// server's credentials), as get describes.
func (c *Client) send(ctx context.Context, u *url.URL, header http.Header, token string, ranged bool) (*http.Response, string, error) {
	hreq, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, "", fmt.Errorf("build upstream request: %w", err)
	}
	for k, v := range header {
		hreq.Header[k] = v
	}
	hreq.Header.Set("User-Agent", userAgent)
	secret, err := c.authorize(ctx, hreq, token)
	if err != nil {
		return nil, "", err
	}
	start := time.Now()
	resp, err := c.httpClient.Do(hreq)
	elapsed := time.Since(start)
	if err != nil {
		c.observer.Exchange(0, "", elapsed)
		return nil, "", fmt.Errorf("upstream request: %w", unwrapURLError(err))
	}
	switch {
	case resp.StatusCode == http.StatusOK,
		ranged && (resp.StatusCode == http.StatusPartialContent || resp.StatusCode == http.StatusRequestedRangeNotSatisfiable):
		c.observer.Exchange(resp.StatusCode, "", elapsed)
		return resp, secret, nil
	}
	defer resp.Body.Close()
	uerr := parseError(resp, secret)
	c.rejected(secret, resp.StatusCode)
	c.observer.Exchange(resp.StatusCode, uerr.Code, elapsed)
	return nil, "", uerr
}

// newLog describes a 200 or 206 response.
func (c *Client) newLog(resp *http.Response, req Request, secret string) (*Log, error) {
	log := &Log{
		Body:        resp.Body,
		ContentType: resp.Header.Get("Content-Type"),
		Size:        resp.ContentLength,
		RequestID:   requestID(resp, secret),
		version:     cmp.Or(resp.Header.Get("ETag"), resp.Header.Get("Last-Modified")),
	}
	if _, params, err := mime.ParseMediaType(resp.Header.Get("Content-Disposition")); err == nil {
		log.FileName = params["filename"]
	}
	encoding := strings.ToLower(strings.TrimSpace(resp.Header.Get("Content-Encoding")))
	if resp.StatusCode == http.StatusPartialContent {
		if encoding != "" && encoding != "identity" {
			return nil, &ProtocolError{Problem: "a partial response in Content-Encoding " + sanitize(encoding, secret, 64)}
		}
		first, last, size, ok := parseContentRange(resp.Header.Get("Content-Range"))
		if !ok || first != req.Offset || (req.Limit > 0 && last-first+1 > req.Limit) ||
			(resp.ContentLength >= 0 && resp.ContentLength != last-first+1) {
			return nil, &ProtocolError{Problem: fmt.Sprintf("Content-Range %q does not answer Range %q",
				sanitize(resp.Header.Get("Content-Range"), secret, 100), rangeHeader(req.Offset, req.Limit))}
		}
		log.start, log.Size = first, size
		return log, nil
	}
	switch encoding {
	case "", "identity":
	case "gzip", "x-gzip":
		zr, err := gzip.NewReader(resp.Body)
		if errors.Is(err, gzip.ErrHeader) {
			// Not gzip at all: asking again would get the same answer.
			return nil, &ProtocolError{Problem: "a body sent as gzip that is not gzip"}
		}
		if err != nil {
			return nil, fmt.Errorf("read upstream gzip header: %w", err)
		}
		log.Body = &gzipBody{Reader: zr, body: resp.Body}
		log.Size, log.encoded = -1, true
	default:
		return nil, &ProtocolError{Problem: fmt.Sprintf("unsupported Content-Encoding %q", sanitize(encoding, secret, 64))}
	}
	return log, nil
}

// requestID returns the response's sanitised X-Request-Id.
func requestID(resp *http.Response, secret string) string {
	return sanitize(resp.Header.Get("X-Request-Id"), secret, maxRequestIDBytes)
}

// unwrapURLError drops the *url.Error layer, whose message repeats the
// method and the whole URL, keeping the cause (a net.OpError, a TLS error,
// context.Canceled).
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// gzipBody decodes a gzipped body and closes the connection's body.
type gzipBody struct {
	*gzip.Reader
	body io.Closer
}

func (b *gzipBody) Close() error { return b.body.Close() }
