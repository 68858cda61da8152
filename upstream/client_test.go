package upstream_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"github.com/buildlog/buildlog/upstream"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	token    = "test-token"
	recordID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
)

// newUpstream returns a simulated upstream and a client for it, both closed
// when the test ends.
func newUpstream(t *testing.T, opts ...upstream.Option) (*upstreamtest.Server, *upstream.Client) {
	t.Helper()
	up := upstreamtest.NewServer()
	up.AddToken(token)
	c, err := upstream.New(up.URL, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.CloseIdleConnections()
		up.Close()
	})
	return up, c
}

func TestNewValidatesEndpoint(t *testing.T) {
	t.Parallel()
	for _, endpoint := range []string{
		"", "cloudbuild-ext.cn-north-4.myhuaweicloud.com", "ftp://example.com", "https://",
		"https://user:pass@example.com", "https://example.com/?x=1", "https://example.com/#frag", "://bad",
	} {
		if _, err := upstream.New(endpoint); err == nil {
			t.Errorf("New(%q) succeeded, want an error", endpoint)
		}
	}
	for _, endpoint := range []string{"https://cloudbuild-ext.cn-north-4.myhuaweicloud.com", "http://127.0.0.1:8080", "http://sidecar:15001/prefix/"} {
		if _, err := upstream.New(endpoint); err != nil {
			t.Errorf("New(%q) = %v, want success", endpoint, err)
		}
	}
}

func TestRegionEndpoint(t *testing.T) {
	t.Parallel()
	got, err := upstream.RegionEndpoint("cn-north-4")
	if want := "https://cloudbuild-ext.cn-north-4.myhuaweicloud.com"; err != nil || got != want {
		t.Errorf("RegionEndpoint(cn-north-4) = %q, %v; want %q", got, err, want)
	}
	for _, region := range upstream.Regions {
		if _, err := upstream.RegionEndpoint(region); err != nil {
			t.Errorf("RegionEndpoint(%q) = %v", region, err)
		}
	}
	if _, err := upstream.RegionEndpoint("mars-north-1"); err == nil {
		t.Error("RegionEndpoint(mars-north-1) succeeded, want an error")
	}
}

func TestURLEscaping(t *testing.T) {
	t.Parallel()
	c, err := upstream.New("https://api.example.com/base/")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		req  upstream.Request
		want string
	}{
		{"plain", upstream.Request{RecordID: recordID, TaskName: "stage1"},
			"https://api.example.com/base/v4/" + recordID + "/task-log?task_name=stage1"},
		{"log level", upstream.Request{RecordID: recordID, TaskName: "stage1", LogLevel: "DEBUG"},
			"https://api.example.com/base/v4/" + recordID + "/task-log?log_level=DEBUG&task_name=stage1"},
		{"hostile task name", upstream.Request{RecordID: recordID, TaskName: "a&b=c#d%e/f g+h\r\ni日"},
			"https://api.example.com/base/v4/" + recordID + "/task-log?task_name=a%26b%3Dc%23d%25e%2Ff%20g%2Bh%0D%0Ai%E6%97%A5"},
		{"hostile record id", upstream.Request{RecordID: "../x/y?z#", TaskName: "s"},
			"https://api.example.com/base/v4/..%2Fx%2Fy%3Fz%23/task-log?task_name=s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := c.URL(tt.req).String(); got != tt.want {
				t.Errorf("URL() = %s\nwant    %s", got, tt.want)
			}
		})
	}
}

func TestDownloadTaskLog(t *testing.T) {
	t.Parallel()
	up, c := newUpstream(t)
	content := []byte("line 1\nline 2\n")
	up.AddLog(recordID, "stage1", upstreamtest.Log{Content: content, ContentType: "text/plain; charset=utf-8", FileName: "stage1.log"})
	up.AddLog(recordID, "stage2", upstreamtest.Log{Size: 1 << 20, OmitLength: true})

	t.Run("with length", func(t *testing.T) {
		log, err := c.DownloadTaskLog(context.Background(), upstream.Request{RecordID: recordID, TaskName: "stage1", Token: token})
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, log.Body)
		if !bytes.Equal(body, content) {
			t.Errorf("body = %q, want %q", body, content)
		}
		if log.ContentType != "text/plain; charset=utf-8" || log.FileName != "stage1.log" || log.Size != int64(len(content)) || log.RequestID == "" {
			t.Errorf("Log = %+v, want text/plain, stage1.log, size %d and a request id", log, len(content))
		}
		req := up.Requests()[len(up.Requests())-1]
		if got := req.Header.Get("X-Auth-Token"); got != token {
			t.Errorf("upstream got X-Auth-Token %q, want %q", got, token)
		}
		if got := req.Header.Get("Accept-Encoding"); got != "" {
			t.Errorf("upstream got Accept-Encoding %q, want none (sizes and offsets are in log bytes)", got)
		}
	})
	t.Run("streamed without length", func(t *testing.T) {
		log, err := c.DownloadTaskLog(context.Background(), upstream.Request{RecordID: recordID, TaskName: "stage2", LogLevel: "DEBUG", Token: token})
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, log.Body)
		if want := upstreamtest.Generate(1<<20, "DEBUG", "stage2"); !bytes.Equal(body, want) {
			t.Errorf("body differs from the generated DEBUG log (%d bytes, want %d)", len(body), len(want))
		}
		if log.Size != -1 {
			t.Errorf("Size = %d, want -1 for a log without Content-Length", log.Size)
		}
	})
}

// noRetry turns retries and resumption off, to see single answers.
var noRetry = upstream.WithRetry(upstream.RetryPolicy{Attempts: 1})

func TestDownloadTaskLogErrors(t *testing.T) {
	t.Parallel()
	up, c := newUpstream(t, noRetry)
	up.AddLog(recordID, "stage1", upstreamtest.Log{Size: 100})
	tests := []struct {
		name  string
		fault *upstreamtest.Fault
		req   upstream.Request
		want  *upstream.Error
	}{
		{"wrong token", nil, upstream.Request{RecordID: recordID, TaskName: "stage1", Token: "nope"},
			&upstream.Error{StatusCode: 401, Code: upstreamtest.AuthFailedCode}},
		{"invalid parameter", nil, upstream.Request{RecordID: recordID, TaskName: "stage1", LogLevel: "TRACE", Token: token},
			&upstream.Error{StatusCode: 400, Code: upstreamtest.InvalidParameterCode}},
		{"unknown task", nil, upstream.Request{RecordID: recordID, TaskName: "stage9", Token: token},
			&upstream.Error{StatusCode: 404, Code: upstreamtest.NotFoundCode}},
		{"throttled", ptr(upstreamtest.Throttled(3 * time.Second)), upstream.Request{RecordID: recordID, TaskName: "stage1", Token: token},
			&upstream.Error{StatusCode: 429, Code: upstreamtest.ThrottledCode, RetryAfter: 3 * time.Second}},
		{"throttled as a 500", ptr(upstreamtest.ErrorFault(500, "CB.00060211", "too many requests")), upstream.Request{RecordID: recordID, TaskName: "stage1", Token: token},
			&upstream.Error{StatusCode: 500, Code: "CB.00060211"}},
		{"HTML 502", &upstreamtest.Fault{Status: 502, Body: "<html>bad gateway</html>"}, upstream.Request{RecordID: recordID, TaskName: "stage1", Token: token},
			&upstream.Error{StatusCode: 502}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Not parallel: faults are consumed in order.
			if tt.fault != nil {
				tt.fault.RecordID = recordID
				up.Inject(*tt.fault)
			}
			_, err := c.DownloadTaskLog(context.Background(), tt.req)
			var got *upstream.Error
			if !errors.As(err, &got) {
				t.Fatalf("DownloadTaskLog() error = %v, want *upstream.Error", err)
			}
			if got.RequestID == "" {
				t.Error("RequestID is empty, want the upstream's X-Request-Id")
			}
			if diff := cmp.Diff(tt.want, got, ignoreFields("RequestID", "Message")); diff != "" {
				t.Errorf("error mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDownloadTaskLogTransportFaults(t *testing.T) {
	t.Parallel()
	up, c := newUpstream(t, noRetry)
	up.AddLog(recordID, "stage1", upstreamtest.Log{Size: 256 << 10})
	up.AddLog(recordID, "chunked", upstreamtest.Log{Size: 256 << 10, OmitLength: true})
	req := upstream.Request{RecordID: recordID, TaskName: "stage1", Token: token}

	t.Run("hangup before answering", func(t *testing.T) {
		up.Inject(upstreamtest.Fault{Hangup: true})
		_, err := c.DownloadTaskLog(context.Background(), req)
		var ue *upstream.Error
		if err == nil || errors.As(err, &ue) {
			t.Fatalf("DownloadTaskLog() error = %v, want a transport error", err)
		}
	})
	for _, task := range []string{"stage1", "chunked"} {
		t.Run("cut mid-body "+task, func(t *testing.T) {
			up.Inject(upstreamtest.Fault{Cut: true, CutAfter: 100_000})
			log, err := c.DownloadTaskLog(context.Background(), upstream.Request{RecordID: recordID, TaskName: task, Token: token})
			if err != nil {
				t.Fatal(err)
			}
			defer log.Body.Close()
			n, err := io.Copy(io.Discard, log.Body)
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("reading the body: %d bytes, error %v; want io.ErrUnexpectedEOF", n, err)
			}
			if n != 100_000 {
				t.Errorf("read %d bytes before the cut, want 100000", n)
			}
		})
	}
	t.Run("stall then cancel", func(t *testing.T) {
		up.Inject(upstreamtest.Fault{Stall: true, StallAfter: 1000})
		ctx, cancel := context.WithCancel(context.Background())
		log, err := c.DownloadTaskLog(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		defer log.Body.Close()
		buf := make([]byte, 1000)
		if _, err := io.ReadFull(log.Body, buf); err != nil {
			t.Fatal(err)
		}
		cancel()
		if _, err := log.Body.Read(buf); !errors.Is(err, context.Canceled) {
			t.Errorf("read after cancel: %v, want context.Canceled", err)
		}
		<-up.Requests()[len(up.Requests())-1].Done // the upstream saw the request end
	})
	t.Run("deadline before headers", func(t *testing.T) {
		up.Inject(upstreamtest.Fault{Delay: time.Hour})
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		if _, err := c.DownloadTaskLog(ctx, req); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("DownloadTaskLog() error = %v, want context.DeadlineExceeded", err)
		}
		<-up.Requests()[len(up.Requests())-1].Done
	})
}

func TestDownloadTaskLogContentEncoding(t *testing.T) {
	t.Parallel()
	content := []byte(strings.Repeat("compressible build output\n", 1000))
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(content)
	zw.Close()
	corrupt := bytes.Clone(gz.Bytes())
	corrupt[len(corrupt)-8] ^= 0xff // the CRC-32 in the trailer
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		switch r.URL.Query().Get("task_name") {
		case "gzip":
			w.Header().Set("Content-Encoding", "gzip")
			w.Write(gz.Bytes())
		case "corrupt":
			w.Header().Set("Content-Encoding", "gzip")
			w.Write(corrupt)
		case "garbage":
			w.Header().Set("Content-Encoding", "gzip")
			w.Write([]byte("plain text, not gzip"))
		case "br":
			w.Header().Set("Content-Encoding", "br")
			w.Write([]byte("not really brotli"))
		}
	}))
	defer srv.Close()
	c, err := upstream.New(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()

	log, err := c.DownloadTaskLog(context.Background(), upstream.Request{RecordID: recordID, TaskName: "gzip", Token: token})
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, log.Body); !bytes.Equal(got, content) || log.Size != -1 {
		t.Errorf("gzip body: %d bytes, size %d; want the %d decoded bytes and size -1", len(got), log.Size, len(content))
	}
	// A body that fails to decode is corrupt, not broken off: it fails,
	// and is not resumed (whose Range would count decoded bytes anyway).
	requests.Store(0)
	log, err = c.DownloadTaskLog(context.Background(), upstream.Request{RecordID: recordID, TaskName: "corrupt", Token: token})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(log.Body); !errors.Is(err, gzip.ErrChecksum) || requests.Load() != 1 {
		t.Errorf("corrupt gzip body: error %v after %d requests, want gzip.ErrChecksum after 1", err, requests.Load())
	}
	log.Body.Close()
	var pe *upstream.ProtocolError
	for _, task := range []string{"br", "garbage"} {
		// Neither is retried: another try gets the same answer.
		requests.Store(0)
		_, err = c.DownloadTaskLog(context.Background(), upstream.Request{RecordID: recordID, TaskName: task, Token: token})
		if !errors.As(err, &pe) || requests.Load() != 1 {
			t.Errorf("%s: error = %v after %d requests, want *upstream.ProtocolError after 1", task, err, requests.Load())
		}
	}
}

func TestRedirectDropsTokenAcrossHosts(t *testing.T) {
	t.Parallel()
	gotToken := make(chan string, 2)
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotToken <- r.Header.Get("X-Auth-Token")
		io.WriteString(w, "log")
	}))
	defer other.Close()
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/same-host":
			gotToken <- r.Header.Get("X-Auth-Token")
			io.WriteString(w, "log")
		case "/v4/" + recordID + "/task-log":
			if r.URL.Query().Get("task_name") == "elsewhere" {
				http.Redirect(w, r, other.URL+"/file", http.StatusFound)
			} else {
				http.Redirect(w, r, "/same-host", http.StatusFound)
			}
		}
	}))
	defer origin.Close()
	c, err := upstream.New(origin.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()

	for _, tt := range []struct{ task, want string }{{"elsewhere", ""}, {"here", token}} {
		log, err := c.DownloadTaskLog(context.Background(), upstream.Request{RecordID: recordID, TaskName: tt.task, Token: token})
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, log.Body)
		if got := <-gotToken; got != tt.want {
			t.Errorf("redirect %s: target got X-Auth-Token %q, want %q", tt.task, got, tt.want)
		}
	}
}

func readAll(t *testing.T, rc io.ReadCloser) []byte {
	t.Helper()
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return b
}

func ptr[T any](v T) *T { return &v }

func ignoreFields(names ...string) cmp.Option {
	return cmp.FilterPath(func(p cmp.Path) bool {
		for _, n := range names {
			if p.Last().String() == "."+n {
				return true
			}
		}
		return false
	}, cmp.Ignore())
}

func TestTimeouts(t *testing.T) {
	t.Parallel()
	up := upstreamtest.NewServer()
	defer up.Close()
	up.AddToken(token)
	up.AddLog(recordID, "stage1", upstreamtest.Log{Size: 256 << 10})
	c, err := upstream.New(up.URL, upstream.WithHeaderTimeout(200*time.Millisecond), upstream.WithIdleTimeout(200*time.Millisecond), noRetry)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	req := upstream.Request{RecordID: recordID, TaskName: "stage1", Token: token}

	t.Run("no headers in time", func(t *testing.T) {
		up.Inject(upstreamtest.Fault{Delay: time.Hour})
		_, err := c.DownloadTaskLog(context.Background(), req)
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("DownloadTaskLog() error = %v, want a timeout", err)
		}
		<-up.Requests()[len(up.Requests())-1].Done
	})
	t.Run("upstream goes silent mid-body", func(t *testing.T) {
		up.Inject(upstreamtest.Fault{Stall: true, StallAfter: 1000})
		log, err := c.DownloadTaskLog(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		defer log.Body.Close()
		n, err := io.Copy(io.Discard, log.Body)
		if !errors.Is(err, upstream.ErrIdleTimeout) || n != 1000 {
			t.Errorf("read %d bytes, error %v; want 1000 and ErrIdleTimeout", n, err)
		}
		<-up.Requests()[len(up.Requests())-1].Done
	})
	t.Run("a slow reader is not idle", func(t *testing.T) {
		// A longer timeout than above: here it must not fire, even on a
		// loaded machine.
		const idle = time.Second
		slow, err := upstream.New(up.URL, upstream.WithIdleTimeout(idle))
		if err != nil {
			t.Fatal(err)
		}
		defer slow.CloseIdleConnections()
		up.AddLog(recordID, "small", upstreamtest.Log{Size: 100 << 10})
		log, err := slow.DownloadTaskLog(context.Background(), upstream.Request{RecordID: recordID, TaskName: "small", Token: token})
		if err != nil {
			t.Fatal(err)
		}
		defer log.Body.Close()
		buf := make([]byte, 64<<10)
		var got []byte
		for {
			n, err := log.Body.Read(buf)
			got = append(got, buf[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("after %d bytes: %v", len(got), err)
			}
			time.Sleep(idle + 200*time.Millisecond) // between reads, longer than the idle timeout
		}
		if !bytes.Equal(got, upstreamtest.Generate(100<<10, "INFO", "small")) {
			t.Errorf("slow reader got %d bytes differing from the log", len(got))
		}
	})
}
