package client_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/buildlog/buildlog/api"
	"github.com/buildlog/buildlog/client"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/server/servertest"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

const recordID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"

// receiveAll downloads the stage1 log over conn and returns every message.
func receiveAll(t *testing.T, conn *grpc.ClientConn, req *buildlogv1.DownloadTaskLogRequest) []*buildlogv1.DownloadTaskLogResponse {
	t.Helper()
	ctx := metadata.AppendToOutgoingContext(context.Background(), api.TokenMetadataKey, servertest.Token)
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
	withCodec := dial(t, s.GRPCAddr, client.WithChunkCodec())
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
	resp, err := healthpb.NewHealthClient(dial(t, s.GRPCAddr, client.WithChunkCodec())).Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health %v, want SERVING", resp.GetStatus())
	}
}

// poisoningPool overwrites each buffer put back, as a reused buffer would
// be.
type poisoningPool struct{}

func (poisoningPool) Get(n int) *[]byte {
	b := make([]byte, n)
	return &b
}

func (poisoningPool) Put(b *[]byte) {
	for i := range *b {
		(*b)[i] = 0xAA
	}
}

// TestUnmarshalOwnsItsData decodes messages held in pooled buffers, in one
// buffer and in several, frees the buffers as gRPC does once Unmarshal has
// returned, and checks that the message is unchanged.
func TestUnmarshalOwnsItsData(t *testing.T) {
	t.Parallel()
	want := &buildlogv1.DownloadTaskLogResponse{
		Data:     bytes.Repeat([]byte("0123456789abcdef"), 20000/16),
		Offset:   12345,
		Metadata: &buildlogv1.LogMetadata{FileName: "a.log", TotalSize: proto.Int64(1 << 20)},
	}
	msg, err := proto.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	codec := codecOf(client.ChunkCodec())
	for _, piece := range []int{len(msg), 16 << 10, 4096, 1} {
		var data mem.BufferSlice
		for rest := msg; len(rest) > 0; {
			n := min(len(rest), piece)
			b := poisoningPool{}.Get(n)
			copy(*b, rest[:n])
			data = append(data, mem.NewBuffer(b, poisoningPool{}))
			rest = rest[n:]
		}
		got := &buildlogv1.DownloadTaskLogResponse{}
		err := codec.Unmarshal(data, got)
		data.Free()
		if err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(got, want) {
			t.Errorf("%d-byte pieces: the message changed once its buffers were freed", piece)
		}
	}
}

// recordingServer serves one message of data per download and records
// each call's content type.
type recordingServer struct {
	buildlogv1.UnimplementedBuildLogServiceServer
	contentTypes chan string
}

func (s *recordingServer) DownloadTaskLog(_ *buildlogv1.DownloadTaskLogRequest, stream grpc.ServerStreamingServer[buildlogv1.DownloadTaskLogResponse]) error {
	md, _ := metadata.FromIncomingContext(stream.Context())
	s.contentTypes <- strings.Join(md.Get("content-type"), ",")
	return stream.Send(&buildlogv1.DownloadTaskLogResponse{Data: []byte("data"), Metadata: &buildlogv1.LogMetadata{}})
}

// TestOptionsInstallTheCodec tells by the content type whether a call used
// the chunk codec.
func TestOptionsInstallTheCodec(t *testing.T) {
	t.Parallel()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	rec := &recordingServer{contentTypes: make(chan string, 1)}
	buildlogv1.RegisterBuildLogServiceServer(srv, rec)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)

	withCodec := dial(t, lis.Addr().String(), client.WithChunkCodec())
	plain := dial(t, lis.Addr().String())
	req := &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"}
	for _, tt := range []struct {
		name string
		conn *grpc.ClientConn
		opts []grpc.CallOption
		want string
	}{
		{"WithChunkCodec", withCodec, nil, "application/grpc+proto"},
		{"ChunkCodec", plain, []grpc.CallOption{client.ChunkCodec()}, "application/grpc+proto"},
		{"no option", plain, nil, "application/grpc"},
	} {
		stream, err := buildlogv1.NewBuildLogServiceClient(tt.conn).DownloadTaskLog(context.Background(), req, tt.opts...)
		if err != nil {
			t.Fatal(err)
		}
		msg, err := stream.Recv()
		if err != nil || string(msg.GetData()) != "data" {
			t.Fatalf("%s: got %q, %v", tt.name, msg.GetData(), err)
		}
		if got := <-rec.contentTypes; got != tt.want {
			t.Errorf("%s: content type %q, want %q", tt.name, got, tt.want)
		}
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
	}{{"codec=proto", nil}, {"codec=client", client.ChunkCodec()}} {
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
