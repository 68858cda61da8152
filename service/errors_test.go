package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/buildlog/buildlog/upstream"
)

func TestClassify(t *testing.T) {
	t.Parallel()
	tests := []struct {
		status     int
		errorCode  string
		wantCode   codes.Code
		wantReason string
	}{
		{400, "CB.00060200", codes.InvalidArgument, ReasonUpstreamInvalidArgument},
		{401, "APIGW.0301", codes.Unauthenticated, ReasonUpstreamUnauthenticated},
		{403, "", codes.PermissionDenied, ReasonUpstreamPermissionDenied},
		{404, "APIGW.0101", codes.NotFound, ReasonUpstreamNotFound},
		{405, "", codes.Unimplemented, ReasonUpstreamUnimplemented},
		{408, "", codes.Unavailable, ReasonUpstreamTimeout},
		{409, "", codes.Aborted, ReasonUpstreamConflict},
		{410, "", codes.NotFound, ReasonUpstreamNotFound},
		{412, "", codes.FailedPrecondition, ReasonUpstreamFailedPrecondition},
		{413, "", codes.InvalidArgument, ReasonUpstreamRequestTooLarge},
		{414, "", codes.InvalidArgument, ReasonUpstreamRequestTooLarge},
		{416, "", codes.OutOfRange, ReasonUpstreamOutOfRange},
		{418, "", codes.FailedPrecondition, ReasonUpstreamRejected},
		{429, "", codes.ResourceExhausted, ReasonUpstreamThrottled},
		{429, "APIGW.0308", codes.ResourceExhausted, ReasonUpstreamThrottled},
		{403, "APIGW.0308", codes.ResourceExhausted, ReasonUpstreamThrottled},
		{431, "", codes.InvalidArgument, ReasonUpstreamRequestTooLarge},
		{451, "", codes.FailedPrecondition, ReasonUpstreamRejected},
		{500, "CB.00060211", codes.ResourceExhausted, ReasonUpstreamThrottled},
		{500, "CB.00060100", codes.Unavailable, ReasonUpstreamBusy},
		{500, "CB.00060101", codes.Internal, ReasonUpstreamInternal},
		{500, "", codes.Internal, ReasonUpstreamInternal},
		{501, "", codes.Unimplemented, ReasonUpstreamUnimplemented},
		{502, "", codes.Unavailable, ReasonUpstreamUnavailable},
		{503, "", codes.Unavailable, ReasonUpstreamUnavailable},
		{504, "", codes.Unavailable, ReasonUpstreamUnavailable},
		{505, "", codes.Internal, ReasonUpstreamInternal},
		{599, "", codes.Internal, ReasonUpstreamInternal},
		{201, "", codes.Unknown, ReasonUpstreamUnexpectedStatus},
		{204, "", codes.Unknown, ReasonUpstreamUnexpectedStatus},
		{302, "", codes.Unknown, ReasonUpstreamUnexpectedStatus},
		{100, "", codes.Unknown, ReasonUpstreamUnexpectedStatus},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d %s", tt.status, tt.errorCode), func(t *testing.T) {
			t.Parallel()
			got := classify(tt.status, tt.errorCode)
			if got.code != tt.wantCode || got.reason != tt.wantReason {
				t.Errorf("classify(%d, %q) = %v %s, want %v %s", tt.status, tt.errorCode, got.code, got.reason, tt.wantCode, tt.wantReason)
			}
		})
	}
}

func TestToStatus(t *testing.T) {
	t.Parallel()
	info := func(reason string, md map[string]string) *errdetails.ErrorInfo {
		return &errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain, Metadata: md}
	}
	tests := []struct {
		name        string
		err         error
		wantCode    codes.Code
		wantMsg     string // empty: not checked
		wantDetails []any
	}{
		{
			name:     "upstream not found with request id",
			err:      &upstream.Error{StatusCode: 404, Code: "CB.00060404", Message: "record not found", RequestID: "req-1"},
			wantCode: codes.NotFound,
			wantMsg:  "record not found",
			wantDetails: []any{
				info(ReasonUpstreamNotFound, map[string]string{MetadataHTTPStatus: "404", MetadataUpstreamErrorCode: "CB.00060404", MetadataRequestID: "req-1"}),
				&errdetails.RequestInfo{RequestId: "req-1"},
			},
		},
		{
			name:     "throttled with Retry-After",
			err:      &upstream.Error{StatusCode: 429, Code: "APIGW.0308", Message: "slow down", RetryAfter: 7 * time.Second},
			wantCode: codes.ResourceExhausted,
			wantDetails: []any{
				info(ReasonUpstreamThrottled, map[string]string{MetadataHTTPStatus: "429", MetadataUpstreamErrorCode: "APIGW.0308"}),
				&errdetails.RetryInfo{RetryDelay: durationpb.New(7 * time.Second)},
			},
		},
		{
			name:     "throttling sent as a 500 gets a default RetryInfo",
			err:      &upstream.Error{StatusCode: 500, Code: "CB.00060211", Message: "too many requests"},
			wantCode: codes.ResourceExhausted,
			wantDetails: []any{
				info(ReasonUpstreamThrottled, map[string]string{MetadataHTTPStatus: "500", MetadataUpstreamErrorCode: "CB.00060211"}),
				&errdetails.RetryInfo{RetryDelay: durationpb.New(defaultThrottleDelay)},
			},
		},
		{
			name:        "HTML 502 without a message",
			err:         &upstream.Error{StatusCode: 502},
			wantCode:    codes.Unavailable,
			wantMsg:     "the upstream answered HTTP 502 Bad Gateway",
			wantDetails: []any{info(ReasonUpstreamUnavailable, map[string]string{MetadataHTTPStatus: "502"})},
		},
		{
			name:        "connection refused",
			err:         fmt.Errorf("upstream request: %w", syscall.ECONNREFUSED),
			wantCode:    codes.Unavailable,
			wantDetails: []any{info(ReasonUpstreamUnreachable, nil)},
		},
		{
			name:        "no answer in time",
			err:         fmt.Errorf("upstream request: %w", timeoutError{}),
			wantCode:    codes.Unavailable,
			wantDetails: []any{info(ReasonUpstreamTimeout, nil)},
		},
		{
			name:        "protocol error",
			err:         &upstream.ProtocolError{Problem: `unsupported Content-Encoding "br"`},
			wantCode:    codes.Internal,
			wantDetails: []any{info(ReasonUpstreamProtocolError, nil)},
		},
		{
			name:        "interrupted",
			err:         &interruptedError{resumeOffset: 4096, err: io.ErrUnexpectedEOF},
			wantCode:    codes.Unavailable,
			wantDetails: []any{info(ReasonUpstreamInterrupted, map[string]string{MetadataResumeOffset: "4096"})},
		},
		{
			name:     "interrupted with a request id",
			err:      &interruptedError{resumeOffset: 10, requestID: "req-9", err: io.ErrUnexpectedEOF},
			wantCode: codes.Unavailable,
			wantDetails: []any{
				info(ReasonUpstreamInterrupted, map[string]string{MetadataResumeOffset: "10", MetadataRequestID: "req-9"}),
				&errdetails.RequestInfo{RequestId: "req-9"},
			},
		},
		{
			name:        "offset out of range",
			err:         &offsetError{offset: 11, size: 10},
			wantCode:    codes.OutOfRange,
			wantDetails: []any{info(ReasonOffsetOutOfRange, map[string]string{MetadataLogSize: "10"})},
		},
		{
			name:        "missing token",
			err:         &tokenError{ReasonMissingToken, "missing"},
			wantCode:    codes.Unauthenticated,
			wantDetails: []any{info(ReasonMissingToken, nil)},
		},
		{
			name:     "invalid request",
			err:      &invalidRequestError{violations: []*errdetails.BadRequest_FieldViolation{{Field: "offset", Description: "must not be negative"}}},
			wantCode: codes.InvalidArgument,
			wantDetails: []any{
				info(ReasonInvalidRequest, nil),
				&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "offset", Description: "must not be negative"}}},
			},
		},
		{
			name:     "gRPC status passes through",
			err:      status.Error(codes.ResourceExhausted, "message too large"),
			wantCode: codes.ResourceExhausted,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st := toStatus(context.Background(), tt.err)
			if st.Code() != tt.wantCode {
				t.Errorf("code = %v, want %v", st.Code(), tt.wantCode)
			}
			if tt.wantMsg != "" && st.Message() != tt.wantMsg {
				t.Errorf("message = %q, want %q", st.Message(), tt.wantMsg)
			}
			if diff := cmp.Diff(tt.wantDetails, st.Details(), protocmp.Transform(), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("details mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestToStatusCallerContextWins(t *testing.T) {
	t.Parallel()
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel2()
	upErr := &upstream.Error{StatusCode: 503}
	if got := toStatus(canceled, upErr).Code(); got != codes.Canceled {
		t.Errorf("cancelled caller: code = %v, want Canceled", got)
	}
	if got := toStatus(expired, fmt.Errorf("read: %w", context.DeadlineExceeded)).Code(); got != codes.DeadlineExceeded {
		t.Errorf("expired caller: code = %v, want DeadlineExceeded", got)
	}
}

func TestStatusMessagesAreCapped(t *testing.T) {
	t.Parallel()
	long := errors.New(strings.Repeat("é", 2000))
	st := toStatus(context.Background(), long)
	if len(st.Message()) > maxStatusMessage || !strings.HasSuffix(st.Message(), "...") {
		t.Errorf("message of %d bytes, want at most %d ending in ...", len(st.Message()), maxStatusMessage)
	}
	if !utf8.ValidString(st.Message()) {
		t.Error("capped message is not valid UTF-8")
	}
}

type timeoutError struct{}

func (timeoutError) Error() string   { return "timeout awaiting response headers" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }
