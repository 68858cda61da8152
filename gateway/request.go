package gateway

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/service"
)

// request is a REST request read into the service's terms.
type request struct {
	msg     *buildlogv1.DownloadTaskLogRequest
	invalid []service.Violation
	// byteRange is the Range header being answered, nil when there is none
	// (or one the mirror ignores, as RFC 9110 allows).
	byteRange *byteRange
}

// readRequest reads the log's name and range from the path parameter
// record_id, the query (task_name, log_level, offset, limit and follow, by their
// proto or JSON names; others are ignored, as the upstream ignores them)
// and the Range header. What does not parse is reported, for the service
// to refuse with every other problem it finds.
func readRequest(r *http.Request, recordID string) request {
	req := request{msg: &buildlogv1.DownloadTaskLogRequest{RecordId: recordID}}
	bad := func(field, format string, args ...any) {
		req.invalid = append(req.invalid, service.Violation{Field: field, Description: fmt.Sprintf(format, args...)})
	}
	if !utf8.ValidString(recordID) {
		bad("record_id", "is not valid UTF-8: percent-encode the UTF-8 bytes of the text")
	}
	query, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		bad("query", "does not parse: %v", err)
	}
	// get returns the value of a parameter, by its proto name or its JSON
	// name (also), given at most once.
	get := func(field string, also ...string) (string, bool) {
		vs := query[field]
		for _, name := range also {
			vs = append(vs[:len(vs):len(vs)], query[name]...)
		}
		switch {
		case len(vs) > 1:
			bad(field, "is given %d times: give it once", len(vs))
		case len(vs) == 1 && !utf8.ValidString(vs[0]):
			bad(field, "is not valid UTF-8: percent-encode the UTF-8 bytes of the text")
		case len(vs) == 1:
			return vs[0], true
		}
		return "", false
	}
	req.msg.TaskName, _ = get("task_name", "taskName")
	if v, ok := get("log_level", "logLevel"); ok {
		if level, ok := parseLogLevel(v); ok {
			req.msg.LogLevel = level
		} else {
			bad("log_level", "unknown value %q: use INFO or DEBUG (any case)", v)
		}
	}
	if v, ok := get("follow"); ok {
		follow, err := strconv.ParseBool(v)
		if err != nil {
			bad("follow", "must be true or false, got %q", v)
		}
		req.msg.Follow = follow
	}
	offset, hasOffset := get("offset")
	limit, hasLimit := get("limit")
	for _, f := range []struct {
		name, value string
		given       bool
		to          *int64
	}{{"offset", offset, hasOffset, &req.msg.Offset}, {"limit", limit, hasLimit, &req.msg.Limit}} {
		if !f.given {
			continue
		}
		n, err := strconv.ParseInt(f.value, 10, 64)
		if err != nil {
			bad(f.name, "must be a whole number of bytes, got %q", f.value)
		}
		*f.to = n
	}
	// An If-Range never matches: the mirror sends no validators. A range of
	// the whole log ("bytes=0-") is the same as none, with no second
	// request when the log's size is unknown.
	if br, ok := parseRange(r.Header.Values("Range")); ok && r.Header.Get("If-Range") == "" && (br.first > 0 || br.last >= 0) {
		if hasOffset || hasLimit {
			bad("Range", "give a byte range either as a Range header or as offset and limit query parameters, not both")
		}
		req.byteRange = &br
		req.msg.Offset, req.msg.Limit = br.first, br.limit()
	}
	return req
}

// parseLogLevel reads a log level in the upstream's spelling ("INFO",
// "debug", any case), as an enum name ("LOG_LEVEL_DEBUG") or number.
func parseLogLevel(v string) (buildlogv1.LogLevel, bool) {
	upper := strings.ToUpper(strings.TrimSpace(v))
	if upper == "" {
		return buildlogv1.LogLevel_LOG_LEVEL_UNSPECIFIED, true
	}
	if n, ok := buildlogv1.LogLevel_value[upper]; ok {
		return buildlogv1.LogLevel(n), true
	}
	if n, ok := buildlogv1.LogLevel_value["LOG_LEVEL_"+upper]; ok {
		return buildlogv1.LogLevel(n), true
	}
	if n, err := strconv.ParseInt(upper, 10, 32); err == nil {
		if _, ok := buildlogv1.LogLevel_name[int32(n)]; ok {
			return buildlogv1.LogLevel(n), true
		}
	}
	return 0, false
}
