package upstream_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/buildlog/buildlog/upstream"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// BenchmarkBodyRead downloads a 64 MiB log from a static upstream over
// loopback HTTP and reads the body in 64 KiB reads, as the relay does: the
// upstream read path (transport, idle timer, resume wrapper).
func BenchmarkBodyRead(b *testing.B) {
	const size = 64 << 20
	content := upstreamtest.Generate(size, "INFO", "stage1")
	// A static server allocates nothing per byte, unlike the simulator, so
	// the allocations counted are the client's (and net/http's server side).
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain") // no MIME table lookup
		http.ServeContent(w, r, "task.log", time.Time{}, bytes.NewReader(content))
	}))
	defer up.Close()
	c, err := upstream.New(up.URL)
	if err != nil {
		b.Fatal(err)
	}
	defer c.CloseIdleConnections()
	buf := make([]byte, 64<<10)
	b.SetBytes(size)
	b.ReportAllocs()
	for b.Loop() {
		log, err := c.DownloadTaskLog(context.Background(), upstream.Request{
			RecordID: "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", TaskName: "stage1", Token: "tok"})
		if err != nil {
			b.Fatal(err)
		}
		var n int64
		for {
			m, err := log.Body.Read(buf)
			n += int64(m)
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
		}
		log.Body.Close()
		if n != size {
			b.Fatalf("read %d bytes, want %d", n, size)
		}
	}
}
