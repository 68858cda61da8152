package upstreamtest

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const recordID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"

func TestGeneratorReadAtMatchesSequentialRead(t *testing.T) {
	t.Parallel()
	const size = 3*pageLines*100 + 17 // several pages and a partial last line
	whole := Generate(size, "INFO", "stage1")
	if len(whole) != size {
		t.Fatalf("Generate() returned %d bytes, want %d", len(whole), size)
	}
	if !bytes.HasPrefix(whole, []byte("[INFO ] stage1 line 000000000001 | ")) {
		t.Errorf("log starts %q, want the first numbered line", whole[:40])
	}
	g := newGenerator(size, "INFO", "stage1")
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		off := rng.Int64N(size)
		n := rng.IntN(300_000)
		buf := make([]byte, n)
		got, err := g.ReadAt(buf, off)
		want := whole[off:min(off+int64(n), size)]
		if got != len(want) || !bytes.Equal(buf[:got], want) {
			t.Fatalf("ReadAt(%d bytes at %d) = %d bytes, %v; differs from the sequential log", n, off, got, err)
		}
		if off+int64(n) > size && err != io.EOF {
			t.Fatalf("ReadAt past the end: err = %v, want io.EOF", err)
		}
	}
	if bytes.Equal(Generate(1000, "DEBUG", "stage1"), whole[:1000]) {
		t.Error("DEBUG and INFO logs are identical, want them to differ")
	}
}

func TestServer(t *testing.T) {
	t.Parallel()
	s := NewServer()
	defer s.Close()
	s.AddToken("tok")
	s.AddLog(recordID, "stage1", Log{Size: 1000, FileName: "a.log"})
	s.AddLog(recordID, "norange", Log{Size: 1000, IgnoreRange: true, OmitLength: true})
	s.AddLog(recordID, "tiny", Log{Size: 1, OmitLength: true})
	full := Generate(1000, "INFO", "stage1")
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()

	tests := []struct {
		name       string
		path       string
		token      string
		rangeHdr   string
		wantStatus int
		wantBody   []byte
		wantHeader map[string]string
	}{
		{"whole log", "/v4/" + recordID + "/task-log?task_name=stage1", "tok", "", 200, full,
			map[string]string{"Content-Length": "1000", "Content-Disposition": "attachment; filename=a.log", "Accept-Ranges": "bytes"}},
		{"range from", "/v4/" + recordID + "/task-log?task_name=stage1", "tok", "bytes=990-", 206, full[990:],
			map[string]string{"Content-Range": "bytes 990-999/1000"}},
		{"range closed", "/v4/" + recordID + "/task-log?task_name=stage1", "tok", "bytes=10-19", 206, full[10:20],
			map[string]string{"Content-Range": "bytes 10-19/1000", "Content-Length": "10"}},
		{"range past end", "/v4/" + recordID + "/task-log?task_name=stage1", "tok", "bytes=1000-", 416, nil,
			map[string]string{"Content-Range": "bytes */1000"}},
		{"range ignored", "/v4/" + recordID + "/task-log?task_name=norange", "tok", "bytes=10-", 200, Generate(1000, "INFO", "norange"),
			map[string]string{"Content-Length": ""}},
		{"tiny log without length", "/v4/" + recordID + "/task-log?task_name=tiny", "tok", "", 200, Generate(1, "INFO", "tiny"),
			map[string]string{"Content-Length": ""}},
		{"missing token", "/v4/" + recordID + "/task-log?task_name=stage1", "", "", 401, nil, nil},
		{"bad record id", "/v4/UPPER/task-log?task_name=stage1", "tok", "", 400, nil, nil},
		{"missing task", "/v4/" + recordID + "/task-log", "tok", "", 400, nil, nil},
		{"bad level", "/v4/" + recordID + "/task-log?task_name=stage1&log_level=info", "tok", "", 400, nil, nil},
		{"unknown task", "/v4/" + recordID + "/task-log?task_name=stage2", "tok", "", 404, nil, nil},
		{"unknown path", "/v3/x", "tok", "", 404, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, s.URL+tt.path, nil)
			if tt.token != "" {
				req.Header.Set("X-Auth-Token", tt.token)
			}
			if tt.rangeHdr != "" {
				req.Header.Set("Range", tt.rangeHdr)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.wantStatus {
				t.Errorf("status = %d, want %d (body %s)", resp.StatusCode, tt.wantStatus, body)
			}
			if resp.Header.Get("X-Request-Id") == "" {
				t.Error("no X-Request-Id")
			}
			if tt.wantStatus >= 400 {
				if !strings.Contains(string(body), `"error_code"`) || !strings.Contains(string(body), `"error_msg"`) {
					t.Errorf("error body %s, want the upstream's JSON shape", body)
				}
			} else if !bytes.Equal(body, tt.wantBody) {
				t.Errorf("body: %d bytes differing from the expected %d", len(body), len(tt.wantBody))
			}
			for k, v := range tt.wantHeader {
				if got := resp.Header.Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
		})
	}
}

func TestFaultsAreConsumedInOrder(t *testing.T) {
	t.Parallel()
	s := NewServer()
	defer s.Close()
	s.AddToken("tok")
	s.AddLog(recordID, "stage1", Log{Size: 10})
	s.Inject(Fault{Status: 503, Times: 2})
	s.Inject(Fault{Status: 500})
	s.Inject(Fault{Status: 418, RecordID: "other"})
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	var got []int
	for range 5 {
		req, _ := http.NewRequest(http.MethodGet, s.URL+"/v4/"+recordID+"/task-log?task_name=stage1", nil)
		req.Header.Set("X-Auth-Token", "tok")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		got = append(got, resp.StatusCode)
	}
	if want := []int{503, 503, 500, 200, 200}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("statuses = %v, want %v", got, want)
	}
	if n := s.RequestCount(); n != 5 {
		t.Errorf("RequestCount() = %d, want 5", n)
	}
}
