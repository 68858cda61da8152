package server_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/buildlog/buildlog/server"
	"github.com/buildlog/buildlog/server/servertest"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

func TestRESTRangeRequests(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	const size = 1000
	full := upstreamtest.Generate(size, "INFO", "stage1")
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: size})
	s.Upstream.AddLog(recordID, "chunked", upstreamtest.Log{Size: size, OmitLength: true})

	tests := []struct {
		name, task, query, rangeHeader string
		extra                          []string // more request headers
		wantStatus                     int
		wantBody                       []byte
		wantContentRange               string
		wantCode                       string // error_code of an error
	}{
		{name: "open range", rangeHeader: "bytes=100-", wantStatus: 206, wantBody: full[100:], wantContentRange: "bytes 100-999/1000"},
		{name: "closed range", rangeHeader: "bytes=100-199", wantStatus: 206, wantBody: full[100:200], wantContentRange: "bytes 100-199/1000"},
		{name: "last byte past the end", rangeHeader: "bytes=990-5000", wantStatus: 206, wantBody: full[990:], wantContentRange: "bytes 990-999/1000"},
		{name: "spaces and case", rangeHeader: " Bytes = 0 - 0 ", wantStatus: 206, wantBody: full[:1], wantContentRange: "bytes 0-0/1000"},
		{name: "huge last byte", rangeHeader: "bytes=5-9223372036854775807", wantStatus: 206, wantBody: full[5:], wantContentRange: "bytes 5-999/1000"},
		{name: "starts at the end", rangeHeader: "bytes=1000-", wantStatus: 416, wantContentRange: "bytes */1000", wantCode: "BUILDLOG.RANGE_NOT_SATISFIABLE"},
		{name: "starts past the end", rangeHeader: "bytes=5000-6000", wantStatus: 416, wantContentRange: "bytes */1000", wantCode: "BUILDLOG.RANGE_NOT_SATISFIABLE"},
		// A 206 must name its last byte: without the length, the whole log.
		{name: "unknown length", task: "chunked", rangeHeader: "bytes=10-", wantStatus: 200, wantBody: upstreamtest.Generate(size, "INFO", "chunked")},
		{name: "with offset too", query: "offset=5", rangeHeader: "bytes=10-", wantStatus: 400, wantCode: "BUILDLOG.INVALID_REQUEST"},
		// A range of the whole log is none.
		{name: "from the first byte", rangeHeader: "bytes=0-", wantStatus: 200, wantBody: full},
		// Ranges the mirror does not support are ignored: the whole log.
		{name: "suffix range", rangeHeader: "bytes=-100", wantStatus: 200, wantBody: full},
		{name: "several ranges", rangeHeader: "bytes=0-1,5-6", wantStatus: 200, wantBody: full},
		{name: "inverted range", rangeHeader: "bytes=9-1", wantStatus: 200, wantBody: full},
		{name: "other unit", rangeHeader: "lines=1-2", wantStatus: 200, wantBody: full},
		{name: "overflow", rangeHeader: "bytes=99999999999999999999-", wantStatus: 200, wantBody: full},
		{name: "If-Range", rangeHeader: "bytes=100-", extra: []string{"If-Range", `"v1"`}, wantStatus: 200, wantBody: full},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			task := tt.task
			if task == "" {
				task = "stage1"
			}
			path := logPath(task)
			if tt.query != "" {
				path = logPath(task, tt.query)
			}
			resp, body, err := s.Get(t, path, token, append([]string{"Range", tt.rangeHeader}, tt.extra...)...)
			if err != nil {
				t.Fatalf("status %d, read error %v", resp.StatusCode, err)
			}
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, want %d (body %.200s)", resp.StatusCode, tt.wantStatus, body)
			}
			checkHeader(t, resp, "Content-Range", tt.wantContentRange)
			if tt.wantCode != "" {
				var doc map[string]string
				if err := json.Unmarshal(body, &doc); err != nil || doc["error_code"] != tt.wantCode || doc["error_msg"] == "" ||
					strings.Contains(doc["error_msg"], "rpc error") || strings.Contains(doc["error_msg"], "ForwardResponse") {
					t.Errorf("body %s, want error_code %s and a message of its own", body, tt.wantCode)
				}
				return
			}
			if task == "chunked" {
				if !bytes.Equal(body, tt.wantBody) || resp.Header.Get("Accept-Ranges") != "" {
					t.Errorf("body %d bytes, Accept-Ranges %q; want the %d bytes of the log and no Accept-Ranges", len(body), resp.Header.Get("Accept-Ranges"), len(tt.wantBody))
				}
				return
			}
			if !bytes.Equal(body, tt.wantBody) || resp.ContentLength != int64(len(tt.wantBody)) {
				t.Errorf("body %d bytes, Content-Length %d; want the %d bytes of the range", len(body), resp.ContentLength, len(tt.wantBody))
			}
			checkHeader(t, resp, "Accept-Ranges", "bytes")
		})
	}
}

// TestCurlResumes runs curl -C - against the mirror: a partial file is
// completed, and a complete one is left alone.
func TestCurlResumes(t *testing.T) {
	t.Parallel()
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl is not installed")
	}
	s := startStack(t)
	const size = 300_000
	full := upstreamtest.Generate(size, "INFO", "stage1")
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: size})
	file := filepath.Join(t.TempDir(), "stage1.log")
	for _, have := range []int{123_457, size} {
		if err := os.WriteFile(file, full[:have], 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(curl, "-sS", "-C", "-", "-o", file, "-H", "X-Auth-Token: "+token, s.RESTURL+logPath("stage1")).CombinedOutput()
		got, _ := os.ReadFile(file)
		// curl exits 0 after resuming, and also when a 416 says the file is
		// already complete.
		if err != nil || !bytes.Equal(got, full) {
			t.Errorf("from %d bytes: curl %v: %s; file has %d bytes, want the %d of the log", have, err, out, len(got), size)
		}
	}
	if last := s.Upstream.Requests()[0]; last.Header.Get("Range") != "bytes=123457-" {
		t.Errorf("the upstream saw Range %q, want the rest only", last.Header.Get("Range"))
	}

	// A log of unknown length cannot be resumed: curl is told so (a 200
	// to its Range) and leaves the partial file as it was.
	s.Upstream.AddLog(recordID, "chunked", upstreamtest.Log{Size: size, OmitLength: true})
	full = upstreamtest.Generate(size, "INFO", "chunked")
	if err := os.WriteFile(file, full[:1000], 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(curl, "-sS", "-C", "-", "-o", file, "-H", "X-Auth-Token: "+token, s.RESTURL+logPath("chunked")).CombinedOutput()
	if got, _ := os.ReadFile(file); err == nil || !bytes.Equal(got, full[:1000]) {
		t.Errorf("resuming a log of unknown length: curl %v: %s; file has %d bytes, want curl to fail and the 1000 bytes untouched", err, out, len(got))
	}
}

// TestRESTHead checks that HEAD answers the headers a GET would, without a
// body, and stops its upstream download.
func TestRESTHead(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	const size = 5 << 20
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: size, FileName: "stage1.log"})
	for _, tt := range []struct {
		name, token, rangeHeader string
		wantStatus               int
		wantLength               int64
		wantContentRange         string
	}{
		{"whole log", token, "", 200, size, ""},
		{"a range", token, "bytes=10-19", 206, 10, "bytes 10-19/5242880"},
		{"past the end", token, "bytes=6000000-", 416, -1, "bytes */5242880"},
		{"no token", "", "", 401, -1, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := s.Upstream.RequestCount()
			req, _ := http.NewRequest(http.MethodHead, s.RESTURL+logPath("stage1"), nil)
			if tt.token != "" {
				req.Header.Set("X-Auth-Token", tt.token)
			}
			if tt.rangeHeader != "" {
				req.Header.Set("Range", tt.rangeHeader)
			}
			resp, err := s.HTTP.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || len(body) != 0 || resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, %d body bytes, %v; want %d and no body", resp.StatusCode, len(body), err, tt.wantStatus)
			}
			if tt.wantLength >= 0 && resp.ContentLength != tt.wantLength {
				t.Errorf("Content-Length %d, want %d", resp.ContentLength, tt.wantLength)
			}
			checkHeader(t, resp, "Content-Range", tt.wantContentRange)
			if tt.wantStatus < 300 {
				checkHeader(t, resp, "Accept-Ranges", "bytes")
				checkHeader(t, resp, "Content-Disposition", "attachment; filename=stage1.log")
			}
			for _, r := range s.Upstream.Requests()[before:] {
				<-r.Done // the download behind the HEAD was stopped
			}
		})
	}
	if sent := s.Upstream.BytesSent(); sent >= size {
		t.Errorf("the upstream sent %d bytes for HEAD requests, want the download stopped early", sent)
	}
}

// TestRangeServedAgainReleasesTheFirstAttempt checks that when a Range on a
// log of unknown length is served again without it, the first attempt's
// call lets go of the data lent to it at once, rather than holding its
// ring and goroutine until the second attempt ends.
//
// Not parallel: it counts the goroutines of the whole process.
func TestRangeServedAgainReleasesTheFirstAttempt(t *testing.T) {
	s := startStack(t)
	s.Upstream.AddLog(recordID, "unsized", upstreamtest.Log{Size: 64 << 20, OmitLength: true})
	req, _ := http.NewRequest(http.MethodGet, s.RESTURL+logPath("unsized"), nil)
	req.Header.Set("X-Auth-Token", token)
	req.Header.Set("Range", "bytes=100-")
	resp, err := s.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200 (the whole log)", resp.StatusCode)
	}
	// The second attempt is under way, held back by this reader: at most
	// its own call may wait in SendMsg, with data lent to the mirror.
	if _, err := io.ReadFull(resp.Body, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	lending := func() int {
		buf := make([]byte, 8<<20)
		return strings.Count(string(buf[:runtime.Stack(buf, true)]), "(*inprocServerStream).SendMsg(")
	}
	giveUp := time.After(10 * time.Second)
	for n := lending(); n > 1; n = lending() {
		select {
		case <-giveUp:
			t.Fatalf("%d calls wait with lent data, want at most the second attempt's", n)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// TestRangeServedAgainUnderFullCapacity checks that a Range on a log of
// unknown length, served again without it, succeeds when its first
// attempt holds the only download slot: the second call waits for the
// first to end rather than being refused as over capacity.
func TestRangeServedAgainUnderFullCapacity(t *testing.T) {
	t.Parallel()
	s := servertest.StartWith(t, func(cfg *server.Config) { cfg.MaxDownloads = 1 })
	s.Upstream.AddLog(recordID, "unsized", upstreamtest.Log{Size: 1 << 20, OmitLength: true})
	want := upstreamtest.Generate(1<<20, "INFO", "unsized")
	for i := range 20 {
		resp, body, err := s.Get(t, logPath("unsized"), token, "Range", "bytes=100-")
		if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(body, want) {
			t.Fatalf("request %d: status %d, %d bytes, %v; want 200 and the whole log", i, resp.StatusCode, len(body), err)
		}
	}
}
