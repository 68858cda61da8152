package server_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/buildlog/buildlog/api"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// TestHostileTaskNamesReachTheUpstreamExactly sends task names full of URL
// syntax on both paths: the upstream sees each as one task_name parameter
// equal to what the caller gave, never a second parameter.
func TestHostileTaskNamesReachTheUpstreamExactly(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	for _, task := range []string{
		"a&log_level=DEBUG", "b#fragment", "c%2F%25", "d/../../e", "f g+h", "i\r\nX-Injected: 1", "日志 ü", "?x=1;y=2",
	} {
		s.Upstream.AddLog(recordID, task, upstreamtest.Log{Size: 10})
		for _, path := range []string{"gRPC", "REST"} {
			n := s.Upstream.RequestCount()
			var err error
			if path == "gRPC" {
				_, err = s.Download(&buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: task})
			} else {
				var resp *http.Response
				resp, _, err = s.Get(t, "/v4/"+recordID+"/task-log?task_name="+url.QueryEscape(task), token)
				if err == nil && resp.StatusCode != 200 {
					err = fmt.Errorf("status %d", resp.StatusCode)
				}
			}
			if err != nil {
				t.Errorf("%s, task %q: %v", path, task, err)
				continue
			}
			reqs := s.Upstream.Requests()[n:]
			if len(reqs) != 1 || len(reqs[0].Query["task_name"]) != 1 || reqs[0].Query["task_name"][0] != task || len(reqs[0].Query) != 1 {
				t.Errorf("%s, task %q: the upstream saw %d requests, the last with query %q", path, task, len(reqs), reqs[len(reqs)-1].Query)
			}
		}
	}
}

// TestHostileInputIsRefusedBeforeTheUpstream checks that path tricks in
// record_id and unusable tokens are refused with a clear error, and never
// reach the upstream.
func TestHostileInputIsRefusedBeforeTheUpstream(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: 10})
	upper := strings.ToUpper(recordID)

	for _, path := range []string{
		"/v4/../v4/" + recordID + "/task-log?task_name=stage1",
		"/v4/..%2F" + recordID[3:] + "/task-log?task_name=stage1",
		"/v4/" + recordID[:8] + "%2F" + recordID[9:] + "/task-log?task_name=stage1",
		"/v4/" + recordID[:8] + "%252F" + recordID[9:] + "/task-log?task_name=stage1",
		"/v4/" + upper + "/task-log?task_name=stage1",
		"/v4/" + recordID + "%00/task-log?task_name=stage1",
	} {
		resp, body, _ := s.Get(t, path, token)
		if resp.StatusCode != http.StatusBadRequest && resp.StatusCode != http.StatusNotFound {
			t.Errorf("REST %s: status %d (%s), want 400 or 404", path, resp.StatusCode, body)
		}
	}
	for _, id := range []string{"../../../../etc/passwd", recordID[:8] + "/" + recordID[9:], recordID[:8] + "%2F" + recordID[9:], upper, recordID + "\x00"} {
		_, err := s.Download(&buildlogv1.DownloadTaskLogRequest{RecordId: id, TaskName: "stage1"})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "record_id") {
			t.Errorf("gRPC record_id %q: %v, want INVALID_ARGUMENT naming record_id", id, err)
		}
	}

	// Tokens: CR and NUL cannot be sent by the Go clients, so they go raw
	// on the wire; net/http refuses them.
	for _, tok := range []string{"abc\rdef", "abc\x00", "abc\ndef"} {
		conn, err := net.Dial("tcp", strings.TrimPrefix(s.RESTURL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\nX-Auth-Token: %s\r\nConnection: close\r\n\r\n", logPath("stage1"), tok)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil || (resp.StatusCode != http.StatusBadRequest && resp.StatusCode != http.StatusUnauthorized) {
			t.Errorf("REST token %q: %v %v, want 400 or 401", tok, resp, err)
		}
		conn.Close()
	}
	for _, tok := range []string{"space inside", strings.Repeat("x", 100_001)} {
		ctx := metadata.AppendToOutgoingContext(context.Background(), api.TokenMetadataKey, tok)
		stream, err := s.Client.DownloadTaskLog(ctx, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"})
		if err == nil {
			_, err = stream.Recv()
		}
		if status.Code(err) != codes.Unauthenticated || strings.Contains(err.Error(), tok) {
			t.Errorf("gRPC token of %d bytes: %.200v, want UNAUTHENTICATED without the token", len(tok), err)
		}
	}
	if n := s.Upstream.RequestCount(); n != 0 {
		t.Errorf("the upstream received %d requests, want none", n)
	}
}
