package server_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/buildlog/buildlog/server"
	"github.com/buildlog/buildlog/server/servertest"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// A request that does not parse is refused with a message a person can
// act on: what is wrong, where, and what is expected; no library's words.
func TestRESTRequestMessages(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: 100})
	tests := []struct {
		name, path, want string
	}{
		{"upper case record id", "/v4/" + strings.ToUpper(recordID) + "/task-log?task_name=stage1", "character 2 is 'A'"},
		{"escaped slash in the record id", "/v4/" + recordID[:8] + "%2F" + recordID[9:] + "/task-log?task_name=stage1", "character 9 is '/'"},
		{"short record id", "/v4/abc/task-log?task_name=stage1", "got 3"},
		{"unknown log level", logPath("stage1", "log_level=trace"), `unknown value "trace": use INFO or DEBUG`},
		{"offset not a number", logPath("stage1", "offset=abc"), `offset: must be a whole number of bytes, got "abc"`},
		{"limit not a number", logPath("stage1", "limit=1e3"), `limit: must be a whole number of bytes, got "1e3"`},
		{"task name twice", logPath("stage1", "task_name=stage2"), "task_name: is given 2 times"},
		{"every problem at once", "/v4/abc/task-log?offset=x", "record_id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			resp, body, _ := s.Get(t, tt.path, token)
			var doc map[string]string
			json.Unmarshal(body, &doc)
			msg := doc["error_msg"]
			if resp.StatusCode != http.StatusBadRequest || doc["error_code"] != "BUILDLOG.INVALID_REQUEST" || !strings.Contains(msg, tt.want) {
				t.Errorf("HTTP %d %s, want 400 BUILDLOG.INVALID_REQUEST with %q", resp.StatusCode, body, tt.want)
			}
			for _, internal := range []string{"strconv", "ParseInt", "rpc error", "parsing field"} {
				if strings.Contains(msg, internal) {
					t.Errorf("error_msg %q shows a library's %q", msg, internal)
				}
			}
		})
	}
	if n := s.Upstream.RequestCount(); n != 0 {
		t.Errorf("the upstream got %d requests, want none", n)
	}
}

// The REST port speaks HTTP/2 with prior knowledge (h2c), as mesh sidecars
// do, besides HTTP/1.1.
func TestRESTSpeaksH2C(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: 100})
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	h2c := &http.Client{Transport: &http.Transport{Protocols: &protocols}}
	req, _ := http.NewRequest(http.MethodGet, s.RESTURL+logPath("stage1"), nil)
	req.Header.Set("X-Auth-Token", token)
	resp, err := h2c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
		t.Errorf("h2c: %s over %s, want 200 over HTTP/2", resp.Status, resp.Proto)
	}
}

// CORS is off unless origins are allowed; then a page of such an origin
// may send X-Auth-Token and read the log's headers.
func TestRESTCORS(t *testing.T) {
	t.Parallel()
	const origin = "https://dashboard.example"
	preflight := func(s *servertest.Stack) *http.Response {
		req, _ := http.NewRequest(http.MethodOptions, s.RESTURL+logPath("stage1"), nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "GET")
		req.Header.Set("Access-Control-Request-Headers", "range,x-auth-token") // as browsers send it: sorted, lower case
		resp, err := s.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}

	off := startStack(t)
	if resp := preflight(off); resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("without allowed origins the preflight allowed %q", resp.Header.Get("Access-Control-Allow-Origin"))
	}

	on := servertest.StartWith(t, func(c *server.Config) { c.CORSAllowedOrigins = []string{origin} })
	on.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: 100})
	resp := preflight(on)
	if resp.Header.Get("Access-Control-Allow-Origin") != origin || !strings.Contains(strings.ToLower(resp.Header.Get("Access-Control-Allow-Headers")), "x-auth-token") {
		t.Errorf("preflight: %s, headers %v; want the origin and X-Auth-Token allowed", resp.Status, resp.Header)
	}
	resp, _, err := on.Get(t, logPath("stage1"), token, "Origin", origin)
	if err != nil || resp.StatusCode != http.StatusOK || resp.Header.Get("Access-Control-Allow-Origin") != origin ||
		!strings.Contains(resp.Header.Get("Access-Control-Expose-Headers"), "Content-Length") {
		t.Errorf("GET from the page: %s, headers %v; want the log readable with its Content-Length", resp.Status, resp.Header)
	}
	resp, _, _ = on.Get(t, logPath("stage1"), token, "Origin", "https://elsewhere.example")
	if resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Error("another origin was allowed")
	}
}
