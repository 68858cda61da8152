package service_test

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/service"
	"github.com/buildlog/buildlog/upstream"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// BenchmarkRelay relays a 64 MiB log from a static upstream, over loopback
// HTTP through the real upstream client, into a stream that only counts
// what it is sent: the relay loop and the upstream read path without a gRPC
// transport. allocs/chunk counts the whole process's allocations per
// message sent (net/http's server side included).
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
	stream := &countingStream{ctx: metadata.NewIncomingContext(context.Background(), metadata.Pairs(service.TokenMetadataKey, token))}
	req := &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"}

	b.SetBytes(size)
	b.ReportAllocs()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for b.Loop() {
		stream.bytes = 0
		if err := svc.DownloadTaskLog(req, stream); err != nil {
			b.Fatal(err)
		}
		if stream.bytes != size {
			b.Fatalf("relayed %d bytes, want %d", stream.bytes, size)
		}
	}
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(stream.messages), "allocs/chunk")
}

// countingStream is the sending side of a stream that counts messages and
// bytes. Only Send and Context are used by the service.
type countingStream struct {
	grpc.ServerStream
	ctx             context.Context
	bytes, messages int
}

func (s *countingStream) Context() context.Context { return s.ctx }

func (s *countingStream) Send(m *buildlogv1.DownloadTaskLogResponse) error {
	s.bytes += len(m.GetData())
	s.messages++
	return nil
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
