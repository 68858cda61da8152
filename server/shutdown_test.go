package server_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/buildlog/buildlog/api"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/server"
	"github.com/buildlog/buildlog/server/servertest"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// TestShutdownDrainsThenCancels starts a shutdown with a gRPC and a REST
// download stalled mid-log: readiness turns NOT_SERVING at once, new
// connections are refused, and when the shutdown timeout passes both
// downloads are cancelled, visibly incomplete, and Serve returns nil (exit
// 0). The upstream requests end too.
func TestShutdownDrainsThenCancels(t *testing.T) {
	t.Parallel()
	s := servertest.StartWith(t, func(c *server.Config) {
		c.ShutdownTimeout = 500 * time.Millisecond
		c.UpstreamIdleTimeout = time.Hour // the stall outlasts the shutdown
	})
	const size = 1 << 20
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: size})
	s.Upstream.Inject(upstreamtest.Fault{Stall: true, StallAfter: 100_000, Times: 2})

	watch, err := healthpb.NewHealthClient(s.Conn).Watch(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := watch.Recv(); err != nil || st.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health before shutdown: %v, %v; want SERVING", st, err)
	}

	ctx := metadata.AppendToOutgoingContext(context.Background(), api.TokenMetadataKey, token)
	stream, err := s.Client.DownloadTaskLog(ctx, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, s.RESTURL+logPath("stage1"), nil)
	req.Header.Set("X-Auth-Token", token)
	resp, err := s.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.ReadFull(resp.Body, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}

	s.Shutdown()

	if st, err := watch.Recv(); err != nil || st.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health once shutdown begins: %v, %v; want NOT_SERVING", st, err)
	}
	refused := func(addr string) bool {
		for range 200 {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				return true
			}
			conn.Close()
			time.Sleep(10 * time.Millisecond) // the listeners are closing
		}
		return false
	}
	if !refused(s.GRPCAddr) || !refused(s.RESTURL[len("http://"):]) {
		t.Error("new connections are still accepted during the drain")
	}

	got := 0
	var grpcErr error
	for {
		msg, err := stream.Recv()
		if err != nil {
			grpcErr = err
			break
		}
		got += len(msg.GetData())
	}
	if code := status.Code(grpcErr); grpcErr == io.EOF || (code != codes.Unavailable && code != codes.Canceled) {
		t.Errorf("gRPC download at the shutdown timeout ended with %v, want UNAVAILABLE or CANCELED", grpcErr)
	}
	if n, err := io.Copy(io.Discard, resp.Body); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("REST download at the shutdown timeout ended after %d more bytes with %v, want io.ErrUnexpectedEOF", n, err)
	}
	for _, r := range s.Upstream.Requests() {
		<-r.Done
	}
	// servertest's cleanup checks that Serve returned nil.
}
