package upstream

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Limits applied to what an error response may put into an [Error]. Error
// bodies come from load balancers as well as the API, so they can be HTML,
// empty or huge; only a prefix is read.
const (
	maxErrorBody      = 64 << 10
	maxMessageBytes   = 512
	maxCodeBytes      = 64
	maxRequestIDBytes = 128
	maxRetryAfter     = time.Hour
)

// Error is a non-success HTTP response from the upstream API.
//
// Its string fields are sanitised: valid UTF-8 without control characters,
// length-capped, and never containing the caller's token.
type Error struct {
	// StatusCode is the HTTP status, such as 404.
	StatusCode int
	// Code is the upstream error_code, such as "CB.00060200"; empty when the
	// body was not a JSON error document.
	Code string
	// Message is the upstream error_msg; empty when there was none.
	Message string
	// RequestID is the upstream request id, from the X-Request-Id header or
	// the body's request_id; empty when there was none.
	RequestID string
	// RetryAfter is the delay from a Retry-After header, capped at one hour;
	// zero when there was none.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "upstream HTTP %d", e.StatusCode)
	if e.Code != "" {
		b.WriteString(" " + e.Code)
	}
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	if e.RequestID != "" {
		b.WriteString(" (request id " + e.RequestID + ")")
	}
	return b.String()
}

// ProtocolError reports an upstream response that breaks the HTTP or API
// contract in a way no retry can fix, such as an unknown content encoding.
type ProtocolError struct {
	// Problem says what was wrong, for operators.
	Problem string
}

func (e *ProtocolError) Error() string { return "upstream protocol error: " + e.Problem }

// parseError turns an error response into an *Error. It reads at most
// maxErrorBody bytes of the body; token, when not empty, is removed from
// everything the result holds.
func parseError(resp *http.Response, token string) *Error {
	e := &Error{
		StatusCode: resp.StatusCode,
		RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()),
	}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	e.Code, e.Message, e.RequestID = parseErrorBody(raw)
	if id := resp.Header.Get("X-Request-Id"); id != "" {
		e.RequestID = id
	}
	e.Code = sanitize(e.Code, token, maxCodeBytes)
	e.Message = sanitize(e.Message, token, maxMessageBytes)
	e.RequestID = sanitize(e.RequestID, token, maxRequestIDBytes)
	return e
}

// parseErrorBody reads the error code, message and request id from the
// error document shapes Huawei Cloud services send:
// {"error_code", "error_msg", "request_id"} (CodeArts and the API gateway)
// and {"error": {"code", "message"}} (IAM). Each field is read on its own,
// and numbers are accepted where strings are expected, so one field of an
// unexpected type does not lose the others. Anything else yields nothing.
func parseErrorBody(raw []byte) (code, msg, requestID string) {
	var doc map[string]json.RawMessage
	if json.Unmarshal(raw, &doc) != nil {
		return "", "", ""
	}
	code, msg, requestID = scalar(doc["error_code"]), scalar(doc["error_msg"]), scalar(doc["request_id"])
	var nested map[string]json.RawMessage
	if code == "" && msg == "" && json.Unmarshal(doc["error"], &nested) == nil {
		code, msg = scalar(nested["code"]), scalar(nested["message"])
	}
	return code, msg, requestID
}

// scalar returns a JSON string's value or a number's text, and "" for
// anything else.
func scalar(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var n json.Number
	if json.Unmarshal(raw, &n) == nil {
		return n.String()
	}
	return ""
}

// parseRetryAfter reads a Retry-After value (delta-seconds or an HTTP date)
// and returns the delay it asks for, or zero when absent or invalid.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	var d time.Duration
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		d = maxRetryAfter
		if secs < int64(maxRetryAfter/time.Second) {
			d = time.Duration(secs) * time.Second
		}
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), maxRetryAfter)
}

// sanitize makes s safe to show to a caller: valid UTF-8, with control
// characters and whitespace runs folded into single spaces, the token
// redacted, and at most limit bytes (cut on a rune boundary, marked with an
// ellipsis).
func sanitize(s, token string, limit int) string {
	if token != "" {
		s = strings.ReplaceAll(s, token, "[REDACTED]")
	}
	s = strings.ToValidUTF8(s, "\uFFFD")
	var b strings.Builder
	space := false
	for _, r := range s {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			space = true
			continue
		}
		if space && b.Len() > 0 {
			b.WriteByte(' ')
		}
		space = false
		b.WriteRune(r)
	}
	s = b.String()
	if len(s) <= limit {
		return s
	}
	const ellipsis = "…"
	cut := limit - len(ellipsis)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + ellipsis
}
