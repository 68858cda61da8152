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

// TestDownloadMatchesProtoCodec downloads the same logs through a
// connection with the client's codec and one with gRPC's, and compares
// every message. The messages are all kept until the end, so data that
// aliased memory gRPC reuses would show up changed.
func TestDownloadMatchesProtoCodec(t *testing.T) {
	t.Parallel()
	const size = 3<<20 + 12345
	s := servertest.Start(t, 64<<10)
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: size, FileName: "stage1.log", ContentType: "text/plain"})
	withCodec := dial(t, s.GRPCAddr, client.DialOption())
	plain := dial(t, s.GRPCAddr)

	for _, req := range []*buildlogv1.DownloadTaskLogRequest{
		{RecordId: recordID, TaskName: "stage1"},
		{RecordId: recordID, TaskName: "stage1", Offset: 100_000, Limit: 1 << 20},
		{RecordId: recordID, TaskName: "stage1", Offset: size - 10},
	} {
		got := receiveAll(t, withCodec, req)
		want := receiveAll(t, plain, req)
		if len(got) != len(want) {
			t.Fatalf("%v: %d messages, want %d", req, len(got), len(want))
		}
		var data []byte
		for i := range got {
			// Each download has an upstream request id of its own.
			if md := got[i].GetMetadata(); md != nil {
				if md.GetRequestId() == "" {
					t.Errorf("%v: message %d: no upstream request id", req, i)
				}
				md.RequestId = ""
				want[i].GetMetadata().RequestId = ""
			}
			if !proto.Equal(got[i], want[i]) {
				t.Errorf("%v: message %d differs: offset %d, metadata %v; want offset %d, metadata %v",
					req, i, got[i].GetOffset(), got[i].GetMetadata(), want[i].GetOffset(), want[i].GetMetadata())
			}
			data = append(data, got[i].GetData()...)
		}
		full := upstreamtest.Generate(size, "INFO", "stage1")
		end := int64(size)
		if req.Limit > 0 {
			end = req.Offset + req.Limit
		}
		if !bytes.Equal(data, full[req.Offset:end]) {
			t.Errorf("%v: the data differs from the log", req)
		}
		if got[0].GetMetadata().GetFileName() != "stage1.log" {
			t.Errorf("%v: first message's metadata %v, want the log's", req, got[0].GetMetadata())
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
