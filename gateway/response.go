package gateway

import (
	"context"
	"maps"
	"net/http"
	"net/url"
	"strconv"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// responseState follows one REST response. grpc-gateway reports a stream
// error through a callback that has no access to the response, and would
// write an error document after log bytes already sent; responseState lets
// handleStreamError see whether the body has started and, if it has,
// swallow grpc-gateway's error document and abort the response instead.
type responseState struct {
	http.ResponseWriter
	limit int64 // the request's limit, 0 when absent
	// byteRange is the Range header being answered, nil when there is none
	// (or one the mirror ignores).
	byteRange *byteRange
	// status is the status of a successful response, written with the first
	// body bytes: 200, or 206 for a Range. errorStatus, when not 0,
	// replaces the status grpc-gateway writes for an error.
	status      int
	errorStatus int
	started     bool // the status line has been written
	aborted     bool // the response must be cut off, not finished
	// head is set for a HEAD request, served as a GET whose body is
	// discarded.
	head bool
	// ignoreRange is set when the Range turns out unanswerable (the log's
	// length is unknown): the response is discarded, and the request served
	// again without the Range.
	ignoreRange bool
	// done is closed once the call has been answered (see CallDone).
	done chan struct{}
	// callEnded, when set, is closed once the gRPC call made for the
	// request has ended (see TrackCall).
	callEnded <-chan struct{}
}

type responseStateKey struct{}

// TrackCall records that the gRPC call made for the REST request of ctx
// ends when ended is closed. A request served again (a Range the log's
// unknown length cannot answer) first waits for its first call to end, so
// that call's download slot is free for the second. Contexts that are not
// a REST request's are ignored.
func TrackCall(ctx context.Context, ended <-chan struct{}) {
	if rs := stateFrom(ctx); rs != nil {
		rs.callEnded = ended
	}
}

// CallDone returns a channel closed once the REST request that ctx
// belongs to has been answered (or abandoned, for a Range served again
// without it): the mirror keeps no message of the gRPC call it made past
// that. It returns nil for a context that is not a REST request's.
func CallDone(ctx context.Context) <-chan struct{} {
	if rs := stateFrom(ctx); rs != nil {
		return rs.done
	}
	return nil
}

// prepare wraps next so each request's context carries its responseState
// and its log_level is normalised, and aborts the connection when a stream
// fails mid-body. A query that does not parse is left for grpc-gateway to
// refuse.
func prepare(next http.Handler) http.Handler {
	var serve http.HandlerFunc
	serve = func(w http.ResponseWriter, orig *http.Request) {
		rs := &responseState{ResponseWriter: w, status: http.StatusOK, done: make(chan struct{})}
		// A shallow copy: nothing below changes orig's header, and its URL
		// is copied before its query is rewritten.
		r := orig.WithContext(context.WithValue(orig.Context(), responseStateKey{}, rs))
		if r.Method == http.MethodHead {
			// The headers of a GET: they depend on the log, so the call is
			// made, for one byte (see below), and the body discarded.
			r.Method, rs.head = http.MethodGet, true
		}
		if values, err := url.ParseQuery(r.URL.RawQuery); err == nil {
			if field, ok := invalidUTF8(r.URL.Path, values); !ok {
				// The request fields are proto strings, which must be UTF-8.
				handleError(r.Context(), nil, nil, rs, r, status.Errorf(codes.InvalidArgument,
					"%s is not valid UTF-8: percent-encode the UTF-8 bytes of the text", field))
				return
			}
			changed := normalizeLogLevels(values)
			if br, ok := parseRange(r.Header.Values("Range")); ok && r.Header.Get("If-Range") == "" {
				// An If-Range cannot match: the mirror sends no validators.
				if values.Has("offset") || values.Has("limit") {
					handleError(r.Context(), nil, nil, rs, r, status.Error(codes.InvalidArgument,
						"give a byte range either as a Range header or as offset and limit query parameters, not both"))
					return
				}
				values.Set("offset", strconv.FormatInt(br.first, 10))
				if limit := br.limit(); limit > 0 {
					values.Set("limit", strconv.FormatInt(limit, 10))
				}
				rs.byteRange, changed = &br, true
			}
			if v := values["limit"]; len(v) == 1 {
				rs.limit, _ = strconv.ParseInt(v[0], 10, 64)
			}
			if rs.head {
				// One byte is enough to learn the headers, and the call
				// then ends OK rather than cancelled.
				values.Set("limit", "1")
				changed = true
			}
			if changed {
				u := *r.URL
				u.RawQuery = values.Encode()
				r.URL = &u
			}
		}
		var header http.Header // the response header to start again from
		if rs.byteRange != nil {
			header = w.Header().Clone()
		}
		func() {
			defer close(rs.done)
			next.ServeHTTP(rs, r)
		}()
		if rs.ignoreRange {
			// The log's length is unknown, so the Range cannot be answered
			// with a 206: serve the whole log instead, as RFC 9110 allows. No
			// byte of the first attempt was written. Its call, cancelled as
			// the attempt returned, ends first: under a full --max-downloads
			// the second call needs its slot.
			if rs.callEnded != nil {
				select {
				case <-rs.callEnded:
				case <-orig.Context().Done():
				}
			}
			maps.Copy(clearHeader(w.Header()), header)
			again := orig.Clone(orig.Context())
			again.Header.Del("Range")
			serve(w, again)
			return
		}
		if rs.aborted {
			// net/http closes the connection without ending the body: no final
			// chunk, or fewer bytes than Content-Length. HTTP/2 resets the
			// stream. Either way the client sees an incomplete transfer.
			panic(http.ErrAbortHandler)
		}
	}
	return serve
}

// clearHeader deletes every field of h and returns it.
func clearHeader(h http.Header) http.Header {
	clear(h)
	return h
}

// invalidUTF8 names the first part of a request that is not valid UTF-8
// once decoded, and reports false; it reports true when all parts are.
func invalidUTF8(path string, values url.Values) (string, bool) {
	if !utf8.ValidString(path) {
		return "the path", false
	}
	for key, vs := range values {
		if !utf8.ValidString(key) {
			return "a query parameter name", false
		}
		for _, v := range vs {
			if !utf8.ValidString(v) {
				return "query parameter " + strconv.Quote(key), false
			}
		}
	}
	return "", true
}

func stateFrom(ctx context.Context) *responseState {
	rs, _ := ctx.Value(responseStateKey{}).(*responseState)
	return rs
}

func requestLimit(ctx context.Context) int64 {
	if rs := stateFrom(ctx); rs != nil {
		return rs.limit
	}
	return 0
}

func (rs *responseState) WriteHeader(code int) {
	if rs.aborted || rs.started || rs.ignoreRange {
		return
	}
	if rs.errorStatus != 0 {
		code = rs.errorStatus
	}
	rs.started = true
	rs.ResponseWriter.WriteHeader(code)
}

func (rs *responseState) Write(p []byte) (int, error) {
	if rs.aborted || rs.ignoreRange {
		return len(p), nil
	}
	if !rs.started {
		rs.WriteHeader(rs.status)
	}
	if rs.head {
		return len(p), nil
	}
	return rs.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach Flush on the real writer.
func (rs *responseState) Unwrap() http.ResponseWriter { return rs.ResponseWriter }
