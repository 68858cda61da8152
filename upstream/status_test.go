package upstream_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/buildlog/buildlog/upstream"
)

// stagesServer answers GET /v1/record/{id}/full-stages with body (and
// status), counting its requests and checking the token on each.
func stagesServer(t *testing.T, status int, body string) (*upstream.Client, *atomic.Int32) {
	t.Helper()
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		if r.URL.Path != "/v1/record/"+recordID+"/full-stages" || r.Header.Get("X-Auth-Token") != token {
			http.Error(w, "unexpected request", http.StatusTeapot)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Request-Id", "req-1")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	c, err := upstream.New(srv.URL, upstream.WithRetry(upstream.RetryPolicy{Attempts: 3, MaxResumes: 1}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c, &n
}

func TestActionStatus(t *testing.T) {
	t.Parallel()
	// Keys are ids, not names: the stage is the one whose sequence is N.
	const stages = `{"status":"success","result":{"build_stages":{
		"a1": {"id":"a1","status":"success","finish_time":"2026-12-02 10:00:00","sequence":1,"display_name":"stage2"},
		"b2": {"id":"b2","status":"RUNNING","finish_time":"","sequence":2,"display_name":"stage1"},
		"c3": {"id":"c3","status":"Timed_Out","sequence":"3"},
		"d4": {"id":"d4","status":"compiling","finish_time":null,"sequence":4},
		"e5": {"id":"e5","status":"weird","finish_time":"2026-12-02 11:00:00","sequence":5},
		"build": {"status":"failed","finish_time":"2026-12-02 12:00:00","sequence":0}}}}`
	c, _ := stagesServer(t, http.StatusOK, stages)
	tests := []struct {
		task       string
		want       upstream.Action
		wantListed bool
	}{
		{"stage1", upstream.Action{Listed: true, Status: "success", FinishTime: "2026-12-02 10:00:00", Finished: true}, true},
		{"stage2", upstream.Action{Listed: true, Status: "RUNNING"}, true},
		{"stage3", upstream.Action{Listed: true, Status: "Timed_Out", Finished: true}, true},
		{"stage4", upstream.Action{Listed: true, Status: "compiling"}, true},                                                // an unknown word: running
		{"stage5", upstream.Action{Listed: true, Status: "weird", FinishTime: "2026-12-02 11:00:00", Finished: true}, true}, // a finish time ends it
		{"stage9", upstream.Action{}, false},
		{"build", upstream.Action{Listed: true, Status: "failed", FinishTime: "2026-12-02 12:00:00", Finished: true}, true}, // not stageN: by key
	}
	for _, tt := range tests {
		got, err := c.ActionStatus(context.Background(), upstream.Request{RecordID: recordID, TaskName: tt.task, Token: token})
		if err != nil {
			t.Fatalf("%s: %v", tt.task, err)
		}
		tt.want.RequestID = "req-1"
		if *got != tt.want {
			t.Errorf("%s: got %+v, want %+v", tt.task, *got, tt.want)
		}
	}
}

func TestActionStatusErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		status    int
		body      string
		wantCode  string
		wantHTTP  int
		protocol  bool
		wantTries int32
	}{
		{name: "not found", status: 404, body: `{"error_code":"CB.00060404","error_msg":"no such record"}`, wantCode: "CB.00060404", wantHTTP: 404, wantTries: 1},
		{name: "refused token", status: 401, body: `{"error_code":"APIGW.0301","error_msg":"bad token"}`, wantCode: "APIGW.0301", wantHTTP: 401, wantTries: 1},
		{name: "busy is retried", status: 500, body: `{"error_code":"CB.00060100","error_msg":"network busy"}`, wantCode: "CB.00060100", wantHTTP: 500, wantTries: 3},
		{name: "fail document", status: 200, body: `{"status":"fail","error":{"error_code":"CB.00060201","error_msg":"bad record"}}`, wantCode: "CB.00060201", wantHTTP: 200, wantTries: 1},
		{name: "fail document, top-level code", status: 200, body: `{"status":"fail","error_code":"CB.1","error_msg":"x"}`, wantCode: "CB.1", wantHTTP: 200, wantTries: 1},
		{name: "not JSON", status: 200, body: `<html>gateway</html>`, protocol: true, wantTries: 1},
		{name: "wrong shape", status: 200, body: `{"result":{"build_stages":[1,2]}}`, protocol: true, wantTries: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, n := stagesServer(t, tt.status, tt.body)
			_, err := c.ActionStatus(context.Background(), upstream.Request{RecordID: recordID, TaskName: "stage1", Token: token})
			var upErr *upstream.Error
			var protoErr *upstream.ProtocolError
			switch {
			case tt.protocol && !errors.As(err, &protoErr):
				t.Fatalf("got %v, want a protocol error", err)
			case !tt.protocol && !errors.As(err, &upErr):
				t.Fatalf("got %v, want an upstream error", err)
			case !tt.protocol && (upErr.Code != tt.wantCode || upErr.StatusCode != tt.wantHTTP || upErr.RequestID != "req-1"):
				t.Errorf("got %+v, want code %s, HTTP %d, request id req-1", upErr, tt.wantCode, tt.wantHTTP)
			}
			if got := n.Load(); got != tt.wantTries {
				t.Errorf("%d requests, want %d", got, tt.wantTries)
			}
			if err != nil && strings.Contains(err.Error(), token) {
				t.Errorf("the error %q holds the token", err)
			}
		})
	}
}

func TestFinishedWords(t *testing.T) {
	t.Parallel()
	for _, w := range []string{"success", "SUCCESS", "failed", "Failure", "error", "aborted", "canceled", "CANCELLED", "timeout", "timed-out", "Timed_Out", "stopped"} {
		if !upstream.Finished(w) {
			t.Errorf("Finished(%q) = false, want true", w)
		}
	}
	for _, w := range []string{"", "running", "RUNNING", "queued", "pending", "init", "waiting", "compiling", "successor"} {
		if upstream.Finished(w) {
			t.Errorf("Finished(%q) = true, want false", w)
		}
	}
}
