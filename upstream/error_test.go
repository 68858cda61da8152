package upstream

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseError(t *testing.T) {
	t.Parallel()
	const token = "MIIsecretTOKENvalue"
	tests := []struct {
		name   string
		status int
		header http.Header
		body   string
		want   *Error
	}{
		{
			name:   "upstream JSON",
			status: 400,
			body:   `{"error_code":"CB.00060200","error_msg":"Invalid parameter: task_name"}`,
			want:   &Error{StatusCode: 400, Code: "CB.00060200", Message: "Invalid parameter: task_name"},
		},
		{
			name:   "request id from header wins over body",
			status: 401,
			header: http.Header{"X-Request-Id": {"hdr-id"}},
			body:   `{"error_code":"APIGW.0301","error_msg":"bad token","request_id":"body-id"}`,
			want:   &Error{StatusCode: 401, Code: "APIGW.0301", Message: "bad token", RequestID: "hdr-id"},
		},
		{
			name:   "request id from body",
			status: 429,
			body:   `{"error_code":"APIGW.0308","error_msg":"throttled","request_id":"body-id"}`,
			want:   &Error{StatusCode: 429, Code: "APIGW.0308", Message: "throttled", RequestID: "body-id"},
		},
		{
			name:   "nested IAM shape",
			status: 403,
			body:   `{"error":{"code":"IAM.0002","message":"forbidden"}}`,
			want:   &Error{StatusCode: 403, Code: "IAM.0002", Message: "forbidden"},
		},
		{
			name:   "IAM shape with a numeric code",
			status: 401,
			body:   `{"error":{"code":401,"message":"The request you have made requires authentication.","title":"Unauthorized"}}`,
			want:   &Error{StatusCode: 401, Code: "401", Message: "The request you have made requires authentication."},
		},
		{
			name:   "a field of an unexpected type keeps the others",
			status: 500,
			body:   `{"error_code":"CB.00060211","error_msg":"too many requests","request_id":12345,"error":"x","details":[1]}`,
			want:   &Error{StatusCode: 500, Code: "CB.00060211", Message: "too many requests", RequestID: "12345"},
		},
		{
			name:   "wrong types everywhere",
			status: 500,
			body:   `{"error_code":{"a":1},"error_msg":["m"],"request_id":null}`,
			want:   &Error{StatusCode: 500},
		},
		{
			name:   "HTML from a load balancer",
			status: 502,
			header: http.Header{"Content-Type": {"text/html"}},
			body:   "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
			want:   &Error{StatusCode: 502},
		},
		{
			name:   "empty body",
			status: 503,
			want:   &Error{StatusCode: 503},
		},
		{
			name:   "JSON of another shape",
			status: 500,
			body:   `["unexpected", 1]`,
			want:   &Error{StatusCode: 500},
		},
		{
			name:   "token echoed in message is redacted",
			status: 401,
			body:   `{"error_code":"APIGW.0301","error_msg":"token ` + token + ` expired"}`,
			want:   &Error{StatusCode: 401, Code: "APIGW.0301", Message: "token [REDACTED] expired"},
		},
		{
			name:   "control characters and whitespace folded",
			status: 400,
			body:   `{"error_code":"CB.1\r\n","error_msg":"line one\r\nline\ttwo\u0000 \u001b[31mred"}`,
			want:   &Error{StatusCode: 400, Code: "CB.1", Message: "line one line two [31mred"},
		},
		{
			name:   "Retry-After seconds",
			status: 429,
			header: http.Header{"Retry-After": {"7"}},
			want:   &Error{StatusCode: 429, RetryAfter: 7 * time.Second},
		},
		{
			name:   "Retry-After capped",
			status: 429,
			header: http.Header{"Retry-After": {"999999999999"}},
			want:   &Error{StatusCode: 429, RetryAfter: time.Hour},
		},
		{
			name:   "Retry-After invalid",
			status: 503,
			header: http.Header{"Retry-After": {"soon"}},
			want:   &Error{StatusCode: 503},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			resp := &http.Response{StatusCode: tt.status, Header: tt.header, Body: io.NopCloser(strings.NewReader(tt.body))}
			if resp.Header == nil {
				resp.Header = http.Header{}
			}
			got := parseError(resp, token)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("parseError() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseErrorHugeBody(t *testing.T) {
	t.Parallel()
	// A valid document beyond the read cap is not parsed, and reading stops
	// at the cap.
	body := &countingReader{r: strings.NewReader(`{"error_msg":"` + strings.Repeat("x", 10<<20) + `"}`)}
	got := parseError(&http.Response{StatusCode: 500, Header: http.Header{}, Body: io.NopCloser(body)}, "")
	if got.Message != "" {
		t.Errorf("Message = %.40q…, want empty for a body beyond the cap", got.Message)
	}
	if body.n > maxErrorBody {
		t.Errorf("read %d bytes of the error body, want at most %d", body.n, maxErrorBody)
	}

	long := strings.Repeat("é", 1000)
	got = parseError(&http.Response{StatusCode: 400, Header: http.Header{}, Body: io.NopCloser(strings.NewReader(`{"error_msg":"` + long + `"}`))}, "")
	if len(got.Message) > maxMessageBytes || !strings.HasSuffix(got.Message, "…") || !strings.HasPrefix(long, strings.TrimSuffix(got.Message, "…")) {
		t.Errorf("Message of %d bytes = %.20q…, want at most %d bytes cut on a rune boundary with an ellipsis", len(got.Message), got.Message, maxMessageBytes)
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func TestParseRetryAfterDate(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name, value string
		want        time.Duration
	}{
		{"future date", now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{"past date", now.Add(-time.Minute).Format(http.TimeFormat), 0},
		{"zero seconds", "0", 0},
		{"negative", "-5", 0},
		{"empty", "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := parseRetryAfter(tt.value, now); got != tt.want {
				t.Errorf("parseRetryAfter(%q) = %v, want %v", tt.value, got, tt.want)
			}
		})
	}
}
