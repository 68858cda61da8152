package api_test

import (
	"encoding/json"
	"errors"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildlog/buildlog/api"
)

// TestErrorMappings derives both transports' answers from each error, side
// by side: the gRPC status a caller gets and the REST status and body.
func TestErrorMappings(t *testing.T) {
	t.Parallel()
	upstream := func(code codes.Code, reason string, httpStatus, errorCode string) *api.Error {
		md := map[string]string{api.MetadataHTTPStatus: httpStatus, api.MetadataRequestID: "req-1"}
		if errorCode != "" {
			md[api.MetadataUpstreamErrorCode] = errorCode
		}
		return &api.Error{Code: code, Reason: reason, Message: "msg", Metadata: md}
	}
	throttled := upstream(codes.ResourceExhausted, api.ReasonUpstreamThrottled, "500", "CB.00060211")
	throttled.RetryDelay = 1500 * time.Millisecond
	tests := []struct {
		name          string
		err           *api.Error
		wantREST      int
		wantErrorCode string
	}{
		{"upstream 404", upstream(codes.NotFound, api.ReasonUpstreamNotFound, "404", "CB.00060404"), 404, "CB.00060404"},
		{"upstream 412", upstream(codes.FailedPrecondition, api.ReasonUpstreamFailedPrecondition, "412", ""), 412, "BUILDLOG.UPSTREAM_FAILED_PRECONDITION"},
		{"upstream 405", upstream(codes.Unimplemented, api.ReasonUpstreamUnimplemented, "405", ""), 405, "BUILDLOG.UPSTREAM_UNIMPLEMENTED"},
		{"upstream 504", upstream(codes.Unavailable, api.ReasonUpstreamUnavailable, "504", ""), 504, "BUILDLOG.UPSTREAM_UNAVAILABLE"},
		{"upstream network busy as a 500", upstream(codes.Unavailable, api.ReasonUpstreamBusy, "500", "CB.00060100"), 500, "CB.00060100"},
		{"upstream throttling as a 500", throttled, 429, "CB.00060211"},
		{"upstream unfollowed redirect", upstream(codes.Unknown, api.ReasonUpstreamUnexpectedStatus, "302", ""), 502, "BUILDLOG.UPSTREAM_UNEXPECTED_STATUS"},
		{"upstream unreachable", &api.Error{Code: codes.Unavailable, Reason: api.ReasonUpstreamUnreachable, Message: "m"}, 502, "BUILDLOG.UPSTREAM_UNREACHABLE"},
		{"upstream too slow", &api.Error{Code: codes.Unavailable, Reason: api.ReasonUpstreamTimeout, Message: "m"}, 504, "BUILDLOG.UPSTREAM_TIMEOUT"},
		{"IAM refused the server's password", &api.Error{Code: codes.Internal, Reason: api.ReasonCredentialsRejected, Message: "m",
			Metadata: map[string]string{api.MetadataHTTPStatus: "401"}}, 500, "BUILDLOG.SERVER_CREDENTIALS_REJECTED"},
		{"invalid request", &api.Error{Code: codes.InvalidArgument, Reason: api.ReasonInvalidRequest, Message: "m",
			Violations: []*errdetails.BadRequest_FieldViolation{{Field: "offset", Description: "bad"}}}, 400, "BUILDLOG.INVALID_REQUEST"},
		{"missing token", &api.Error{Code: codes.Unauthenticated, Reason: api.ReasonMissingToken, Message: "m"}, 401, "BUILDLOG.MISSING_TOKEN"},
		{"overloaded", &api.Error{Code: codes.ResourceExhausted, Reason: api.ReasonOverloaded, Message: "m", RetryDelay: time.Second}, 429, "BUILDLOG.OVERLOADED"},
		{"cancelled", &api.Error{Code: codes.Canceled, Reason: api.ReasonCanceled, Message: "m"}, 499, "BUILDLOG.CANCELED"},
		{"deadline", &api.Error{Code: codes.DeadlineExceeded, Reason: api.ReasonDeadlineExceeded, Message: "m"}, 504, "BUILDLOG.DEADLINE_EXCEEDED"},
		{"unknown path", &api.Error{Code: codes.NotFound, Message: "Not Found"}, 404, "BUILDLOG.NOT_FOUND"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// gRPC: the code, message and details as a caller decodes them.
			st := status.Convert(tt.err)
			if st.Code() != tt.err.Code || st.Message() != tt.err.Message {
				t.Errorf("gRPC status %v %q, want %v %q", st.Code(), st.Message(), tt.err.Code, tt.err.Message)
			}
			back, ok := api.FromError(status.ErrorProto(st.Proto()))
			if !ok || back.Reason != tt.err.Reason || !cmp.Equal(back.Metadata, tt.err.Metadata) || back.RetryDelay != tt.err.RetryDelay || len(back.Violations) != len(tt.err.Violations) {
				t.Errorf("gRPC status read back as %+v, want %+v", back, tt.err)
			}
			// REST: the status, the upstream's error shape and its headers.
			if got := tt.err.HTTPStatus(); got != tt.wantREST {
				t.Errorf("HTTP status %d, want %d", got, tt.wantREST)
			}
			w := httptest.NewRecorder()
			tt.err.WriteREST(w, tt.err.HTTPStatus())
			var doc api.RESTError
			if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil || doc.ErrorCode != tt.wantErrorCode || doc.ErrorMsg != tt.err.Message {
				t.Errorf("REST body %s (%v), want error_code %s", w.Body, err, tt.wantErrorCode)
			}
			if id := tt.err.Metadata[api.MetadataRequestID]; doc.RequestID != id || w.Header().Get("X-Request-Id") != id {
				t.Errorf("request_id %q, X-Request-Id %q; want %q", doc.RequestID, w.Header().Get("X-Request-Id"), id)
			}
			if want := map[time.Duration]string{0: "", time.Second: "1", 1500 * time.Millisecond: "2"}[tt.err.RetryDelay]; w.Header().Get("Retry-After") != want {
				t.Errorf("Retry-After %q for a delay of %s, want %q", w.Header().Get("Retry-After"), tt.err.RetryDelay, want)
			}
		})
	}
}

func TestFromError(t *testing.T) {
	t.Parallel()
	if _, ok := api.FromError(errors.New("plain")); ok {
		t.Error("FromError accepted an error that is no status")
	}
	if _, ok := api.FromError(nil); ok {
		t.Error("FromError accepted nil")
	}
	e := &api.Error{Code: codes.NotFound, Reason: api.ReasonUpstreamNotFound, Message: "gone"}
	if got, ok := api.FromError(errors.Join(errors.New("context"), e)); !ok || got != e {
		t.Errorf("FromError of a wrapped *api.Error = %v, %v", got, ok)
	}
}
