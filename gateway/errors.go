package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/buildlog/buildlog/service"
)

// LocalErrorCodePrefix prefixes the error_code of errors that did not come
// from the upstream: "BUILDLOG." followed by the ErrorInfo reason (such as
// BUILDLOG.INVALID_REQUEST) or, for errors without one, the gRPC code name
// (such as BUILDLOG.NOT_FOUND for an unknown path).
const LocalErrorCodePrefix = "BUILDLOG."

// errorDocument is the upstream's error body.
type errorDocument struct {
	ErrorCode string `json:"error_code"`
	ErrorMsg  string `json:"error_msg"`
	RequestID string `json:"request_id,omitempty"`
}

// describe returns the error document of a status, and sets the headers it
// implies (X-Request-Id, Retry-After) on h.
func describe(st *spb.Status, h http.Header) errorDocument {
	doc := errorDocument{
		ErrorCode: LocalErrorCodePrefix + code.Code(st.GetCode()).String(),
		ErrorMsg:  st.GetMessage(),
	}
	for _, a := range st.GetDetails() {
		detail, err := a.UnmarshalNew()
		if err != nil {
			continue
		}
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			if c := d.GetMetadata()[service.MetadataUpstreamErrorCode]; c != "" {
				doc.ErrorCode = c
			} else if d.GetReason() != "" {
				doc.ErrorCode = LocalErrorCodePrefix + d.GetReason()
			}
			doc.RequestID = d.GetMetadata()[service.MetadataRequestID]
		case *errdetails.RetryInfo:
			secs := math.Ceil(d.GetRetryDelay().AsDuration().Seconds())
			h.Set("Retry-After", fmt.Sprint(int64(max(secs, 1))))
		}
	}
	if doc.RequestID != "" {
		h.Set("X-Request-Id", doc.RequestID)
	}
	return doc
}

// logSize returns the log size an error's ErrorInfo carries.
func logSize(st *status.Status) (string, bool) {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			size, ok := info.GetMetadata()[service.MetadataLogSize]
			return size, ok
		}
	}
	return "", false
}

// handleError writes errors that happen before the stream starts, such as
// an unparsable query or an unknown path.
func handleError(ctx context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, _ *http.Request, err error) {
	var httpErr *runtime.HTTPStatusError
	httpStatus := 0
	if errors.As(err, &httpErr) {
		httpStatus, err = httpErr.HTTPStatus, httpErr.Err
	}
	st := status.Convert(err)
	if httpStatus == 0 {
		httpStatus = runtime.HTTPStatusFromCode(st.Code())
	}
	body, _ := json.Marshal(describe(st.Proto(), w.Header()))
	w.Header().Del("Content-Length")
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(httpStatus)
	_, _ = w.Write(body)
}

// handleRoutingError answers requests no route matches with their own HTTP
// status (grpc-gateway's default turns 405 into 501).
func handleRoutingError(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, httpStatus int) {
	code := codes.NotFound
	switch httpStatus {
	case http.StatusMethodNotAllowed:
		code = codes.Unimplemented
		w.Header().Set("Allow", "GET, HEAD")
	case http.StatusBadRequest:
		code = codes.InvalidArgument
	}
	err := &runtime.HTTPStatusError{HTTPStatus: httpStatus, Err: status.Error(code, http.StatusText(httpStatus))}
	handleError(ctx, mux, m, w, r, err)
}

// handleStreamError handles a stream that ended with an error. Before the
// body has started, it sets the error's headers and lets grpc-gateway write
// the status and the error document (rendered by logMarshaler). After, it
// marks the response aborted: the log must not look complete, nor have an
// error document appended to it.
func handleStreamError(ctx context.Context, err error) *status.Status {
	st := status.Convert(err)
	rs := stateFrom(ctx)
	if rs == nil || rs.ignoreRange {
		return st
	}
	if rs.started {
		// A HEAD is complete once its headers are out: its call was stopped
		// on purpose.
		rs.aborted = !rs.head
		return st
	}
	h := rs.Header()
	h.Del("Content-Length")
	h.Del("Content-Disposition")
	h.Del("Content-Range")
	h.Del("Accept-Ranges")
	describe(st.Proto(), h)
	if rs.byteRange != nil && st.Code() == codes.OutOfRange {
		// The Range starts past the end: 416, with the log's length when
		// known, so clients such as curl -C - see the download is complete.
		rs.errorStatus = http.StatusRequestedRangeNotSatisfiable
		if size, ok := logSize(st); ok {
			h.Set("Content-Range", "bytes */"+size)
		}
	}
	return st
}
