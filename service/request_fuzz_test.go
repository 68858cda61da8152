package service

import (
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/buildlog/buildlog/api"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/upstream"
)

// FuzzValidate checks the request rules against any input: a request that
// passes has a record_id of 36 characters of [0-9a-z-] (so no path tricks)
// and a task_name that reaches the upstream URL as exactly one task_name
// parameter equal to it, never a second parameter or a path change; a token
// that passes is printable ASCII within the size limit, so never a header
// injection.
func FuzzValidate(f *testing.F) {
	for _, seed := range []struct {
		recordID, taskName, token string
		level                     int32
		offset, limit             int64
	}{
		{validRecordID, "stage1", "MIIE-token", 1, 0, 0},
		{"../../../etc/passwd-0000000000000000000", "stage 1&log_level=DEBUG#x%2F/..\r\n日志", "a\r\nX-Injected: 1", 2, -1, -5},
		{"0A1B2C3D-4E5F-4A6B-8C7D-9E0F1A2B3C4D", "a+b=c;d", "tok en", 9, 1 << 62, 0},
		{"0a1b2c3d%2F4e5f-4a6b-8c7d-9e0f1a2b3c4d", strings.Repeat("é", 1001), strings.Repeat("x", 100_001), 0, 0, 1},
		{"..%2F..%2F..%2F..%2F..%2F..%2F..%2F..%2F", "\x00\xff", "\x7f", -1, 0, 0},
	} {
		f.Add(seed.recordID, seed.taskName, seed.token, seed.level, seed.offset, seed.limit)
	}
	client, err := upstream.New("https://upstream.example")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, recordID, taskName, token string, level int32, offset, limit int64) {
		req := &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: taskName, LogLevel: buildlogv1.LogLevel(level), Offset: offset, Limit: limit}
		if validate(req, nil) == nil {
			if len(recordID) != recordIDLength || strings.Trim(recordID, recordIDCharset) != "" {
				t.Fatalf("accepted record_id %q", recordID)
			}
			if n := utf8.RuneCountInString(taskName); n == 0 || n > maxTaskNameLen || offset < 0 || limit < 0 {
				t.Fatalf("accepted task_name of %d characters, offset %d, limit %d", n, offset, limit)
			}
			u := client.URL(upstream.Request{RecordID: recordID, TaskName: taskName, LogLevel: upstreamLogLevel(req.GetLogLevel())})
			parsed, err := url.Parse(u.String())
			if err != nil {
				t.Fatalf("upstream URL %q does not parse: %v", u, err)
			}
			if want := "/v4/" + recordID + "/task-log"; parsed.Path != want || parsed.Fragment != "" {
				t.Fatalf("upstream URL %q has path %q and fragment %q, want %q and none", u, parsed.Path, parsed.Fragment, want)
			}
			q, err := url.ParseQuery(parsed.RawQuery)
			if err != nil || len(q["task_name"]) != 1 || q.Get("task_name") != taskName || len(q) > 2 {
				t.Fatalf("upstream query %q (%v), want task_name = %q alone (with log_level)", parsed.RawQuery, err, taskName)
			}
		}
		var s Service
		if got, err := s.callerToken(Caller{Tokens: []string{token}}); err == nil {
			if got != token || len(got) > api.MaxTokenLength || strings.ContainsFunc(got, func(r rune) bool { return r < 0x21 || r > 0x7e }) {
				t.Fatalf("accepted token %q", got)
			}
		} else if strings.Contains(err.Error(), token) && len(token) > 3 {
			t.Fatalf("the error %q repeats the token", err)
		}
	})
}
