package server_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/buildlog/buildlog/api"
	"github.com/buildlog/buildlog/client"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/internal/benchproc"
	"github.com/buildlog/buildlog/server/servertest"
	"github.com/buildlog/buildlog/service"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// BenchmarkDownload relays a 64 MiB log through each path at several chunk
// sizes, with the upstream, the server and the client in this process.
// Compare runs with benchstat; bytes/s is the relay throughput.
func BenchmarkDownload(b *testing.B) {
	const size = 64 << 20
	for _, chunk := range []int{64 << 10, 256 << 10, 1 << 20} {
		s := servertest.Start(b, chunk)
		s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: size})
		b.Run(fmt.Sprintf("path=grpc/chunk=%dKiB", chunk>>10), func(b *testing.B) {
			b.SetBytes(size)
			defer reportCPU(b, size)()
			for b.Loop() {
				fetchGRPC(b, s.Client, size)
			}
		})
		b.Run(fmt.Sprintf("path=grpc-client/chunk=%dKiB", chunk>>10), func(b *testing.B) {
			c := clientWithCodec(b, s)
			b.SetBytes(size)
			defer reportCPU(b, size)()
			for b.Loop() {
				fetchGRPC(b, c, size)
			}
		})
		b.Run(fmt.Sprintf("path=rest/chunk=%dKiB", chunk>>10), func(b *testing.B) {
			b.SetBytes(size)
			defer reportCPU(b, size)()
			for b.Loop() {
				fetchREST(b, s, size)
			}
		})
	}
}

// BenchmarkSmallLog fetches a 1 KiB log through each path of the whole
// server (metrics, tracing off, access log, REST mirror), with the upstream
// and the client in this process: the cost of a request rather than of its
// bytes.
func BenchmarkSmallLog(b *testing.B) {
	const size = 1 << 10
	s := servertest.Start(b, service.DefaultChunkSize)
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: size})
	b.Run("path=grpc", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			fetchGRPC(b, s.Client, size)
		}
	})
	b.Run("path=rest", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			fetchREST(b, s, size)
		}
	})
}

// reportCPU reports, when the function it returns runs, the CPU seconds
// this process used per GiB relayed since reportCPU was called: the
// upstream's, the server's and the client's together. It varies less from
// run to run than the wall time on a shared machine.
func reportCPU(b *testing.B, size int64) func() {
	start := benchproc.SelfCPU()
	return func() {
		b.ReportMetric((benchproc.SelfCPU()-start).Seconds()/(float64(size)*float64(b.N)/(1<<30)), "cpu-s/GiB")
	}
}

// clientWithCodec returns a client of s on a connection of its own, with
// the codec of the client package.
func clientWithCodec(b *testing.B, s *servertest.Stack) buildlogv1.BuildLogServiceClient {
	conn, err := grpc.NewClient(s.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()), client.WithChunkCodec())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return buildlogv1.NewBuildLogServiceClient(conn)
}

// fetchGRPC downloads the stage1 log over gRPC, failing b unless it has
// size bytes.
func fetchGRPC(b *testing.B, c buildlogv1.BuildLogServiceClient, size int) {
	ctx := metadata.AppendToOutgoingContext(context.Background(), api.TokenMetadataKey, token)
	stream, err := c.DownloadTaskLog(ctx, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"})
	if err != nil {
		b.Fatal(err)
	}
	n := 0
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
		n += len(msg.GetData())
	}
	if n != size {
		b.Fatalf("got %d bytes, want %d", n, size)
	}
}

// fetchREST downloads the stage1 log over the REST mirror, failing b
// unless it has size bytes.
func fetchREST(b *testing.B, s *servertest.Stack, size int64) {
	req, _ := http.NewRequest(http.MethodGet, s.RESTURL+logPath("stage1"), nil)
	req.Header.Set("X-Auth-Token", token)
	resp, err := s.HTTP.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || n != size {
		b.Fatalf("got %d bytes, %v; want %d", n, err, size)
	}
}
