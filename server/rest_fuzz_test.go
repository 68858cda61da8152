package server_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"golang.org/x/net/http/httpguts"

	"github.com/buildlog/buildlog/server/servertest"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// FuzzRESTRequest sends any query string and Range header to the REST
// mirror of a real stack. Whatever the input, the answer is a clean one:
// never a 5xx; an error is the upstream-shaped JSON document; a success is
// an exact slice of the log; and the upstream only ever sees the task_name
// the query gave, as one parameter.
func FuzzRESTRequest(f *testing.F) {
	for _, seed := range []struct{ query, rangeHeader string }{
		{"task_name=stage1", ""},
		{"task_name=stage1&offset=10&limit=5", ""},
		{"task_name=stage1", "bytes=100-"},
		{"task_name=stage1", "bytes=5000-"},
		{"task_name=stage1&offset=1", "bytes=1-2"},
		{"task_name=stage1&log_level=debug", "bytes=-5"},
		{"task_name=stage%201%26log_level%3DDEBUG%23x", ""},
		{"task_name=stage1&task_name=stage2", ""},
		{"task_name=stage1&offset=-1&limit=abc", ""},
		{"task_name=stage1&logLevel=LOG_LEVEL_INFO&unknown=1", ""},
		{"task_name=%ff%fe&offset=99999999999999999999", "bytes=0-0"},
		{"%zz", "bytes=0-"},
	} {
		f.Add(seed.query, seed.rangeHeader)
	}
	s := servertest.Start(f, 1<<10)
	const size = 4096
	info, debug := upstreamtest.Generate(size, "INFO", "stage1"), upstreamtest.Generate(size, "DEBUG", "stage1")
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: size})
	f.Fuzz(func(t *testing.T, query, rangeHeader string) {
		if strings.ContainsAny(query, " #\x7f") || !httpguts.ValidHeaderFieldValue(rangeHeader) ||
			strings.ContainsFunc(query, func(r rune) bool { return r < 0x20 }) {
			return // not sendable as such: net/http refuses it client-side
		}
		before := s.Upstream.RequestCount()
		resp, body, err := s.Get(t, "/v4/"+recordID+"/task-log?"+query, servertest.Token, "Range", rangeHeader)
		if err != nil {
			t.Fatalf("?%s Range %q: status %d, body ended with %v", query, rangeHeader, resp.StatusCode, err)
		}
		switch {
		case resp.StatusCode >= 500:
			t.Fatalf("?%s Range %q: status %d: %s", query, rangeHeader, resp.StatusCode, body)
		case resp.StatusCode >= 400:
			var doc map[string]string
			if json.Unmarshal(body, &doc) != nil || doc["error_code"] == "" || doc["error_msg"] == "" {
				t.Fatalf("?%s Range %q: status %d with body %q, want the JSON error document", query, rangeHeader, resp.StatusCode, body)
			}
		case resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusPartialContent:
			if !bytes.Contains(info, body) && !bytes.Contains(debug, body) {
				t.Fatalf("?%s Range %q: %d bytes that are not a slice of the log", query, rangeHeader, len(body))
			}
		default:
			t.Fatalf("?%s Range %q: unexpected status %d", query, rangeHeader, resp.StatusCode)
		}
		reqs := s.Upstream.Requests()
		if s.Upstream.RequestCount() == before {
			return
		}
		sent, _ := url.ParseQuery(query)
		got := reqs[len(reqs)-1].Query["task_name"]
		if len(got) != 1 || len(sent["task_name"]) == 0 || got[0] != sent["task_name"][0] {
			t.Fatalf("?%s: the upstream saw task_name %q", query, got)
		}
	})
}
