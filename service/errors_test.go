package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
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

	"github.com/buildlog/buildlog/api"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
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
		{400, "CB.00060200", codes.InvalidArgument, api.ReasonUpstreamInvalidArgument},
		{401, "APIGW.0301", codes.Unauthenticated, api.ReasonUpstreamUnauthenticated},
		{403, "", codes.PermissionDenied, api.ReasonUpstreamPermissionDenied},
		{404, "APIGW.0101", codes.NotFound, api.ReasonUpstreamNotFound},
		{405, "", codes.Unimplemented, api.ReasonUpstreamUnimplemented},
		{408, "", codes.Unavailable, api.ReasonUpstreamTimeout},
		{409, "", codes.Aborted, api.ReasonUpstreamConflict},
		{410, "", codes.NotFound, api.ReasonUpstreamNotFound},
		{412, "", codes.FailedPrecondition, api.ReasonUpstreamFailedPrecondition},
		{413, "", codes.InvalidArgument, api.ReasonUpstreamRequestTooLarge},
		{414, "", codes.InvalidArgument, api.ReasonUpstreamRequestTooLarge},
		{416, "", codes.OutOfRange, api.ReasonUpstreamOutOfRange},
		{418, "", codes.FailedPrecondition, api.ReasonUpstreamRejected},
		{429, "", codes.ResourceExhausted, api.ReasonUpstreamThrottled},
		{429, "APIGW.0308", codes.ResourceExhausted, api.ReasonUpstreamThrottled},
		{403, "APIGW.0308", codes.ResourceExhausted, api.ReasonUpstreamThrottled},
		{431, "", codes.InvalidArgument, api.ReasonUpstreamRequestTooLarge},
		{451, "", codes.FailedPrecondition, api.ReasonUpstreamRejected},
		{500, "CB.00060211", codes.ResourceExhausted, api.ReasonUpstreamThrottled},
		{500, "CB.00060100", codes.Unavailable, api.ReasonUpstreamBusy},
		{500, "CB.00060101", codes.Internal, api.ReasonUpstreamInternal},
		{500, "", codes.Internal, api.ReasonUpstreamInternal},
		{501, "", codes.Unimplemented, api.ReasonUpstreamUnimplemented},
		{502, "", codes.Unavailable, api.ReasonUpstreamUnavailable},
		{503, "", codes.Unavailable, api.ReasonUpstreamUnavailable},
		{504, "", codes.Unavailable, api.ReasonUpstreamUnavailable},
		{505, "", codes.Internal, api.ReasonUpstreamInternal},
		{599, "", codes.Internal, api.ReasonUpstreamInternal},
		{201, "", codes.Unknown, api.ReasonUpstreamUnexpectedStatus},
		{204, "", codes.Unknown, api.ReasonUpstreamUnexpectedStatus},
		{302, "", codes.Unknown, api.ReasonUpstreamUnexpectedStatus},
		{100, "", codes.Unknown, api.ReasonUpstreamUnexpectedStatus},
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

func TestToError(t *testing.T) {
	t.Parallel()
	info := func(reason string, md map[string]string) *errdetails.ErrorInfo {
		return &errdetails.ErrorInfo{Reason: reason, Domain: api.ErrorDomain, Metadata: md}
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
				info(api.ReasonUpstreamNotFound, map[string]string{api.MetadataHTTPStatus: "404", api.MetadataUpstreamErrorCode: "CB.00060404", api.MetadataRequestID: "req-1"}),
				&errdetails.RequestInfo{RequestId: "req-1"},
			},
		},
		{
			name:     "throttled with Retry-After",
			err:      &upstream.Error{StatusCode: 429, Code: "APIGW.0308", Message: "slow down", RetryAfter: 7 * time.Second},
			wantCode: codes.ResourceExhausted,
			wantDetails: []any{
				info(api.ReasonUpstreamThrottled, map[string]string{api.MetadataHTTPStatus: "429", api.MetadataUpstreamErrorCode: "APIGW.0308"}),
				&errdetails.RetryInfo{RetryDelay: durationpb.New(7 * time.Second)},
			},
		},
		{
			name:     "throttling sent as a 500 gets a default RetryInfo",
			err:      &upstream.Error{StatusCode: 500, Code: "CB.00060211", Message: "too many requests"},
			wantCode: codes.ResourceExhausted,
			wantDetails: []any{
				info(api.ReasonUpstreamThrottled, map[string]string{api.MetadataHTTPStatus: "500", api.MetadataUpstreamErrorCode: "CB.00060211"}),
				&errdetails.RetryInfo{RetryDelay: durationpb.New(defaultThrottleDelay)},
			},
		},
		{
			name:        "HTML 502 without a message",
			err:         &upstream.Error{StatusCode: 502},
			wantCode:    codes.Unavailable,
			wantMsg:     "the upstream answered HTTP 502 Bad Gateway",
			wantDetails: []any{info(api.ReasonUpstreamUnavailable, map[string]string{api.MetadataHTTPStatus: "502"})},
		},
		{
			name:        "connection refused",
			err:         fmt.Errorf("upstream request: %w", syscall.ECONNREFUSED),
			wantCode:    codes.Unavailable,
			wantDetails: []any{info(api.ReasonUpstreamUnreachable, nil)},
		},
		{
			name:        "no answer in time",
			err:         fmt.Errorf("upstream request: %w", timeoutError{}),
			wantCode:    codes.Unavailable,
			wantDetails: []any{info(api.ReasonUpstreamTimeout, nil)},
		},
		{
			name:        "protocol error",
			err:         &upstream.ProtocolError{Problem: `unsupported Content-Encoding "br"`},
			wantCode:    codes.Internal,
			wantDetails: []any{info(api.ReasonUpstreamProtocolError, nil)},
		},
		{
			name:        "interrupted",
			err:         &interruptedError{resumeOffset: 4096, err: io.ErrUnexpectedEOF},
			wantCode:    codes.Unavailable,
			wantDetails: []any{info(api.ReasonUpstreamInterrupted, map[string]string{api.MetadataResumeOffset: "4096"})},
		},
		{
			name:     "interrupted with a request id",
			err:      &interruptedError{resumeOffset: 10, requestID: "req-9", err: io.ErrUnexpectedEOF},
			wantCode: codes.Unavailable,
			wantDetails: []any{
				info(api.ReasonUpstreamInterrupted, map[string]string{api.MetadataResumeOffset: "10", api.MetadataRequestID: "req-9"}),
				&errdetails.RequestInfo{RequestId: "req-9"},
			},
		},
		{
			name:        "offset out of range",
			err:         offsetError(11, 10),
			wantCode:    codes.OutOfRange,
			wantDetails: []any{info(api.ReasonOffsetOutOfRange, map[string]string{api.MetadataLogSize: "10"})},
		},
		{
			name:        "missing token",
			err:         tokenError(api.ReasonMissingToken, "missing"),
			wantCode:    codes.Unauthenticated,
			wantDetails: []any{info(api.ReasonMissingToken, nil)},
		},
		{
			name:     "invalid request",
			err:      validate(&buildlogv1.DownloadTaskLogRequest{RecordId: validRecordID, TaskName: "stage1", Offset: -1}, nil),
			wantCode: codes.InvalidArgument,
			wantDetails: []any{
				info(api.ReasonInvalidRequest, nil),
				&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "offset", Description: "must not be negative, got -1"}}},
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
			st := toError(context.Background(), tt.err).GRPCStatus()
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

func TestToErrorCallerContextWins(t *testing.T) {
	t.Parallel()
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel2()
	upErr := &upstream.Error{StatusCode: 503}
	if got := toError(canceled, upErr).Code; got != codes.Canceled {
		t.Errorf("cancelled caller: code = %v, want Canceled", got)
	}
	if got := toError(expired, fmt.Errorf("read: %w", context.DeadlineExceeded)).Code; got != codes.DeadlineExceeded {
		t.Errorf("expired caller: code = %v, want DeadlineExceeded", got)
	}
}

func TestStatusMessagesAreCapped(t *testing.T) {
	t.Parallel()
	long := &upstream.ChangedError{Problem: strings.Repeat("é", 2000)}
	st := toError(context.Background(), long).GRPCStatus()
	if len(st.Message()) > maxMessage || !strings.HasSuffix(st.Message(), "...") {
		t.Errorf("message of %d bytes, want at most %d ending in ...", len(st.Message()), maxMessage)
	}
	if !utf8.ValidString(st.Message()) {
		t.Error("capped message is not valid UTF-8")
	}
}

type timeoutError struct{}

func (timeoutError) Error() string   { return "timeout awaiting response headers" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

// Callers are told what went wrong with the upstream connection in a few
// words, never Go's network errors with addresses and system calls.
func TestConnectionMessagesHideInternals(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		err  error
		want string
	}{
		{&net.OpError{Op: "dial", Net: "tcp", Addr: &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 443}, Err: syscall.ECONNREFUSED}, "cannot reach the upstream: it refused the connection"},
		{&net.DNSError{Err: "no such host", Name: "cloudbuild-ext.example"}, "cannot reach the upstream: its host name does not resolve"},
		{fmt.Errorf("upstream request: %w", io.EOF), "cannot reach the upstream: it closed the connection early"},
		{&interruptedError{resumeOffset: 7, err: fmt.Errorf("read tcp 10.0.0.1:1->10.0.0.2:443: %w", syscall.ECONNRESET)},
			"the upstream log broke off at offset 7 (it reset the connection); request the rest with offset=7"},
		{fmt.Errorf("upstream request: %w", timeoutError{}), "the upstream did not answer in time"},
	} {
		e := toError(context.Background(), tt.err)
		if e.Message != tt.want || strings.Contains(e.Message, "10.") || strings.Contains(e.Message, "tcp") {
			t.Errorf("%v: message %q, want %q", tt.err, e.Message, tt.want)
		}
		if !errors.Is(e, tt.err) && !errors.Is(e.Unwrap(), tt.err) {
			t.Errorf("%v: the cause is not kept for the server's log", tt.err)
		}
	}
}
