package service

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"

	"github.com/buildlog/buildlog/api"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
)

// Limits on request fields, from the upstream's OpenAPI definition.
const (
	recordIDLength  = 36
	maxTaskNameLen  = 1000 // characters
	recordIDCharset = "0123456789abcdefghijklmnopqrstuvwxyz-"
)

// Violation is one problem with a request: its field (the proto field's
// name, which the REST query parameter shares) and what is wrong.
type Violation struct {
	Field, Description string
}

// validate checks req against the upstream's rules, so that a request the
// upstream would refuse never leaves the service, and reports every
// problem, those the transport found first.
func validate(req *buildlogv1.DownloadTaskLogRequest, found []Violation) error {
	vs := found
	add := func(field, format string, args ...any) {
		vs = append(vs, Violation{field, fmt.Sprintf(format, args...)})
	}
	if id := req.GetRecordId(); id == "" {
		add("record_id", "is required: the build record id, 36 characters of [0-9a-z-]")
	} else if i := strings.IndexFunc(id, func(r rune) bool { return !strings.ContainsRune(recordIDCharset, r) }); i >= 0 {
		r, _ := utf8.DecodeRuneInString(id[i:])
		add("record_id", "must be 36 characters of [0-9a-z-] (lower case): character %d is %q", utf8.RuneCountInString(id[:i])+1, r)
	} else if len(id) != recordIDLength {
		add("record_id", "must be exactly 36 characters of [0-9a-z-], got %d", len(id))
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
	if len(vs) == 0 {
		return nil
	}
	e := &api.Error{Code: codes.InvalidArgument, Reason: api.ReasonInvalidRequest}
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = v.Field + ": " + v.Description
		e.Violations = append(e.Violations, &errdetails.BadRequest_FieldViolation{Field: v.Field, Description: v.Description})
	}
	e.Message = capMessage("invalid request: " + strings.Join(parts, "; "))
	return e
}

// tokenError is a missing or unusable token.
func tokenError(reason, msg string) *api.Error {
	return &api.Error{Code: codes.Unauthenticated, Reason: reason, Message: msg}
}

// callerToken returns the caller's token, or "" to use the server's
// credentials: when the caller sent none, the server has some and the
// caller is authenticated (see caller.go). The token is checked only for
// what would make it unusable or unsafe as an HTTP header value; the
// upstream decides whether it is valid.
func (s *Service) callerToken(c Caller) (string, error) {
	switch {
	case len(c.Tokens) == 0 || c.Tokens[0] == "":
		if s.callers.authenticated(c) {
			return "", nil
		}
		msg := "missing IAM token: send it in the request metadata key " + api.TokenMetadataKey + " (REST: the X-Auth-Token header)"
		if s.callers != nil {
			msg += "; or authenticate to buildlog (a client certificate or a bearer token it accepts) to use its credentials"
		}
		return "", tokenError(api.ReasonMissingToken, msg)
	case len(c.Tokens) > 1:
		return "", tokenError(api.ReasonInvalidToken, "more than one "+api.TokenMetadataKey+" value: send exactly one token")
	case len(c.Tokens[0]) > api.MaxTokenLength:
		return "", tokenError(api.ReasonInvalidToken, fmt.Sprintf("the IAM token is %d bytes long; at most %d are accepted", len(c.Tokens[0]), api.MaxTokenLength))
	}
	token := c.Tokens[0]
	for i := range len(token) {
		if c := token[i]; c < 0x21 || c > 0x7e {
			return "", tokenError(api.ReasonInvalidToken, fmt.Sprintf("the IAM token has a forbidden character at byte %d: only printable ASCII without spaces is accepted", i))
		}
	}
	return token, nil
}
