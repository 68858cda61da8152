package upstream

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// FuzzParseError checks that any error body and headers yield a clean
// *Error: no panic, valid UTF-8 without control characters, within the
// length caps, and never the caller's token.
func FuzzParseError(f *testing.F) {
	for _, seed := range []struct {
		status          int
		body, requestID string
	}{
		{400, `{"error_code":"CB.00060200","error_msg":"Invalid parameter"}`, ""},
		{401, `{"error":{"code":401,"message":"auth","title":"Unauthorized"}}`, "id-1"},
		{429, `{"error_code":"APIGW.0308","error_msg":"throttled","request_id":"r"}`, ""},
		{502, `<html><title>502</title></html>`, ""},
		{500, ``, "\x00\r\n"},
		{500, `{"error_msg":"\u0000\u001b[31m` + "\xff\xfe" + `"}`, ""},
		{500, `{"error_msg":"SECRET-TOKEN-VALUE"}`, "SECRET-TOKEN-VALUE"},
	} {
		f.Add(seed.status, seed.body, seed.requestID)
	}
	const token = "SECRET-TOKEN-VALUE"
	f.Fuzz(func(t *testing.T, status int, body, requestID string) {
		resp := &http.Response{StatusCode: status, Header: http.Header{"X-Request-Id": {requestID}}, Body: io.NopCloser(strings.NewReader(body))}
		e := parseError(resp, token)
		for _, field := range []struct {
			name, value string
			limit       int
		}{
			{"Code", e.Code, maxCodeBytes},
			{"Message", e.Message, maxMessageBytes},
			{"RequestID", e.RequestID, maxRequestIDBytes},
		} {
			if len(field.value) > field.limit {
				t.Errorf("%s is %d bytes, over the cap of %d", field.name, len(field.value), field.limit)
			}
			if !utf8.ValidString(field.value) {
				t.Errorf("%s %q is not valid UTF-8", field.name, field.value)
			}
			if strings.IndexFunc(field.value, unicode.IsControl) >= 0 {
				t.Errorf("%s %q has a control character", field.name, field.value)
			}
			if strings.Contains(field.value, token) {
				t.Errorf("%s %q contains the token", field.name, field.value)
			}
		}
		if e.StatusCode != status || e.RetryAfter != 0 {
			t.Errorf("StatusCode %d, RetryAfter %v; want %d and 0", e.StatusCode, e.RetryAfter, status)
		}
		_ = e.Error()
	})
}
