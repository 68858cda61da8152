// Package gateway serves the REST mirror of the upstream API,
// GET /v4/{record_id}/task-log?task_name=…&log_level=…, with grpc-gateway in
// front of a BuildLogService client.
//
// The mirror answers as the upstream does, so HTTP clients switch to it by
// changing the host: a 200 body is the log bytes only (no JSON framing, no
// delimiters between chunks), errors are the upstream's JSON shape
// {"error_code": …, "error_msg": …}, and a failure after the first byte
// aborts the response instead of ending it cleanly.
package gateway

import (
	"context"
	"fmt"
	"mime"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/api/httpbody"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/service"
)

// New returns the REST mirror's handler, which calls client for every
// request. extra options are applied after the mirror's own, such as a
// runtime.WithMetadata that passes what the server learnt of the HTTP
// caller to the service.
func New(ctx context.Context, client buildlogv1.BuildLogServiceClient, extra ...runtime.ServeMuxOption) (http.Handler, error) {
	mux := runtime.NewServeMux(append([]runtime.ServeMuxOption{
		runtime.WithMarshalerOption(runtime.MIMEWildcard, &logMarshaler{}),
		runtime.WithForwardResponseRewriter(toHTTPBody),
		runtime.WithForwardResponseOption(setLogHeaders),
		runtime.WithDisableChunkedEncoding(), // net/http chunks by itself when there is no Content-Length
		runtime.WithIncomingHeaderMatcher(incomingHeader),
		runtime.WithOutgoingHeaderMatcher(dropHeader),
		runtime.WithOutgoingTrailerMatcher(dropHeader),
		runtime.WithErrorHandler(handleError),
		runtime.WithStreamErrorHandler(handleStreamError),
		runtime.WithRoutingErrorHandler(handleRoutingError),
	}, extra...)...)
	if err := buildlogv1.RegisterBuildLogServiceHandlerClient(ctx, mux, client); err != nil {
		return nil, err
	}
	return withOpenAPI(prepare(mux)), nil
}

// incomingHeader forwards X-Auth-Token to the service as the token metadata
// key, and otherwise behaves as grpc-gateway's default.
func incomingHeader(key string) (string, bool) {
	canonical := textproto.CanonicalMIMEHeaderKey(key)
	if canonical == "X-Auth-Token" {
		return service.TokenMetadataKey, true
	}
	if strings.HasPrefix(canonical, "X-Buildlog-") || strings.HasPrefix(canonical, "Grpc-Metadata-X-Buildlog-") {
		// buildlog's own metadata, such as the in-process caller mark, is
		// never taken from an HTTP caller, whatever grpc-gateway's default.
		return "", false
	}
	return runtime.DefaultHeaderMatcher(key)
}

// dropHeader keeps gRPC metadata out of HTTP responses: the mirror's headers
// are set from the log's metadata instead.
func dropHeader(string) (string, bool) { return "", false }

// toHTTPBody turns each chunk into an HttpBody, whose bytes grpc-gateway
// writes as they are, without JSON framing or a copy.
func toHTTPBody(_ context.Context, resp proto.Message) (any, error) {
	chunk, ok := resp.(*buildlogv1.DownloadTaskLogResponse)
	if !ok {
		return resp, nil
	}
	body := &httpbody.HttpBody{Data: chunk.GetData()}
	if md := chunk.GetMetadata(); md != nil {
		body.ContentType = md.GetContentType()
	}
	return body, nil
}

// setLogHeaders sets the headers the first chunk's metadata provides,
// before the first byte of the body is written, and decides between 200 and
// 206 for a Range.
func setLogHeaders(ctx context.Context, w http.ResponseWriter, resp proto.Message) error {
	chunk, ok := resp.(*buildlogv1.DownloadTaskLogResponse)
	if !ok || chunk.GetMetadata() == nil {
		return nil
	}
	md := chunk.GetMetadata()
	h := w.Header()
	if id := md.GetRequestId(); id != "" {
		h.Set("X-Request-Id", id)
	}
	rs := stateFrom(ctx)
	if rs != nil && rs.byteRange != nil {
		if err := setRangeHeaders(rs, h, md); err != nil {
			return err
		}
	} else if md.TotalSize != nil {
		length := max(md.GetTotalSize()-chunk.GetOffset(), 0)
		if limit := requestLimit(ctx); limit > 0 {
			length = min(length, limit)
		}
		h.Set("Content-Length", strconv.FormatInt(length, 10))
		h.Set("Accept-Ranges", "bytes")
	}
	h.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": md.GetFileName()}))
	return nil
}

// errIgnoreRange ends a call whose Range cannot be answered; nothing of it
// is written.
var errIgnoreRange = status.Error(codes.Aborted, "the Range is ignored: the log's length is unknown")

// setRangeHeaders prepares the 206 answer to a Range, or returns the error
// for one the log cannot satisfy: RFC 9110 wants the range's last byte in
// Content-Range, so the log's length must be known.
func setRangeHeaders(rs *responseState, h http.Header, md *buildlogv1.LogMetadata) error {
	br := rs.byteRange
	if md.TotalSize == nil {
		// A 206 must name its last byte: prepare serves the whole log.
		rs.ignoreRange = true
		return errIgnoreRange
	}
	size := md.GetTotalSize()
	if br.first >= size {
		return rangeError(fmt.Sprintf("the range starts at byte %d; the log has %d bytes", br.first, size), size)
	}
	last := size - 1
	if br.last >= 0 {
		last = min(last, br.last)
	}
	h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", br.first, last, size))
	h.Set("Content-Length", strconv.FormatInt(last-br.first+1, 10))
	h.Set("Accept-Ranges", "bytes")
	rs.status = http.StatusPartialContent
	return nil
}

// normalizeLogLevels rewrites log_level values given in the upstream's
// spelling ("INFO", "debug", any case) to the enum names grpc-gateway
// parses, and reports whether it changed any.
func normalizeLogLevels(values url.Values) bool {
	changed := false
	for _, key := range []string{"log_level", "logLevel"} {
		for i, v := range values[key] {
			if n := normalizeLogLevel(v); n != v {
				values[key][i] = n
				changed = true
			}
		}
	}
	return changed
}

func normalizeLogLevel(v string) string {
	upper := strings.ToUpper(strings.TrimSpace(v))
	switch {
	case upper == "":
		return buildlogv1.LogLevel_LOG_LEVEL_UNSPECIFIED.String()
	case upper == "INFO" || upper == "DEBUG":
		return "LOG_LEVEL_" + upper
	case strings.HasPrefix(upper, "LOG_LEVEL_"):
		return upper
	}
	return v // numbers, or an error for the default parser to report
}
