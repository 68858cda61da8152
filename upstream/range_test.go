package upstream_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"testing"

	"github.com/buildlog/buildlog/upstream"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

func TestDownloadTaskLogRanges(t *testing.T) {
	t.Parallel()
	up, c := newUpstream(t)
	const size = 10_000
	up.AddLog(recordID, "sized", upstreamtest.Log{Size: size})
	up.AddLog(recordID, "unsized", upstreamtest.Log{Size: size, OmitLength: true})
	up.AddLog(recordID, "norange", upstreamtest.Log{Size: size, IgnoreRange: true})
	tests := []struct {
		name          string
		task          string
		offset, limit int64
		wantRange     string // the Range header of the last upstream request
		wantSize      int64
		wantBody      [2]int64 // the slice of the log the body holds
		wantRequests  int
	}{
		{"no range", "sized", 0, 0, "", size, [2]int64{0, size}, 1},
		{"offset honoured", "sized", 4000, 0, "bytes=4000-", size, [2]int64{4000, size}, 1},
		{"offset and limit honoured", "sized", 4000, 100, "bytes=4000-4099", size, [2]int64{4000, 4100}, 1},
		{"limit only", "sized", 0, 10, "bytes=0-9", size, [2]int64{0, 10}, 1},
		{"limit past the end", "sized", 9990, 100, "bytes=9990-10089", size, [2]int64{9990, size}, 1},
		{"offset at the end, size known", "sized", size, 0, "bytes=10000-", size, [2]int64{0, 0}, 1},
		{"offset past the end, size known", "sized", size + 5, 0, "bytes=10005-", size, [2]int64{0, 0}, 1},
		{"unknown total", "unsized", 4000, 0, "bytes=4000-", -1, [2]int64{4000, size}, 1},
		// Refetched whole and skipped to the end by the client.
		{"offset at the end, size unknown: refetch whole", "unsized", size, 0, "", -1, [2]int64{size, size}, 2},
		{"offset past the end, size unknown: refetch whole", "unsized", size + 5, 0, "", size, [2]int64{0, 0}, 2},
		{"range ignored: skipped by the client", "norange", 4000, 0, "bytes=4000-", size, [2]int64{4000, size}, 1},
		{"range ignored, offset past the end", "norange", size + 5, 0, "bytes=10005-", size, [2]int64{0, 0}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := up.RequestCount()
			log, err := c.DownloadTaskLog(context.Background(), upstream.Request{RecordID: recordID, TaskName: tt.task, Token: token, Offset: tt.offset, Limit: tt.limit})
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, log.Body)
			if log.Size != tt.wantSize {
				t.Errorf("Size = %d, want %d", log.Size, tt.wantSize)
			}
			want := upstreamtest.Generate(size, "INFO", tt.task)[tt.wantBody[0]:tt.wantBody[1]]
			if !bytes.Equal(body, want) {
				t.Errorf("body: %d bytes, want bytes [%d, %d) of the log", len(body), tt.wantBody[0], tt.wantBody[1])
			}
			reqs := up.Requests()
			if got := up.RequestCount() - n; got != tt.wantRequests {
				t.Errorf("%d upstream requests, want %d", got, tt.wantRequests)
			}
			if got := reqs[len(reqs)-1].Header.Get("Range"); got != tt.wantRange {
				t.Errorf("last Range header %q, want %q", got, tt.wantRange)
			}
		})
	}
}

func TestDownloadTaskLogBadPartialAnswers(t *testing.T) {
	t.Parallel()
	up, c := newUpstream(t)
	up.AddLog(recordID, "stage1", upstreamtest.Log{Size: 1000})
	for _, tt := range []struct {
		name         string
		contentRange string
	}{
		{"wrong start", "bytes 0-9/1000"},
		{"longer than asked", "bytes 100-299/1000"},
		{"malformed", "bytes 100-"},
		{"missing", ""},
		{"last before first", "bytes 100-50/1000"},
		{"total inside the range", "bytes 100-109/105"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			if tt.contentRange != "" {
				h.Set("Content-Range", tt.contentRange)
			}
			up.Inject(upstreamtest.Fault{Status: http.StatusPartialContent, Header: h, Body: "0123456789"})
			_, err := c.DownloadTaskLog(context.Background(), upstream.Request{RecordID: recordID, TaskName: "stage1", Token: token, Offset: 100, Limit: 100})
			var pe *upstream.ProtocolError
			if !errors.As(err, &pe) {
				t.Errorf("error = %v, want *upstream.ProtocolError", err)
			}
		})
	}
	// A 206 the client did not ask for is not a log.
	up.Inject(upstreamtest.Fault{Status: http.StatusPartialContent, Header: http.Header{"Content-Range": {"bytes 0-9/1000"}}, Body: "0123456789"})
	_, err := c.DownloadTaskLog(context.Background(), upstream.Request{RecordID: recordID, TaskName: "stage1", Token: token})
	var ue *upstream.Error
	if !errors.As(err, &ue) || ue.StatusCode != http.StatusPartialContent {
		t.Errorf("unasked 206: error = %v, want *upstream.Error with status 206", err)
	}
}
