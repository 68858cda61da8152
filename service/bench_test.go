package service_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"

	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/service"
	"github.com/buildlog/buildlog/upstream"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// BenchmarkRelay downloads a 64 MiB log from a static upstream, over
// loopback HTTP through the real upstream client, with a caller that only
// counts the chunks: the download core and the upstream read path without a
// transport. allocs/chunk counts the whole process's allocations per chunk
// (net/http's server side included).
func BenchmarkRelay(b *testing.B) {
	const size = 64 << 20
	up := staticUpstream(size)
	defer up.Close()
	uc, err := upstream.New(up.URL)
	if err != nil {
		b.Fatal(err)
	}
	defer uc.CloseIdleConnections()
	svc, err := service.New(uc)
	if err != nil {
		b.Fatal(err)
	}
	req := service.Request{
		Message: &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"},
		Caller:  service.Caller{Tokens: []string{token}},
	}

	b.SetBytes(size)
	b.ReportAllocs()
	var (
		before, after runtime.MemStats
		chunks        int
	)
	runtime.ReadMemStats(&before)
	for b.Loop() {
		d, err := svc.Open(context.Background(), req)
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		for {
			c, err := d.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(d.Close(err))
			}
			n += len(c.Data)
			chunks++
			c.Release()
		}
		d.Close(nil)
		if n != size {
			b.Fatalf("relayed %d bytes, want %d", n, size)
		}
	}
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(chunks), "allocs/chunk")
}

// staticUpstream serves a generated log of the given size at every path
// with http.ServeContent, as a static-file server would: unlike the
// simulator, it allocates nothing per byte, so allocation counts are the
// client's.
func staticUpstream(size int64) *httptest.Server {
	content := upstreamtest.Generate(size, "INFO", "stage1")
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain") // no MIME table lookup
		http.ServeContent(w, r, "task.log", time.Time{}, bytes.NewReader(content))
	}))
}
