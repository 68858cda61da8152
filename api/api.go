// Package api holds what buildlog's servers and callers share beyond the
// generated stubs (gen/buildlog/v1): the request metadata keys, the
// google.rpc.ErrorInfo domain, reasons and metadata keys of its errors,
// and [Error], the one error type of a download, with the gRPC status and
// the REST answer derived from it side by side (error.go).
//
// It imports only the generated code and gRPC's status types, so a client
// importing it pulls in nothing of the server.
package api

import (
	"net/url"

	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
)

// Request metadata.
const (
	// TokenMetadataKey is the request metadata key that carries the
	// caller's IAM token (REST: the X-Auth-Token header), sent upstream as
	// X-Auth-Token.
	TokenMetadataKey = "x-auth-token"
	// MaxTokenLength is the longest token accepted, in bytes, as the
	// upstream's OpenAPI definition allows.
	MaxTokenLength = 100_000
	// LogKeyMetadataKey is the request metadata key (REST: the
	// Buildlog-Log-Key header) naming the log a call reads, for a proxy
	// or mesh to route on with consistent hashing: calls for one log then
	// reach one replica, where they share upstream reads. Its value is
	// [LogKey]'s. buildlogd itself ignores it: a missing or wrong key
	// costs sharing, never correctness.
	LogKeyMetadataKey = "buildlog-log-key"
)

// LogKey is the routing key of a log: its record id, task name and log
// level (INFO unless DEBUG), query-escaped and joined by "/", such as
// "0a1b…/stage1/INFO". The REST mirror's proxies derive the same key from
// the path and query (deploy/nginx).
func LogKey(recordID, taskName string, level buildlogv1.LogLevel) string {
	lvl := "INFO"
	if level == buildlogv1.LogLevel_LOG_LEVEL_DEBUG {
		lvl = "DEBUG"
	}
	return url.QueryEscape(recordID) + "/" + url.QueryEscape(taskName) + "/" + lvl
}

// ErrorDomain is the google.rpc.ErrorInfo domain of every error buildlog
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

// ErrorInfo reasons. Those of errors found by buildlog itself have no
// UPSTREAM_ prefix.
const (
	ReasonInvalidRequest   = "INVALID_REQUEST"
	ReasonMissingToken     = "MISSING_TOKEN"
	ReasonInvalidToken     = "INVALID_TOKEN"
	ReasonOffsetOutOfRange = "OFFSET_OUT_OF_RANGE"
	ReasonCanceled         = "CANCELED"
	ReasonDeadlineExceeded = "DEADLINE_EXCEEDED"
	ReasonOverloaded       = "OVERLOADED"
	// ReasonCallerIdle ends a download whose caller accepted no bytes for
	// the server's caller idle timeout.
	ReasonCallerIdle = "CALLER_IDLE"
	// ReasonConnectionClosing refuses a call on a connection being closed
	// because its client cancelled calls faster than any client needs
	// (HTTP/2 rapid reset): reconnect.
	ReasonConnectionClosing = "CONNECTION_CLOSING"
	// ReasonRangeNotSatisfiable is a REST Range that starts at or past the
	// end of the log (HTTP 416).
	ReasonRangeNotSatisfiable = "RANGE_NOT_SATISFIABLE"
	// ReasonLogChanged: the log changed between a break and its
	// resumption; start over.
	ReasonLogChanged = "LOG_CHANGED"
	// ReasonFollowTimeLimit ends a followed download that ran for the
	// server's --follow-max-duration: resume it from resumeOffset.
	ReasonFollowTimeLimit = "FOLLOW_TIME_LIMIT"
	// ReasonFollowInterrupted ends a followed download because the server
	// shuts down or the connection reached its maximum age: resume it from
	// resumeOffset, on a new connection.
	ReasonFollowInterrupted = "FOLLOW_INTERRUPTED"

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

	// The server's own upstream credentials (used for authenticated callers
	// without a token) could not be obtained: IAM unreachable or failing,
	// or refusing the server's password.
	ReasonCredentialsUnavailable = "SERVER_CREDENTIALS_UNAVAILABLE"
	ReasonCredentialsRejected    = "SERVER_CREDENTIALS_REJECTED"
)
