// Package client helps Go programs call buildlog's gRPC API through the
// generated stubs in gen/buildlog/v1: [Download] and [Follow] write a log
// to an io.Writer with as many calls as it takes (follow.go), and the
// chunk codec decodes its messages with one copy less (client.go).
//
// Follow tails a build action's log until the action finished, as
// `tail -f` does, reconnecting from where the bytes written end after
// every ending the server means to be resumed (its follow time limit, its
// shutdown or restart, an upstream failure):
//
//	ctx = metadata.AppendToOutgoingContext(ctx, api.TokenMetadataKey, token)
//	res, err := client.Follow(ctx, buildlogv1.NewBuildLogServiceClient(conn), req, os.Stdout)
//	// err == nil: the whole log was written; res.Action.Status is the action's final status
//
// Reconnects go through the caller's grpc.ClientConn, whose own backoff
// (1 s growing to 120 s by default) decides when a server that went away
// is dialled again; a call made before then fails at once and counts as a
// failed call. grpc.WithConnectParams with a shorter MaxDelay (the CLI
// uses 5 s) lets a follow ride out a server restart sooner.
//
// A download's stream messages each carry up to a chunk of log data (256
// KiB by default). gRPC's proto codec gathers a received message into a
// pooled buffer, which it clears first, and then copies the data out of that
// buffer into a new slice: two copies of every byte, after the one gRPC
// makes as each HTTP/2 frame arrives. The chunk codec gathers a
// DownloadTaskLogResponse once, into memory of the message's own that it
// does not clear, and leaves the data there (BenchmarkUnmarshal compares
// the two).
//
//	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds), client.WithChunkCodec())
//	stream, err := buildlogv1.NewBuildLogServiceClient(conn).DownloadTaskLog(ctx, req)
//
// Every other message goes through the codec registered for "proto" (gRPC's
// own unless the program registered another), and the bytes on the wire are
// the same. Calls made with the codec announce the content type
// "application/grpc+proto" rather than "application/grpc"; gRPC servers take
// both as protobuf.
package client

import (
	"bytes"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"

	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/internal/chunkwire"
)

// WithChunkCodec returns the dial option that gives every call on a
// connection the chunk codec. Forcing a codec on a connection also
// overrides a call's own choice of content subtype (grpc.CallContentSubtype),
// so on a connection that also serves calls in another encoding, give
// [ChunkCodec] to the download calls instead.
func WithChunkCodec() grpc.DialOption {
	return grpc.WithDefaultCallOptions(ChunkCodec())
}

// ChunkCodec returns the call option that makes a call decode its
// DownloadTaskLogResponse messages with one copy of their data instead of
// two. A message's Data is then a slice of memory the message alone holds,
// as with gRPC's codec; it stays valid after the next Recv.
func ChunkCodec() grpc.CallOption {
	return grpc.ForceCodecV2(codec{})
}

// codec decodes a DownloadTaskLogResponse itself and hands everything else
// to the codec registered for "proto", looked up at each call so that one
// registered after this package's initialisation is used too.
type codec struct{}

func (codec) Name() string { return proto.Name }

func (codec) Marshal(v any) (mem.BufferSlice, error) {
	return encoding.GetCodecV2(proto.Name).Marshal(v)
}

func (codec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(*buildlogv1.DownloadTaskLogResponse)
	if !ok {
		return encoding.GetCodecV2(proto.Name).Unmarshal(data, v)
	}
	// gRPC frees data's buffers when Unmarshal returns, so the message
	// gets a copy of its own, which its Data then aliases. bytes.Join
	// does not clear the memory it then fills, as make would.
	var frames [32][]byte // enough for 512 KiB in 16 KiB frames, on the stack
	pieces := frames[:0]
	for _, b := range data {
		pieces = append(pieces, b.ReadOnlyData())
	}
	return chunkwire.Decode(bytes.Join(pieces, nil), nil, m)
}
