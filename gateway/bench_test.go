package gateway_test

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"

	"github.com/buildlog/buildlog/gateway"
	"github.com/buildlog/buildlog/service"
	"github.com/buildlog/buildlog/upstream"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// BenchmarkRESTMirror serves a 1 KiB and a 64 MiB log through the REST
// mirror's handler (grpc-gateway's router, the handler, the service and the
// upstream client, from a static upstream over loopback) into a
// ResponseWriter that discards the body: the mirror's path without the HTTP
// client and its socket. allocs/msg is per message
// relayed (one body Write each), for the whole process; messages are up to
// a chunk, smaller when the reader outpaces the upstream, as this one does.
// ns/op of the small log is the mirror's per-request latency.
func BenchmarkRESTMirror(b *testing.B) {
	for _, size := range []int{1 << 10, 64 << 20} {
		b.Run(fmt.Sprintf("size=%dKiB", size>>10), func(b *testing.B) { benchmarkRESTMirror(b, size) })
	}
}

func benchmarkRESTMirror(b *testing.B, size int) {
	content := upstreamtest.Generate(int64(size), "INFO", "stage1")
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain") // no MIME table lookup
		http.ServeContent(w, r, "task.log", time.Time{}, bytes.NewReader(content))
	}))
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
	mirror, err := gateway.New(svc)
	if err != nil {
		b.Fatal(err)
	}

	b.SetBytes(int64(size))
	b.ReportAllocs()
	var (
		before, after runtime.MemStats
		writes        int
	)
	runtime.ReadMemStats(&before)
	for b.Loop() {
		req := httptest.NewRequest(http.MethodGet, "/v4/"+recordID+"/task-log?task_name=stage1", nil)
		req.Header.Set("X-Auth-Token", "tok")
		w := &discardResponse{header: http.Header{}}
		mirror.ServeHTTP(w, req)
		if w.status != http.StatusOK || w.n != size {
			b.Fatalf("HTTP %d, %d bytes; want 200, %d", w.status, w.n, size)
		}
		writes += w.writes
	}
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(writes), "allocs/msg")
	b.ReportMetric(float64(size)*float64(b.N)/float64(writes), "bytes/msg")
}

// discardResponse is an http.ResponseWriter that counts the body.
type discardResponse struct {
	header http.Header
	status int
	n      int
	writes int
}

func (w *discardResponse) Header() http.Header { return w.header }

func (w *discardResponse) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}

func (w *discardResponse) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	w.n += len(p)
	w.writes++
	return len(p), nil
}

func (w *discardResponse) Flush() {}

const recordID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
