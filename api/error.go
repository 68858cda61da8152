package api

import (
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Error is why a download failed, in the terms both transports tell it
// in. [Error.GRPCStatus] is what a gRPC caller receives (google.rpc.Status
// with AIP-193 details) and [Error.WriteREST] what a REST caller does (the
// upstream's error shape); both are derived here, from the same fields.
type Error struct {
	// Code is the canonical status code.
	Code codes.Code
	// Reason is the ErrorInfo reason, such as [ReasonUpstreamNotFound];
	// empty only for errors that concern no download (an unknown REST
	// path).
	Reason string
	// Message is for people: it never holds a secret.
	Message string
	// Metadata is the ErrorInfo metadata: [MetadataHTTPStatus] and
	// [MetadataUpstreamErrorCode] when the error is the upstream's answer,
	// [MetadataRequestID], [MetadataResumeOffset], [MetadataLogSize].
	Metadata map[string]string
	// RetryDelay, when positive, is how long to wait before trying again
	// (RetryInfo; REST: Retry-After).
	RetryDelay time.Duration
	// Violations list every problem of an invalid request (BadRequest).
	Violations []*errdetails.BadRequest_FieldViolation

	cause error // for the server's diagnostics; never sent
}

func (e *Error) Error() string { return e.Code.String() + ": " + e.Message }

// Unwrap returns the error e was made from, if any.
func (e *Error) Unwrap() error { return e.cause }

// WithCause returns e with cause as the error it was made from.
func (e *Error) WithCause(cause error) *Error {
	e.cause = cause
	return e
}

// GRPCStatus returns e as a gRPC status: its code and message, one
// ErrorInfo (when it has a reason), a RequestInfo when the upstream's
// request id is known, a RetryInfo when a retry delay is, and a BadRequest
// for an invalid request. grpc-go calls it for an error a handler returns.
func (e *Error) GRPCStatus() *status.Status {
	var details []protoadapt.MessageV1
	if e.Reason != "" {
		details = append(details, &errdetails.ErrorInfo{Reason: e.Reason, Domain: ErrorDomain, Metadata: e.Metadata})
	}
	if id := e.Metadata[MetadataRequestID]; id != "" {
		details = append(details, &errdetails.RequestInfo{RequestId: id})
	}
	if e.RetryDelay > 0 {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(e.RetryDelay)})
	}
	if len(e.Violations) > 0 {
		details = append(details, &errdetails.BadRequest{FieldViolations: e.Violations})
	}
	st, err := status.New(e.Code, e.Message).WithDetails(details...)
	if err != nil {
		return status.New(e.Code, e.Message) // an OK code, which no Error has
	}
	return st
}

// HTTPStatus is the REST mirror's status for e. For the upstream's answer
// (an UPSTREAM_ reason with the upstream's status) it is that status, except that throttling is always 429
// (CodeArts sends CB.00060211 as a 500) and an answer that is not an error
// status (1xx, 2xx other than 200, an unfollowed 3xx) is 502. Otherwise it
// follows the reason where one says more than the code (an upstream out of
// reach is 502, one too slow 504), and else the code, as
// google.api.Code's HTTP mapping does.
func (e *Error) HTTPStatus() int {
	if e.Reason == ReasonUpstreamThrottled {
		return http.StatusTooManyRequests
	}
	if s, err := strconv.Atoi(e.Metadata[MetadataHTTPStatus]); err == nil && strings.HasPrefix(e.Reason, "UPSTREAM_") {
		if s >= 400 && s <= 599 {
			return s
		}
		return http.StatusBadGateway
	}
	switch e.Reason {
	case ReasonUpstreamUnreachable, ReasonUpstreamProtocolError:
		return http.StatusBadGateway
	case ReasonUpstreamTimeout:
		return http.StatusGatewayTimeout
	}
	return codeHTTPStatus[e.Code]
}

var codeHTTPStatus = map[codes.Code]int{
	codes.Canceled:           499, // nginx's "client closed request"
	codes.Unknown:            http.StatusInternalServerError,
	codes.InvalidArgument:    http.StatusBadRequest,
	codes.DeadlineExceeded:   http.StatusGatewayTimeout,
	codes.NotFound:           http.StatusNotFound,
	codes.AlreadyExists:      http.StatusConflict,
	codes.PermissionDenied:   http.StatusForbidden,
	codes.ResourceExhausted:  http.StatusTooManyRequests,
	codes.FailedPrecondition: http.StatusBadRequest,
	codes.Aborted:            http.StatusConflict,
	codes.OutOfRange:         http.StatusBadRequest,
	codes.Unimplemented:      http.StatusNotImplemented,
	codes.Internal:           http.StatusInternalServerError,
	codes.Unavailable:        http.StatusServiceUnavailable,
	codes.DataLoss:           http.StatusInternalServerError,
	codes.Unauthenticated:    http.StatusUnauthorized,
}

// LocalErrorCodePrefix prefixes the REST error_code of errors that did not
// come from the upstream: "BUILDLOG." and the reason (BUILDLOG.INVALID_REQUEST)
// or, without one, the code's name (BUILDLOG.NOT_FOUND for an unknown path).
const LocalErrorCodePrefix = "BUILDLOG."

// RESTError is the REST mirror's error body, the upstream's own shape.
type RESTError struct {
	ErrorCode string `json:"error_code"`
	ErrorMsg  string `json:"error_msg"`
	RequestID string `json:"request_id,omitempty"`
}

// REST returns e's REST body: the upstream's error_code when e is its
// answer, else [LocalErrorCodePrefix] and the reason.
func (e *Error) REST() RESTError {
	doc := RESTError{ErrorCode: e.Metadata[MetadataUpstreamErrorCode], ErrorMsg: e.Message, RequestID: e.Metadata[MetadataRequestID]}
	switch {
	case doc.ErrorCode != "":
	case e.Reason != "":
		doc.ErrorCode = LocalErrorCodePrefix + e.Reason
	default:
		doc.ErrorCode = LocalErrorCodePrefix + code.Code(e.Code).String()
	}
	return doc
}

// WriteREST answers an HTTP request with e, with the given status (usually
// [Error.HTTPStatus]): the JSON body of [Error.REST], X-Request-Id, and
// Retry-After in whole seconds when a delay is known.
func (e *Error) WriteREST(w http.ResponseWriter, status int) {
	doc := e.REST()
	h := w.Header()
	if doc.RequestID != "" {
		h.Set("X-Request-Id", doc.RequestID)
	}
	if e.RetryDelay > 0 {
		h.Set("Retry-After", strconv.FormatFloat(max(math.Ceil(e.RetryDelay.Seconds()), 1), 'f', 0, 64))
	}
	h.Set("Content-Type", "application/json")
	h.Del("Content-Length")
	body, _ := json.Marshal(doc) // strings only: never fails
	w.WriteHeader(status)
	w.Write(body)
}

// FromError returns err as an *Error: the Error itself, or one read back
// from a gRPC status (its code, message and details), as callers receive
// it. It reports false for an error that is neither.
func FromError(err error) (*Error, bool) {
	if e := (*Error)(nil); errors.As(err, &e) {
		return e, true
	}
	st, ok := status.FromError(err)
	if !ok || err == nil {
		return nil, false
	}
	e := &Error{Code: st.Code(), Message: st.Message()}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			e.Reason, e.Metadata = d.GetReason(), d.GetMetadata()
		case *errdetails.RetryInfo:
			e.RetryDelay = d.GetRetryDelay().AsDuration()
		case *errdetails.BadRequest:
			e.Violations = d.GetFieldViolations()
		}
	}
	return e, true
}
