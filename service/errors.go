package service

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/buildlog/buildlog/upstream"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of every error the service
// returns.
const ErrorDomain = "buildlog"

// ErrorInfo metadata keys.
const (
	// MetadataHTTPStatus is the upstream's HTTP status, such as "404".
	MetadataHTTPStatus = "httpStatus"
	// MetadataUpstreamErrorCode is the upstream's error_code, such as
	// "CB.00060200", when it sent one.
	MetadataUpstreamErrorCode = "upstreamErrorCode"
	// MetadataRequestID is the upstream's request id, when it sent one.
	MetadataRequestID = "requestId"
	// MetadataResumeOffset is, after a failure, the log offset from which
	// the caller should request the rest of the log.
	MetadataResumeOffset = "resumeOffset"
	// MetadataLogSize is the log's size in bytes, on OUT_OF_RANGE.
	MetadataLogSize = "logSize"
)

// ErrorInfo reasons. Those of errors found by the service itself have no
// UPSTREAM_ prefix.
const (
	ReasonInvalidRequest   = "INVALID_REQUEST"
	ReasonMissingToken     = "MISSING_TOKEN"
	ReasonInvalidToken     = "INVALID_TOKEN"
	ReasonOffsetOutOfRange = "OFFSET_OUT_OF_RANGE"
	ReasonCanceled         = "CANCELED"
	ReasonDeadlineExceeded = "DEADLINE_EXCEEDED"

	ReasonUpstreamInvalidArgument    = "UPSTREAM_INVALID_ARGUMENT"
	ReasonUpstreamUnauthenticated    = "UPSTREAM_UNAUTHENTICATED"
	ReasonUpstreamPermissionDenied   = "UPSTREAM_PERMISSION_DENIED"
	ReasonUpstreamNotFound           = "UPSTREAM_NOT_FOUND"
	ReasonUpstreamUnimplemented      = "UPSTREAM_UNIMPLEMENTED"
	ReasonUpstreamTimeout            = "UPSTREAM_TIMEOUT"
	ReasonUpstreamConflict           = "UPSTREAM_CONFLICT"
	ReasonUpstreamFailedPrecondition = "UPSTREAM_FAILED_PRECONDITION"
	ReasonUpstreamRequestTooLarge    = "UPSTREAM_REQUEST_TOO_LARGE"
	ReasonUpstreamOutOfRange         = "UPSTREAM_OUT_OF_RANGE"
	ReasonUpstreamThrottled          = "UPSTREAM_THROTTLED"
	ReasonUpstreamBusy               = "UPSTREAM_BUSY"
	ReasonUpstreamRejected           = "UPSTREAM_REJECTED"
	ReasonUpstreamInternal           = "UPSTREAM_INTERNAL"
	ReasonUpstreamUnavailable        = "UPSTREAM_UNAVAILABLE"
	ReasonUpstreamUnexpectedStatus   = "UPSTREAM_UNEXPECTED_STATUS"
	ReasonUpstreamUnreachable        = "UPSTREAM_UNREACHABLE"
	ReasonUpstreamInterrupted        = "UPSTREAM_INTERRUPTED"
	ReasonUpstreamProtocolError      = "UPSTREAM_PROTOCOL_ERROR"
	ReasonLogChanged                 = "LOG_CHANGED"
	ReasonOverloaded                 = "OVERLOADED"

	// The server's own upstream credentials (used for authenticated callers
	// without a token) could not be obtained: IAM unreachable or failing,
	// or refusing the server's password.
	ReasonCredentialsUnavailable = "SERVER_CREDENTIALS_UNAVAILABLE"
	ReasonCredentialsRejected    = "SERVER_CREDENTIALS_REJECTED"
)

// defaultThrottleDelay is the RetryInfo delay for throttling answers that
// carry no Retry-After.
const defaultThrottleDelay = time.Second

// maxStatusMessage caps the length of status messages built from Go errors.
const maxStatusMessage = 512

// errorRule maps upstream answers to a gRPC code. An upstream error matches
// a rule when its error_code equals the rule's (if the rule names one) and
// its HTTP status is within [statusFrom, statusTo] (if the rule names a
// range).
type errorRule struct {
	errorCode            string
	statusFrom, statusTo int
	code                 codes.Code
	reason               string
}

// upstreamErrorTable is the one place where upstream errors become gRPC
// codes. Rules are tried in order and the first match wins, so error codes
// come before statuses and exact statuses before ranges. The README's error
// table mirrors it.
var upstreamErrorTable = []errorRule{
	// Throttling, whatever status it comes with: CodeArts reports
	// CB.00060211 ("too many requests") as a 500.
	{errorCode: "APIGW.0308", code: codes.ResourceExhausted, reason: ReasonUpstreamThrottled},
	{errorCode: "CB.00060211", code: codes.ResourceExhausted, reason: ReasonUpstreamThrottled},
	// "Network busy", sent as a 500, is transient.
	{errorCode: "CB.00060100", code: codes.Unavailable, reason: ReasonUpstreamBusy},

	{statusFrom: 400, statusTo: 400, code: codes.InvalidArgument, reason: ReasonUpstreamInvalidArgument},
	{statusFrom: 401, statusTo: 401, code: codes.Unauthenticated, reason: ReasonUpstreamUnauthenticated},
	{statusFrom: 403, statusTo: 403, code: codes.PermissionDenied, reason: ReasonUpstreamPermissionDenied},
	{statusFrom: 404, statusTo: 404, code: codes.NotFound, reason: ReasonUpstreamNotFound},
	{statusFrom: 405, statusTo: 405, code: codes.Unimplemented, reason: ReasonUpstreamUnimplemented},
	{statusFrom: 408, statusTo: 408, code: codes.Unavailable, reason: ReasonUpstreamTimeout},
	{statusFrom: 409, statusTo: 409, code: codes.Aborted, reason: ReasonUpstreamConflict},
	{statusFrom: 410, statusTo: 410, code: codes.NotFound, reason: ReasonUpstreamNotFound},
	{statusFrom: 412, statusTo: 412, code: codes.FailedPrecondition, reason: ReasonUpstreamFailedPrecondition},
	{statusFrom: 413, statusTo: 414, code: codes.InvalidArgument, reason: ReasonUpstreamRequestTooLarge},
	{statusFrom: 416, statusTo: 416, code: codes.OutOfRange, reason: ReasonUpstreamOutOfRange},
	{statusFrom: 429, statusTo: 429, code: codes.ResourceExhausted, reason: ReasonUpstreamThrottled},
	{statusFrom: 431, statusTo: 431, code: codes.InvalidArgument, reason: ReasonUpstreamRequestTooLarge},
	{statusFrom: 400, statusTo: 499, code: codes.FailedPrecondition, reason: ReasonUpstreamRejected},

	{statusFrom: 500, statusTo: 500, code: codes.Internal, reason: ReasonUpstreamInternal},
	{statusFrom: 501, statusTo: 501, code: codes.Unimplemented, reason: ReasonUpstreamUnimplemented},
	{statusFrom: 502, statusTo: 504, code: codes.Unavailable, reason: ReasonUpstreamUnavailable},
	{statusFrom: 500, statusTo: 599, code: codes.Internal, reason: ReasonUpstreamInternal},

	// 1xx, 3xx that were not followed, and 2xx other than 200.
	{code: codes.Unknown, reason: ReasonUpstreamUnexpectedStatus},
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

// offsetError is a request offset beyond the end of the log.
type offsetError struct {
	offset, size int64
}

func (e *offsetError) Error() string {
	return fmt.Sprintf("offset %d is beyond the end of the log (%d bytes)", e.offset, e.size)
}

// overloadedError is a call beyond the cap on downloads in flight.
type overloadedError struct {
	limit int
}

func (e *overloadedError) Error() string {
	return fmt.Sprintf("the server is at its limit of %d downloads in flight; retry shortly, or on another instance", e.limit)
}

// overloadRetryDelay is the RetryInfo delay of an overloaded server.
const overloadRetryDelay = time.Second

// interruptedError is a failure reading the upstream body, after the
// response headers; resumeOffset is the log offset the caller has received
// up to, requestID the upstream's id of the response that broke.
type interruptedError struct {
	resumeOffset int64
	requestID    string
	err          error
}

func (e *interruptedError) Error() string {
	return fmt.Sprintf("read upstream log at offset %d: %v", e.resumeOffset, e.err)
}

func (e *interruptedError) Unwrap() error { return e.err }

// toStatus converts an error of DownloadTaskLog into the status the caller
// receives. It is the only place where the service's errors become gRPC
// statuses.
func toStatus(ctx context.Context, err error) *status.Status {
	// The caller's cancellation or deadline explains whatever failed after it.
	switch ctx.Err() {
	case context.Canceled:
		return newStatus(codes.Canceled, "the call was cancelled by the caller", ReasonCanceled, nil)
	case context.DeadlineExceeded:
		return newStatus(codes.DeadlineExceeded, "the caller's deadline passed before the log was delivered", ReasonDeadlineExceeded, nil)
	}

	var (
		invalid     *invalidRequestError
		tokenErr    *tokenError
		offsetErr   *offsetError
		interrupted *interruptedError
		upErr       *upstream.Error
		protoErr    *upstream.ProtocolError
		changed     *upstream.ChangedError
		overloaded  *overloadedError
		credErr     *upstream.CredentialsError
	)
	switch {
	case errors.As(err, &overloaded):
		return withDetails(newStatus(codes.ResourceExhausted, overloaded.Error(), ReasonOverloaded, nil),
			&errdetails.RetryInfo{RetryDelay: durationpb.New(overloadRetryDelay)})
	case errors.As(err, &changed):
		return newStatus(codes.Aborted, capMessage(changed.Error()+"; download it again from the start"), ReasonLogChanged,
			map[string]string{MetadataResumeOffset: "0"})
	case errors.As(err, &invalid):
		st := newStatus(codes.InvalidArgument, invalid.Error(), ReasonInvalidRequest, nil)
		return withDetails(st, &errdetails.BadRequest{FieldViolations: invalid.violations})
	case errors.As(err, &tokenErr):
		return newStatus(codes.Unauthenticated, tokenErr.message, tokenErr.reason, nil)
	case errors.As(err, &offsetErr):
		return newStatus(codes.OutOfRange, offsetErr.Error(), ReasonOffsetOutOfRange,
			map[string]string{MetadataLogSize: strconv.FormatInt(offsetErr.size, 10)})
	case errors.As(err, &interrupted):
		msg := fmt.Sprintf("the upstream log broke off at offset %d (%v); request the rest with offset=%d",
			interrupted.resumeOffset, interrupted.err, interrupted.resumeOffset)
		md := map[string]string{MetadataResumeOffset: strconv.FormatInt(interrupted.resumeOffset, 10)}
		var extra []protoadapt.MessageV1
		if id := interrupted.requestID; id != "" {
			md[MetadataRequestID] = id
			extra = append(extra, &errdetails.RequestInfo{RequestId: id})
		}
		return withDetails(newStatus(codes.Unavailable, capMessage(msg), ReasonUpstreamInterrupted, md), extra...)
	case errors.As(err, &upErr):
		return upstreamStatus(upErr)
	case errors.As(err, &credErr):
		return credentialsStatus(credErr)
	case errors.As(err, &protoErr):
		return newStatus(codes.Internal, capMessage(protoErr.Error()), ReasonUpstreamProtocolError, nil)
	}
	if st, ok := status.FromError(err); ok {
		return st // from grpc-go itself, such as a failed Send
	}
	if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
		return newStatus(codes.Unavailable, capMessage("the upstream did not answer in time: "+err.Error()), ReasonUpstreamTimeout, nil)
	}
	return newStatus(codes.Unavailable, capMessage("cannot reach the upstream: "+err.Error()), ReasonUpstreamUnreachable, nil)
}

// credentialsStatus converts a failure to obtain the server's credentials:
// UNAVAILABLE when it may pass (IAM down), INTERNAL when the server's
// configuration is wrong. The message names the step and IAM's status only.
func credentialsStatus(e *upstream.CredentialsError) *status.Status {
	var md map[string]string
	if e.StatusCode != 0 {
		md = map[string]string{MetadataHTTPStatus: strconv.Itoa(e.StatusCode)}
	}
	if e.Temporary {
		return newStatus(codes.Unavailable, capMessage(e.Error()), ReasonCredentialsUnavailable, md)
	}
	return newStatus(codes.Internal, capMessage(e.Error()), ReasonCredentialsRejected, md)
}

// upstreamStatus converts an upstream error answer, following
// upstreamErrorTable.
func upstreamStatus(e *upstream.Error) *status.Status {
	rule := classify(e.StatusCode, e.Code)
	msg := e.Message
	if msg == "" {
		msg = fmt.Sprintf("the upstream answered HTTP %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	}
	md := map[string]string{MetadataHTTPStatus: strconv.Itoa(e.StatusCode)}
	if e.Code != "" {
		md[MetadataUpstreamErrorCode] = e.Code
	}
	if e.RequestID != "" {
		md[MetadataRequestID] = e.RequestID
	}
	var extra []protoadapt.MessageV1
	if e.RequestID != "" {
		extra = append(extra, &errdetails.RequestInfo{RequestId: e.RequestID})
	}
	delay := e.RetryAfter
	if delay == 0 && rule.code == codes.ResourceExhausted {
		delay = defaultThrottleDelay
	}
	if delay > 0 {
		extra = append(extra, &errdetails.RetryInfo{RetryDelay: durationpb.New(delay)})
	}
	return withDetails(newStatus(rule.code, msg, rule.reason, md), extra...)
}

// newStatus returns a status carrying one ErrorInfo.
func newStatus(code codes.Code, msg, reason string, md map[string]string) *status.Status {
	return withDetails(status.New(code, msg), &errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain, Metadata: md})
}

func withDetails(st *status.Status, details ...protoadapt.MessageV1) *status.Status {
	withD, err := st.WithDetails(details...)
	if err != nil {
		panic(err) // only for an OK status, which is never passed here
	}
	return withD
}

// capMessage caps a message built from Go errors, on a rune boundary.
func capMessage(s string) string {
	if len(s) <= maxStatusMessage {
		return s
	}
	cut := maxStatusMessage - 3
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}
