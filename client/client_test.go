package client_test

import (
	"bytes"
	"context"
	"io"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/buildlog/buildlog/client"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/server/servertest"
	"github.com/buildlog/buildlog/service"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

const recordID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"

// receiveAll downloads the stage1 log over conn and returns every message.
func receiveAll(t *testing.T, conn *grpc.ClientConn, req *buildlogv1.DownloadTaskLogRequest) []*buildlogv1.DownloadTaskLogResponse {
	t.Helper()
	ctx := metadata.AppendToOutgoingContext(context.Background(), service.TokenMetadataKey, servertest.Token)
	stream, err := buildlogv1.NewBuildLogServiceClient(conn).DownloadTaskLog(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []*buildlogv1.DownloadTaskLogResponse
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			return msgs
		}
		if err != nil {
			t.Fatalf("after %d messages: %v", len(msgs), err)
		}
		msgs = append(msgs, msg)
	}
}

func dial(t *testing.T, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestDownloadMatchesProtoCodec downloads the same ranges of a log through
// a connection with the client's codec and one with gRPC's, and compares
// what they decode. The messages are all kept until the end, so data that
// aliased memory gRPC reuses would show up changed.
func TestDownloadMatchesProtoCodec(t *testing.T) {
	t.Parallel()
	const size = 3<<20 + 12345
	s := servertest.Start(t, 64<<10)
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: size, FileName: "stage1.log", ContentType: "text/plain"})
	withCodec := dial(t, s.GRPCAddr, client.DialOption())
	plain := dial(t, s.GRPCAddr)
	full := upstreamtest.Generate(size, "INFO", "stage1")

	for _, req := range []*buildlogv1.DownloadTaskLogRequest{
		{RecordId: recordID, TaskName: "stage1"},
		{RecordId: recordID, TaskName: "stage1", Offset: 100_000, Limit: 1 << 20},
		{RecordId: recordID, TaskName: "stage1", Offset: size - 10},
	} {
		end := int64(size)
		if req.Limit > 0 {
			end = req.Offset + req.Limit
		}
		// The relay sends what has arrived, so the two downloads' messages
		// may split the data differently; each must hold the range.
		var first [2]*buildlogv1.LogMetadata
		for i, conn := range []*grpc.ClientConn{withCodec, plain} {
			msgs := receiveAll(t, conn, req)
			var data []byte
			for j, m := range msgs {
				if m.GetOffset() != req.Offset+int64(len(data)) {
					t.Errorf("%v: message %d has offset %d after %d bytes", req, j, m.GetOffset(), len(data))
				}
				if j > 0 && m.GetMetadata() != nil {
					t.Errorf("%v: message %d has metadata", req, j)
				}
				data = append(data, m.GetData()...)
			}
			if !bytes.Equal(data, full[req.Offset:end]) {
				t.Errorf("%v, codec %d: the data differs from the log's bytes %d-%d", req, i, req.Offset, end)
			}
			first[i] = msgs[0].GetMetadata()
		}
		// Each download has an upstream request id of its own.
		for _, md := range first {
			if md.GetRequestId() == "" {
				t.Fatalf("%v: no upstream request id in %v", req, md)
			}
			md.RequestId = ""
		}
		if !proto.Equal(first[0], first[1]) || first[0].GetFileName() != "stage1.log" {
			t.Errorf("%v: metadata %v, want %v", req, first[0], first[1])
		}
	}
}

// TestOtherServicesUseProtoCodec calls another service on a connection with
// the client's codec.
func TestOtherServicesUseProtoCodec(t *testing.T) {
	t.Parallel()
	s := servertest.Start(t, 0)
	resp, err := healthpb.NewHealthClient(dial(t, s.GRPCAddr, client.DialOption())).Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health %v, want SERVING", resp.GetStatus())
	}
}

// BenchmarkUnmarshal decodes one 256 KiB chunk as gRPC hands it to a codec,
// in 16 KiB pieces (one per HTTP/2 frame), with gRPC's proto codec and with
// the client's.
func BenchmarkUnmarshal(b *testing.B) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 256<<10/16)
	msg, err := proto.Marshal(&buildlogv1.DownloadTaskLogResponse{Data: data, Offset: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	var frames mem.BufferSlice
	for rest := msg; len(rest) > 0; {
		n := min(len(rest), 16<<10)
		frames = append(frames, mem.SliceBuffer(rest[:n]))
		rest = rest[n:]
	}
	for _, c := range []struct {
		name string
		opt  grpc.CallOption
	}{{"codec=proto", nil}, {"codec=client", client.CallOption()}} {
		b.Run(c.name, func(b *testing.B) {
			codec := codecOf(c.opt)
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				var m buildlogv1.DownloadTaskLogResponse
				if err := codec.Unmarshal(frames, &m); err != nil || len(m.Data) != len(data) {
					b.Fatalf("%v, %d bytes", err, len(m.Data))
				}
			}
		})
	}
}

// codecOf returns the codec a call option forces, or gRPC's proto codec.
func codecOf(opt grpc.CallOption) encoding.CodecV2 {
	if o, ok := opt.(grpc.ForceCodecV2CallOption); ok {
		return o.CodecV2
	}
	return encoding.GetCodecV2(protocodec.Name)
}
