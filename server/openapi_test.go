package server_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/buildlog/buildlog/gateway"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// TestOpenAPIDescribesTheMirror fetches /openapi.json from the REST port and
// checks that it parses, describes the raw-body route and its error shape,
// and that the route and parameters it documents are the ones the mirror
// answers.
func TestOpenAPIDescribesTheMirror(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	resp, body, err := s.Get(t, "/openapi.json", "")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /openapi.json: status %d, %v", resp.StatusCode, err)
	}
	checkHeader(t, resp, "Content-Type", "application/json")
	type header struct{ Type string }
	type response struct {
		Schema struct {
			Ref    string `json:"$ref"`
			Type   string
			Format string
		}
		Headers map[string]header
	}
	var doc struct {
		Swagger string
		Paths   map[string]map[string]struct {
			Produces   []string
			Parameters []struct{ Name, In string }
			Responses  map[string]response
		}
		Definitions map[string]struct {
			Properties map[string]any
		}
		SecurityDefinitions map[string]struct{ Name, In string }
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("/openapi.json does not parse: %v", err)
	}
	if doc.Swagger != "2.0" {
		t.Errorf("swagger = %q, want 2.0", doc.Swagger)
	}
	if got := doc.SecurityDefinitions["IamToken"]; got.Name != "X-Auth-Token" || got.In != "header" {
		t.Errorf("security definition IamToken = %+v, want the X-Auth-Token header", got)
	}
	// The mirror's route is the one the document was generated with, from
	// buildlog_http.yaml.
	const route = gateway.Route
	if len(doc.Paths) != 1 || doc.Paths[route] == nil {
		t.Fatalf("paths %v, want only the mirror's route %s", doc.Paths, route)
	}
	op, ok := doc.Paths[route]["get"]
	if !ok || len(doc.Paths[route]) != 1 {
		t.Fatalf("%s has %v, want GET only", route, doc.Paths[route])
	}
	if !slices.Contains(op.Produces, "application/octet-stream") {
		t.Errorf("produces %v, want application/octet-stream (a raw body)", op.Produces)
	}
	for _, code := range []string{"200", "206"} {
		r := op.Responses[code]
		if r.Schema.Type != "string" || r.Schema.Format != "binary" {
			t.Errorf("response %s schema = %+v, want a binary string (the raw log)", code, r.Schema)
		}
	}
	for code, hdr := range map[string]string{"200": "Content-Disposition", "206": "Content-Range", "416": "Content-Range", "429": "Retry-After"} {
		if _, ok := op.Responses[code].Headers[hdr]; !ok {
			t.Errorf("response %s documents headers %v, want %s", code, op.Responses[code].Headers, hdr)
		}
	}
	for _, code := range []string{"400", "401", "404", "416", "429", "500", "503"} {
		ref := op.Responses[code].Schema.Ref
		name, _ := strings.CutPrefix(ref, "#/definitions/")
		props := doc.Definitions[name].Properties
		for _, field := range []string{"error_code", "error_msg", "request_id"} {
			if _, ok := props[field]; !ok {
				t.Errorf("response %s schema %q lacks %s", code, ref, field)
			}
		}
	}

	// The documented route and every documented query parameter work.
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: 100})
	path := strings.Replace(route, "{record_id}", recordID, 1) + "?task_name=stage1"
	var params []string
	for _, p := range op.Parameters {
		params = append(params, p.In+":"+p.Name)
		switch {
		case p.In == "query" && p.Name == "log_level":
			path += "&log_level=LOG_LEVEL_INFO"
		case p.In == "query" && (p.Name == "offset" || p.Name == "limit"):
			path += "&" + p.Name + "=10"
		}
	}
	for _, want := range []string{"path:record_id", "query:task_name", "query:log_level", "query:offset", "query:limit", "header:Range"} {
		if !slices.Contains(params, want) {
			t.Errorf("parameters %v lack %s", params, want)
		}
	}
	resp, body, err = s.Get(t, path, token)
	if err != nil || resp.StatusCode != http.StatusOK || len(body) != 10 {
		t.Errorf("GET %s as documented: status %d, %d bytes, %v; want 200 and 10 bytes", path, resp.StatusCode, len(body), err)
	}
	resp, body, err = s.Get(t, strings.Replace(route, "{record_id}", recordID, 1)+"?task_name=stage1", token, "Range", "bytes=10-19")
	if err != nil || resp.StatusCode != http.StatusPartialContent || len(body) != 10 || resp.Header.Get("Content-Range") != "bytes 10-19/100" {
		t.Errorf("GET with Range bytes=10-19 as documented: status %d, Content-Range %q, %d bytes, %v; want 206, bytes 10-19/100",
			resp.StatusCode, resp.Header.Get("Content-Range"), len(body), err)
	}
	resp, _, _ = s.Get(t, strings.Replace(route, "{record_id}", recordID, 1)+"?task_name=stage1", token, "Range", "bytes=200-")
	if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Errorf("GET with Range past the end: status %d, want 416 as documented", resp.StatusCode)
	}
	resp, body, _ = s.Get(t, strings.Replace(route, "{record_id}", "bad", 1)+"?task_name=stage1", token)
	var e map[string]any
	if err := json.Unmarshal(body, &e); err != nil || resp.StatusCode != http.StatusBadRequest || e["error_code"] == nil || e["error_msg"] == nil {
		t.Errorf("invalid request: status %d, body %s; want 400 with the documented error shape", resp.StatusCode, body)
	}
}
