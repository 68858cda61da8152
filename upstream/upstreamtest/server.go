// Package upstreamtest provides a simulated CodeArts Build API, in the spirit
// of net/http/httptest: a real HTTP server on a loopback port that serves
// GET /v4/{record_id}/task-log as the real API does (token check, validation
// errors in the upstream's shapes, request ids), with logs of any size
// generated on the fly and faults injected on demand. Actions may still be
// running, their logs growing, and GET /v1/record/{record_id}/full-stages
// reports their state (running.go, stages.go).
//
// Tests, the demo mode of buildlogd and the benchmarks all use it.
package upstreamtest

import (
	"bytes"
	"cmp"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Error codes the simulated upstream answers with. The first four are the
// real API's; NotFoundCode is the simulator's own (the real code for an
// unknown record is not documented).
const (
	InvalidParameterCode = "CB.00060200"
	AuthFailedCode       = "APIGW.0301"
	APINotFoundCode      = "APIGW.0101"
	ThrottledCode        = "APIGW.0308"
	NotFoundCode         = "CB.00060404"
	// ForbiddenCode is the simulator's own too: the answer to a valid
	// token without access to the record (see Restrict).
	ForbiddenCode = "CB.00060403"
)

// Log describes one action log the server holds.
type Log struct {
	// Size is the length of the generated log in bytes. Ignored when
	// Content is set.
	Size int64
	// Content, when not nil, is served instead of generated text.
	Content []byte
	// ContentType is sent as Content-Type; default
	// "application/octet-stream".
	ContentType string
	// FileName, when not empty, is sent in Content-Disposition.
	FileName string
	// OmitLength streams the log without announcing its size: no
	// Content-Length (chunked), "*" as the total of a Content-Range, and no
	// Content-Range on a 416.
	OmitLength bool
	// IgnoreRange makes the server answer Range requests with the whole log,
	// as a server without Range support does.
	IgnoreRange bool
	// ETag, when not empty, is sent as the ETag header: the log's version.
	ETag string
}

// Request is what the server recorded of one request it received.
type Request struct {
	Path   string // decoded
	Query  map[string][]string
	Header http.Header
	// Done is closed when the server has finished answering the request,
	// whether it completed or the client went away.
	Done <-chan struct{}
}

type logKey struct{ recordID, taskName string }

const maxRecorded = 1000

// Server is a simulated upstream. Its methods are safe for concurrent use.
type Server struct {
	// URL is the base URL of the server, "http://127.0.0.1:port".
	URL string

	listener net.Listener
	http     *http.Server
	served   chan struct{}

	mu     sync.Mutex
	tokens map[string]bool
	// restricted maps a token of Restrict to the records it may read.
	restricted map[string]map[string]bool
	auth       authState // AK/SK keys and the fake IAM: auth.go
	logs       map[logKey]Log
	running    runningState // actions of AddAction: running.go
	faults     []*Fault
	requests   []Request
	count      int

	sent atomic.Int64 // body bytes written, all requests
}

// NewServer starts a server on a free loopback port. It panics if it cannot
// listen, as httptest.NewServer does. Close it when done.
func NewServer() *Server {
	s, err := Start("127.0.0.1:0")
	if err != nil {
		panic(fmt.Sprintf("upstreamtest: %v", err))
	}
	return s
}

// Start starts a server listening on addr, such as "127.0.0.1:0".
func Start(addr string) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	s := &Server{
		URL:      "http://" + ln.Addr().String(),
		listener: ln,
		served:   make(chan struct{}),
		tokens:   map[string]bool{},
		logs:     map[logKey]Log{},
		running:  runningState{epoch: time.Now()},
	}
	s.http = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(s.served)
		_ = s.http.Serve(ln)
	}()
	return s, nil
}

// Close stops the server and closes every connection at once.
func (s *Server) Close() {
	_ = s.http.Close()
	<-s.served
}

// AddToken makes the server accept token as X-Auth-Token.
func (s *Server) AddToken(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens[token] = true
}

// Restrict makes token (added with AddToken) valid for recordIDs only:
// for any other record the server answers 403 [ForbiddenCode], as to a
// user without permission on the project.
func (s *Server) Restrict(token string, recordIDs ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.restricted == nil {
		s.restricted = map[string]map[string]bool{}
	}
	allowed := map[string]bool{}
	for _, id := range recordIDs {
		allowed[id] = true
	}
	s.restricted[token] = allowed
}

// RevokeToken makes token, added with AddToken, invalid from now on.
func (s *Server) RevokeToken(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tokens, token)
}

// AddLog makes the server serve log for (recordID, taskName), at both log
// levels; generated text differs between levels.
func (s *Server) AddLog(recordID, taskName string, log Log) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.logs[logKey{recordID, taskName}] = log
	delete(s.running.actions, logKey{recordID, taskName})
}

// Content returns the bytes the server holds now for (recordID, taskName)
// at level ("INFO" or "DEBUG"; "" for the upstream's default, INFO), and
// whether it has that log: what a complete download must deliver.
func (s *Server) Content(recordID, taskName, level string) ([]byte, bool) {
	s.mu.Lock()
	log, ok := s.lookupLog(recordID, taskName)
	s.mu.Unlock()
	if !ok {
		return nil, false
	}
	if log.Content != nil {
		return bytes.Clone(log.Content), true
	}
	return Generate(log.Size, cmp.Or(level, "INFO"), taskName), true
}

// Inject queues a fault.
func (s *Server) Inject(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &f)
}

// Requests returns the last requests the server received (up to 1000),
// oldest first.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// RequestCount returns how many requests the server has received.
func (s *Server) RequestCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count
}

// BytesSent returns how many log bytes the server has written, over all
// requests: what clients pulled, buffers included.
func (s *Server) BytesSent() int64 { return s.sent.Load() }

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	requestID := newRequestID()
	w.Header().Set("X-Request-Id", requestID)
	if r.URL.Path == iamTokensPath {
		s.serveIAM(w, r)
		return
	}

	route, recordID, ok := parsePath(r.URL.Path)
	done := make(chan struct{})
	defer close(done)
	fault, access, log, found := s.record(r, route, recordID, done)
	if fault != nil && fault.After != nil {
		defer fault.After()
	}
	if fault != nil {
		if !applyFault(w, r, fault) {
			return
		}
	}
	switch {
	case !ok:
		writeError(w, http.StatusNotFound, APINotFoundCode, "The API does not exist or has not been published in the environment", requestID)
	case r.Method != http.MethodGet && r.Method != http.MethodHead:
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, APINotFoundCode, "method not allowed", requestID)
	case access == http.StatusUnauthorized:
		writeError(w, http.StatusUnauthorized, AuthFailedCode, "Incorrect IAM authentication information: verify aksk signature fail or token is missing or invalid", requestID)
	case access == http.StatusForbidden:
		writeError(w, http.StatusForbidden, ForbiddenCode, "You do not have permission to view this build record", requestID)
	case route == RouteFullStages:
		s.serveStages(w, r, recordID, fault)
	default:
		if msg := validate(r, recordID); msg != "" {
			writeError(w, http.StatusBadRequest, InvalidParameterCode, msg, requestID)
			return
		}
		if !found {
			writeError(w, http.StatusNotFound, NotFoundCode, "The build record or its action does not exist", requestID)
			return
		}
		serveLog(&countingWriter{ResponseWriter: w, n: &s.sent}, r, log, recordID, fault)
	}
}

// record notes the request and returns what answering it needs: the fault
// to apply, whether the credentials may read the record (0, or the status
// refusing them) and the log asked for, as it is now.
func (s *Server) record(r *http.Request, route, recordID string, done <-chan struct{}) (*Fault, int, Log, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.count++
	if len(s.requests) == maxRecorded {
		s.requests = s.requests[1:]
	}
	s.requests = append(s.requests, Request{
		Path:   r.URL.Path,
		Query:  r.URL.Query(),
		Header: r.Header.Clone(),
		Done:   done,
	})
	var fault *Fault
	for i, f := range s.faults {
		if (f.RecordID != "" && f.RecordID != recordID) || (f.Route != "" && f.Route != route) || (f.Token != "" && f.Token != r.Header.Get("X-Auth-Token")) {
			continue
		}
		fault = f
		if f.Times >= 0 {
			if f.Times <= 1 {
				s.faults = append(s.faults[:i:i], s.faults[i+1:]...)
			} else {
				f.Times--
			}
		}
		break
	}
	log, found := s.lookupLog(recordID, r.URL.Query().Get("task_name"))
	return fault, s.access(r, recordID), log, found
}

// validate checks parameters as the upstream does and returns the error
// message, or "" when the request is valid.
func validate(r *http.Request, recordID string) string {
	if !validRecordID(recordID) {
		return "Invalid parameter: record_id"
	}
	q := r.URL.Query()
	if len(q["task_name"]) != 1 || q.Get("task_name") == "" || utf8.RuneCountInString(q.Get("task_name")) > 1000 {
		return "Invalid parameter: task_name"
	}
	if lv, ok := q["log_level"]; ok && (len(lv) != 1 || (lv[0] != "INFO" && lv[0] != "DEBUG")) {
		return "Invalid parameter: log_level"
	}
	return ""
}

// serveLog answers with the log, honouring a single "bytes=N-" or
// "bytes=N-M" Range unless the log ignores ranges, and applying the body
// faults of f (which may be nil).
func serveLog(w http.ResponseWriter, r *http.Request, log Log, recordID string, f *Fault) {
	level := r.URL.Query().Get("log_level")
	if level == "" {
		level = "INFO"
	}
	var content io.ReaderAt
	size := log.Size
	if log.Content != nil {
		content, size = strings.NewReader(string(log.Content)), int64(len(log.Content))
	} else {
		content = newGenerator(size, level, r.URL.Query().Get("task_name"))
	}

	h := w.Header()
	h.Set("Content-Type", cmp.Or(log.ContentType, "application/octet-stream"))
	if log.ETag != "" {
		h.Set("ETag", log.ETag)
	}
	if log.FileName != "" {
		h.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": log.FileName}))
	}
	start, end, status := int64(0), size, http.StatusOK
	if !log.IgnoreRange {
		h.Set("Accept-Ranges", "bytes")
		if spec := r.Header.Get("Range"); spec != "" {
			var ok bool
			// A log without a length does not reveal it here either.
			total := strconv.FormatInt(size, 10)
			if log.OmitLength {
				total = "*"
			}
			start, end, ok = parseRange(spec, size)
			if !ok {
				if !log.OmitLength {
					h.Set("Content-Range", "bytes */"+total)
				}
				writeError(w, http.StatusRequestedRangeNotSatisfiable, InvalidParameterCode, "Range not satisfiable", h.Get("X-Request-Id"))
				return
			}
			status = http.StatusPartialContent
			h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%s", start, end-1, total))
		}
	}
	if !log.OmitLength {
		h.Set("Content-Length", strconv.FormatInt(end-start, 10))
	}
	w.WriteHeader(status)
	if log.OmitLength {
		// Flushing the headers stops net/http from adding a Content-Length
		// to a body small enough to buffer whole.
		_ = http.NewResponseController(w).Flush()
	}
	if r.Method == http.MethodHead {
		return
	}
	writeBody(w, r, io.NewSectionReader(content, start, end-start), f)
}

// writeBody copies body to w, applying the body faults of f.
func writeBody(w http.ResponseWriter, r *http.Request, body io.Reader, f *Fault) {
	rc := http.NewResponseController(w)
	if f == nil || (!f.Cut && !f.Stall && f.DripBytes <= 0) {
		_, _ = io.CopyBuffer(w, body, make([]byte, 64<<10))
		return
	}
	limit := int64(-1)
	if f.Cut || f.Stall {
		limit = f.CutAfter
		if f.Stall {
			limit = f.StallAfter
		}
	}
	step := 64 << 10
	if f.DripBytes > 0 {
		step = f.DripBytes
	}
	buf := make([]byte, step)
	for sent := int64(0); limit < 0 || sent < limit; {
		n := len(buf)
		if limit >= 0 {
			n = int(min(int64(n), limit-sent))
		}
		m, err := body.Read(buf[:n])
		if m > 0 {
			if _, werr := w.Write(buf[:m]); werr != nil {
				return
			}
			sent += int64(m)
			_ = rc.Flush()
		}
		if err != nil {
			return // the whole body was sent before the fault's point
		}
		if f.DripBytes > 0 && f.DripEvery > 0 {
			select {
			case <-time.After(f.DripEvery):
			case <-r.Context().Done():
				return
			}
		}
	}
	_ = rc.Flush()
	if f.Stall {
		<-r.Context().Done()
		return
	}
	panic(http.ErrAbortHandler) // net/http closes the connection mid-body
}

// parseRange parses a single-range "bytes=N-" or "bytes=N-M" header against
// a body of size bytes and returns the half-open range [start, end).
func parseRange(spec string, size int64) (start, end int64, ok bool) {
	v, found := strings.CutPrefix(strings.TrimSpace(spec), "bytes=")
	first, last, dash := strings.Cut(v, "-")
	if !found || !dash || strings.Contains(v, ",") {
		return 0, 0, false
	}
	start, err := strconv.ParseInt(first, 10, 64)
	if err != nil || start < 0 || start >= size {
		return 0, 0, false
	}
	end = size
	if last != "" {
		l, err := strconv.ParseInt(last, 10, 64)
		if err != nil || l < start {
			return 0, 0, false
		}
		end = min(l+1, size)
	}
	return start, end, true
}

func writeError(w http.ResponseWriter, status int, code, msg, requestID string) {
	body, _ := json.Marshal(map[string]string{"error_code": code, "error_msg": msg, "request_id": requestID})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Del("Content-Length")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	return n, err
}

func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
