package service

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildlog/buildlog/api"
	"github.com/buildlog/buildlog/upstream"
)

// defaultThrottleDelay is the retry delay of throttling answers that carry
// no Retry-After, and of an overloaded server.
const defaultThrottleDelay = time.Second

// maxMessage caps the length of messages built from Go errors.
const maxMessage = 512

// errorRule maps upstream answers to a code and reason. An upstream error
// matches a rule when its error_code equals the rule's (if the rule names
// one) and its HTTP status is within [statusFrom, statusTo] (if the rule
// names a range).
type errorRule struct {
	errorCode            string
	statusFrom, statusTo int
	code                 codes.Code
	reason               string
}

// upstreamErrorTable is the one place where upstream answers become codes.
// Rules are tried in order and the first match wins, so error codes come
// before statuses and exact statuses before ranges. The README's error
// table mirrors it.
var upstreamErrorTable = []errorRule{
	// Throttling, whatever status it comes with: CodeArts reports
	// CB.00060211 ("too many requests") as a 500.
	{errorCode: "APIGW.0308", code: codes.ResourceExhausted, reason: api.ReasonUpstreamThrottled},
	{errorCode: "CB.00060211", code: codes.ResourceExhausted, reason: api.ReasonUpstreamThrottled},
	// "Network busy", sent as a 500, is transient.
	{errorCode: "CB.00060100", code: codes.Unavailable, reason: api.ReasonUpstreamBusy},

	{statusFrom: 400, statusTo: 400, code: codes.InvalidArgument, reason: api.ReasonUpstreamInvalidArgument},
	{statusFrom: 401, statusTo: 401, code: codes.Unauthenticated, reason: api.ReasonUpstreamUnauthenticated},
	{statusFrom: 403, statusTo: 403, code: codes.PermissionDenied, reason: api.ReasonUpstreamPermissionDenied},
	{statusFrom: 404, statusTo: 404, code: codes.NotFound, reason: api.ReasonUpstreamNotFound},
	{statusFrom: 405, statusTo: 405, code: codes.Unimplemented, reason: api.ReasonUpstreamUnimplemented},
	{statusFrom: 408, statusTo: 408, code: codes.Unavailable, reason: api.ReasonUpstreamTimeout},
	{statusFrom: 409, statusTo: 409, code: codes.Aborted, reason: api.ReasonUpstreamConflict},
	{statusFrom: 410, statusTo: 410, code: codes.NotFound, reason: api.ReasonUpstreamNotFound},
	{statusFrom: 412, statusTo: 412, code: codes.FailedPrecondition, reason: api.ReasonUpstreamFailedPrecondition},
	{statusFrom: 413, statusTo: 414, code: codes.InvalidArgument, reason: api.ReasonUpstreamRequestTooLarge},
	{statusFrom: 416, statusTo: 416, code: codes.OutOfRange, reason: api.ReasonUpstreamOutOfRange},
	{statusFrom: 429, statusTo: 429, code: codes.ResourceExhausted, reason: api.ReasonUpstreamThrottled},
	{statusFrom: 431, statusTo: 431, code: codes.InvalidArgument, reason: api.ReasonUpstreamRequestTooLarge},
	{statusFrom: 400, statusTo: 499, code: codes.FailedPrecondition, reason: api.ReasonUpstreamRejected},

	{statusFrom: 500, statusTo: 500, code: codes.Internal, reason: api.ReasonUpstreamInternal},
	{statusFrom: 501, statusTo: 501, code: codes.Unimplemented, reason: api.ReasonUpstreamUnimplemented},
	{statusFrom: 502, statusTo: 504, code: codes.Unavailable, reason: api.ReasonUpstreamUnavailable},
	{statusFrom: 500, statusTo: 599, code: codes.Internal, reason: api.ReasonUpstreamInternal},

	// 1xx, 3xx that were not followed, and 2xx other than 200.
	{code: codes.Unknown, reason: api.ReasonUpstreamUnexpectedStatus},
}

// classify returns the rule for an upstream error answer.
func classify(httpStatus int, errorCode string) errorRule {
	for _, r := range upstreamErrorTable {
		if r.errorCode != "" && r.errorCode != errorCode {
			continue
		}
		if r.statusFrom != 0 && (httpStatus < r.statusFrom || httpStatus > r.statusTo) {
			continue
		}
		return r
	}
	panic("unreachable: the table ends with a catch-all rule")
}

// newError returns an *api.Error. Messages built from Go errors are capped.
func newError(code codes.Code, reason, msg string, md map[string]string) *api.Error {
	return &api.Error{Code: code, Reason: reason, Message: capMessage(msg), Metadata: md}
}

// offsetError is a request offset beyond the end of the log.
func offsetError(offset, size int64) *api.Error {
	return newError(codes.OutOfRange, api.ReasonOffsetOutOfRange,
		fmt.Sprintf("offset %d is beyond the end of the log (%d bytes)", offset, size),
		map[string]string{api.MetadataLogSize: strconv.FormatInt(size, 10)})
}

// overloadedError is a call beyond the cap on downloads in flight.
func overloadedError(limit int) *api.Error {
	e := newError(codes.ResourceExhausted, api.ReasonOverloaded,
		fmt.Sprintf("the server is at its limit of %d downloads in flight; retry shortly, or on another instance", limit), nil)
	e.RetryDelay = defaultThrottleDelay
	return e
}

// callerIdleError ends a download whose caller accepted nothing for idle,
// at pos.
func callerIdleError(idle time.Duration, pos int64) *api.Error {
	return newError(codes.Unavailable, api.ReasonCallerIdle,
		fmt.Sprintf("the caller accepted no bytes for %s, so the download was ended to free its slot; request the rest with offset=%d", idle, pos),
		map[string]string{api.MetadataResumeOffset: strconv.FormatInt(pos, 10)})
}

// interruptedError is a failure reading the upstream body after the
// response headers, at resumeOffset, in the upstream's answer requestID.
type interruptedError struct {
	resumeOffset int64
	requestID    string
	err          error
}

func (e *interruptedError) Error() string {
	return fmt.Sprintf("read upstream log at offset %d: %v", e.resumeOffset, e.err)
}

func (e *interruptedError) Unwrap() error { return e.err }

// toError converts an error of a download into what its caller is told. It
// is the only place where the service's and the upstream's errors become
// [api.Error]s.
func toError(ctx context.Context, err error) *api.Error {
	// The caller's cancellation or deadline explains whatever failed after it.
	switch ctx.Err() {
	case context.Canceled:
		return newError(codes.Canceled, api.ReasonCanceled, "the call was cancelled by the caller", nil).WithCause(err)
	case context.DeadlineExceeded:
		return newError(codes.DeadlineExceeded, api.ReasonDeadlineExceeded, "the caller's deadline passed before the log was delivered", nil).WithCause(err)
	}
	var (
		apiErr      *api.Error
		interrupted *interruptedError
		upErr       *upstream.Error
		protoErr    *upstream.ProtocolError
		changed     *upstream.ChangedError
		credErr     *upstream.CredentialsError
	)
	switch {
	case errors.As(err, &apiErr):
		return apiErr
	case errors.As(err, &changed):
		return newError(codes.Aborted, api.ReasonLogChanged, changed.Error()+"; download it again from the start",
			map[string]string{api.MetadataResumeOffset: "0"}).WithCause(err)
	case errors.As(err, &protoErr):
		return newError(codes.Internal, api.ReasonUpstreamProtocolError, protoErr.Error(), nil).WithCause(err)
	case errors.As(err, &interrupted):
		msg := fmt.Sprintf("the upstream log broke off at offset %d (%s); request the rest with offset=%d",
			interrupted.resumeOffset, connProblem(interrupted.err), interrupted.resumeOffset)
		md := map[string]string{api.MetadataResumeOffset: strconv.FormatInt(interrupted.resumeOffset, 10)}
		if id := interrupted.requestID; id != "" {
			md[api.MetadataRequestID] = id
		}
		return newError(codes.Unavailable, api.ReasonUpstreamInterrupted, msg, md).WithCause(err)
	case errors.As(err, &upErr):
		return upstreamError(upErr)
	case errors.As(err, &credErr):
		return credentialsError(credErr)
	}
	if st, ok := status.FromError(err); ok {
		// From the transport, such as a send on a stream that broke.
		return newError(st.Code(), "", st.Message(), nil).WithCause(err)
	}
	if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
		return newError(codes.Unavailable, api.ReasonUpstreamTimeout, "the upstream did not answer in time", nil).WithCause(err)
	}
	return newError(codes.Unavailable, api.ReasonUpstreamUnreachable, "cannot reach the upstream: "+connProblem(err), nil).WithCause(err)
}

// connProblem says in a few words what went wrong with the connection to
// the upstream: callers get these, not Go's network errors, which name
// addresses and system calls (the access log has those, as "cause").
func connProblem(err error) string {
	var (
		dns     *net.DNSError
		unknown x509.UnknownAuthorityError
		host    x509.HostnameError
		cert    *tls.CertificateVerificationError
		changed *upstream.ChangedError
		up      *upstream.Error
	)
	switch {
	case errors.As(err, &changed), errors.As(err, &up):
		return err.Error() // buildlog's and the upstream's own words
	case errors.Is(err, upstream.ErrIdleTimeout):
		return "it sent nothing for the idle timeout"
	case errors.As(err, &dns):
		return "its host name does not resolve"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "it refused the connection"
	case errors.Is(err, syscall.ECONNRESET):
		return "it reset the connection"
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "it closed the connection early"
	case errors.As(err, &unknown), errors.As(err, &host), errors.As(err, &cert):
		return "its TLS certificate is not trusted"
	}
	return "the connection failed"
}

// credentialsError converts a failure to obtain the server's credentials:
// UNAVAILABLE when it may pass (IAM down), INTERNAL when the server's
// configuration is wrong. The message names the step and IAM's status only.
func credentialsError(e *upstream.CredentialsError) *api.Error {
	var md map[string]string
	if e.StatusCode != 0 {
		md = map[string]string{api.MetadataHTTPStatus: strconv.Itoa(e.StatusCode)}
	}
	if e.Temporary {
		return newError(codes.Unavailable, api.ReasonCredentialsUnavailable, e.Error(), md).WithCause(e)
	}
	return newError(codes.Internal, api.ReasonCredentialsRejected, e.Error(), md).WithCause(e)
}

// upstreamError converts an upstream error answer, following
// upstreamErrorTable.
func upstreamError(e *upstream.Error) *api.Error {
	rule := classify(e.StatusCode, e.Code)
	msg := e.Message
	if msg == "" {
		msg = fmt.Sprintf("the upstream answered HTTP %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	}
	md := map[string]string{api.MetadataHTTPStatus: strconv.Itoa(e.StatusCode)}
	if e.Code != "" {
		md[api.MetadataUpstreamErrorCode] = e.Code
	}
	if e.RequestID != "" {
		md[api.MetadataRequestID] = e.RequestID
	}
	out := newError(rule.code, rule.reason, msg, md).WithCause(e)
	out.RetryDelay = e.RetryAfter
	if out.RetryDelay == 0 && rule.code == codes.ResourceExhausted {
		out.RetryDelay = defaultThrottleDelay
	}
	return out
}

// capMessage caps a message built from Go errors, on a rune boundary.
func capMessage(s string) string {
	if len(s) <= maxMessage {
		return s
	}
	cut := maxMessage - 3
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}
