package server_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/buildlog/buildlog/api"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/server"
	"github.com/buildlog/buildlog/server/servertest"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// startFollowStack is a stack whose follows poll every 10 ms.
func startFollowStack(t *testing.T, edit func(*server.Config)) *servertest.Stack {
	t.Helper()
	return servertest.StartWith(t, func(c *server.Config) {
		c.ChunkSize = chunk
		c.FollowPollInterval = 10 * time.Millisecond
		if edit != nil {
			edit(c)
		}
	})
}

// followGRPC opens a followed gRPC download and returns its first message.
func followGRPC(t *testing.T, s *servertest.Stack, req *buildlogv1.DownloadTaskLogRequest) (buildlogv1.BuildLogService_DownloadTaskLogClient, *buildlogv1.DownloadTaskLogResponse) {
	t.Helper()
	req.Follow = true
	ctx := metadata.AppendToOutgoingContext(context.Background(), api.TokenMetadataKey, token)
	stream, err := s.Client.DownloadTaskLog(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatalf("first message: %v", err)
	}
	return stream, first
}

// followREST opens a followed REST download and returns the response,
// its body unread.
func followREST(t *testing.T, s *servertest.Stack, query string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, s.RESTURL+logPath("stage1", "follow=true", query), nil)
	req.Header.Set("X-Auth-Token", token)
	resp, err := s.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200", resp.StatusCode)
	}
	return resp
}

func TestFollowOverBothTransports(t *testing.T) {
	t.Parallel()
	s := startFollowStack(t, nil)
	const final = 60_000
	a := s.Upstream.AddAction(recordID, "stage1", upstreamtest.Action{Log: upstreamtest.Log{Size: final}, FinalStatus: "FAILED"})
	a.Grow(1000)

	stream, first := followGRPC(t, s, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1", Offset: 10})
	if first.GetAction().GetFinished() || first.GetAction().GetStatus() != "running" || first.GetMetadata() == nil || first.GetMetadata().TotalSize != nil {
		t.Errorf("first message: action %v, metadata %v; want running, and metadata without a size", first.GetAction(), first.GetMetadata())
	}
	resp := followREST(t, s, "offset=10")
	checkHeader(t, resp, "Buildlog-Action-Finished", "false")
	checkHeader(t, resp, "Buildlog-Action-Status", "running")
	if resp.ContentLength != -1 {
		t.Errorf("Content-Length %d, want none: the body is chunked", resp.ContentLength)
	}

	go func() {
		for a.Size() < final {
			time.Sleep(5 * time.Millisecond) // pace: the followers see it grow
			a.Grow(7001)
		}
		a.Finish()
	}()

	grpcData := first.GetData()
	var last *buildlogv1.DownloadTaskLogResponse
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("gRPC: %v after %d bytes", err, len(grpcData))
		}
		if msg.GetOffset() != 10+int64(len(grpcData)) {
			t.Fatalf("gRPC: message at %d, want %d", msg.GetOffset(), 10+len(grpcData))
		}
		grpcData = append(grpcData, msg.GetData()...)
		last = msg
	}
	restData, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("REST: %v after %d bytes", err, len(restData))
	}
	want := upstreamtest.Generate(final, "INFO", "stage1")[10:]
	if !bytes.Equal(grpcData, want) || !bytes.Equal(restData, want) {
		t.Errorf("gRPC %d bytes, REST %d bytes, want the log's %d", len(grpcData), len(restData), len(want))
	}
	if last == nil || len(last.GetData()) != 0 || !last.GetAction().GetFinished() || last.GetAction().GetStatus() != "FAILED" {
		t.Errorf("gRPC: last message %v, want no data and the final state", last)
	}
	if got := resp.Trailer.Get("Buildlog-Action-Finished"); got != "true" {
		t.Errorf("REST: trailer Buildlog-Action-Finished %q, want true", got)
	}
	if got := resp.Trailer.Get("Buildlog-Action-Status"); got != "FAILED" {
		t.Errorf("REST: trailer Buildlog-Action-Status %q, want FAILED", got)
	}
}

func TestFollowEndsAtShutdown(t *testing.T) {
	t.Parallel()
	// The drain would wait a minute for downloads: follows end at once.
	s := startFollowStack(t, func(c *server.Config) { c.ShutdownTimeout = time.Minute })
	a := s.Upstream.AddAction(recordID, "stage1", upstreamtest.Action{Log: upstreamtest.Log{Size: 1 << 20}})
	a.Grow(3000)
	stream, _ := followGRPC(t, s, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"})
	resp := followREST(t, s, "")
	if _, err := io.ReadFull(resp.Body, make([]byte, 3000)); err != nil {
		t.Fatal(err)
	}

	s.Shutdown()

	var err error
	for err == nil {
		_, err = stream.Recv()
	}
	e, ok := api.FromError(err)
	if !ok || e.Code != codes.Unavailable || e.Reason != api.ReasonFollowInterrupted || e.Metadata[api.MetadataResumeOffset] != "3000" {
		t.Errorf("gRPC follow at shutdown: %v, want UNAVAILABLE/FOLLOW_INTERRUPTED with resumeOffset 3000", err)
	}
	if n, err := io.Copy(io.Discard, resp.Body); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("REST follow at shutdown: %d more bytes, then %v; want an aborted transfer", n, err)
	}
}

func TestFollowEndsAtConnectionAge(t *testing.T) {
	t.Parallel()
	s := startFollowStack(t, func(c *server.Config) { c.Keepalive.MaxConnectionAge = 300 * time.Millisecond })
	a := s.Upstream.AddAction(recordID, "stage1", upstreamtest.Action{Log: upstreamtest.Log{Size: 1 << 20}})
	a.Grow(3000)
	stream, _ := followGRPC(t, s, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"})
	var err error
	for err == nil {
		_, err = stream.Recv()
	}
	e, ok := api.FromError(err)
	if !ok || e.Code != codes.Unavailable || e.Reason != api.ReasonFollowInterrupted || e.Metadata[api.MetadataResumeOffset] != "3000" {
		t.Errorf("follow past the connection's age: %v, want UNAVAILABLE/FOLLOW_INTERRUPTED with resumeOffset 3000", err)
	}
}
