package service

import (
	"context"
	"fmt"
	"strings"
	"unicode/utf8"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/metadata"

	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
)

// TokenMetadataKey is the request metadata key that carries the caller's IAM
// token, sent upstream as X-Auth-Token.
const TokenMetadataKey = "x-auth-token"

// MaxTokenLength is the longest IAM token accepted, in bytes, as the
// upstream's OpenAPI definition allows.
const MaxTokenLength = 100_000

// Limits on request fields, from the upstream's OpenAPI definition.
const (
	recordIDLength  = 36
	maxTaskNameLen  = 1000 // characters
	recordIDCharset = "0123456789abcdefghijklmnopqrstuvwxyz-"
)

// invalidRequestError lists every problem found in a request.
type invalidRequestError struct {
	violations []*errdetails.BadRequest_FieldViolation
}

func (e *invalidRequestError) Error() string {
	parts := make([]string, len(e.violations))
	for i, v := range e.violations {
		parts[i] = v.GetField() + ": " + v.GetDescription()
	}
	return "invalid request: " + strings.Join(parts, "; ")
}

// validate checks req against the upstream's rules, so that a request the
// upstream would refuse never leaves the service.
func validate(req *buildlogv1.DownloadTaskLogRequest) error {
	var e invalidRequestError
	add := func(field, format string, args ...any) {
		e.violations = append(e.violations, &errdetails.BadRequest_FieldViolation{
			Field:       field,
			Description: fmt.Sprintf(format, args...),
		})
	}
	if id := req.GetRecordId(); id == "" {
		add("record_id", "is required: the build record id, 36 characters of [0-9a-z-]")
	} else if len(id) != recordIDLength || strings.Trim(id, recordIDCharset) != "" {
		add("record_id", "must be exactly 36 characters of [0-9a-z-] (lower case), got %d bytes", len(id))
	}
	if n := utf8.RuneCountInString(req.GetTaskName()); n == 0 {
		add("task_name", `is required: the build action, such as "stage1"`)
	} else if n > maxTaskNameLen {
		add("task_name", "must be at most %d characters, got %d", maxTaskNameLen, n)
	}
	if _, ok := buildlogv1.LogLevel_name[int32(req.GetLogLevel())]; !ok {
		add("log_level", "unknown value %d: use LOG_LEVEL_INFO or LOG_LEVEL_DEBUG", req.GetLogLevel())
	}
	if req.GetOffset() < 0 {
		add("offset", "must not be negative, got %d", req.GetOffset())
	}
	if req.GetLimit() < 0 {
		add("limit", "must not be negative (0 means to the end of the log), got %d", req.GetLimit())
	}
	if len(e.violations) > 0 {
		return &e
	}
	return nil
}

// tokenError is a missing or unusable token.
type tokenError struct {
	reason  string
	message string
}

func (e *tokenError) Error() string { return e.message }

// tokenFromContext returns the caller's token from the request metadata.
// The token is checked only for what would make it unusable or unsafe as an
// HTTP header value; the upstream decides whether it is valid.
func tokenFromContext(ctx context.Context) (string, error) {
	values := metadata.ValueFromIncomingContext(ctx, TokenMetadataKey)
	switch {
	case len(values) == 0 || values[0] == "":
		return "", &tokenError{ReasonMissingToken, "missing IAM token: send it in the request metadata key " + TokenMetadataKey + " (REST: the X-Auth-Token header)"}
	case len(values) > 1:
		return "", &tokenError{ReasonInvalidToken, "more than one " + TokenMetadataKey + " value: send exactly one token"}
	case len(values[0]) > MaxTokenLength:
		return "", &tokenError{ReasonInvalidToken, fmt.Sprintf("the IAM token is %d bytes long; at most %d are accepted", len(values[0]), MaxTokenLength)}
	}
	token := values[0]
	for i := range len(token) {
		if c := token[i]; c < 0x21 || c > 0x7e {
			return "", &tokenError{ReasonInvalidToken, fmt.Sprintf("the IAM token has a forbidden character at byte %d: only printable ASCII without spaces is accepted", i)}
		}
	}
	return token, nil
}
