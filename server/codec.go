package server

import (
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	protov2 "google.golang.org/protobuf/proto"

	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
)

// minLendSize is the smallest data a stream message carries without a
// copy. Below it the copy costs less than the lending; gRPC also never
// pools (and so never gives back) buffers under 1 KiB.
const minLendSize = 4 << 10

// lendingCodec is the gRPC server's codec. It sends a download's chunks
// without copying them: a [lentChunk] is encoded as its other fields
// followed by its data as a buffer that still belongs to the download,
// released when gRPC frees the buffer, once the bytes are on the wire.
// Every other message takes gRPC's proto codec, which copies.
//
// The data field is encoded last. Protobuf parsers accept fields in any
// order, and a message's encoding has no canonical form, so the wire bytes
// decode to the same message in every language.
type lendingCodec struct{}

// codecOption installs the lending codec on a gRPC server.
func codecOption() grpc.ServerOption { return grpc.ForceServerCodecV2(lendingCodec{}) }

// lentChunk is a response whose data is lent by the download: release
// gives it back. The codec sets taken when it took the data, to release it
// when gRPC is done with it; otherwise the sender releases it once the
// send returns.
type lentChunk struct {
	*buildlogv1.DownloadTaskLogResponse
	release func()
	taken   bool
}

var protoCodec = encoding.GetCodecV2(proto.Name)

// dataField is the number of DownloadTaskLogResponse's data field.
var dataField = (&buildlogv1.DownloadTaskLogResponse{}).ProtoReflect().Descriptor().Fields().ByName("data").Number()

func (lendingCodec) Name() string { return proto.Name }

func (lendingCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return protoCodec.Unmarshal(data, v)
}

func (lendingCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(*lentChunk)
	if !ok || m.taken || len(m.Data) < minLendSize {
		// Only once: an interceptor may send a message twice.
		return protoCodec.Marshal(v)
	}
	// The other fields, encoded by the proto package (so a field added to
	// the message later is never left out), then the data field's tag and
	// length. The message is the sender's, and Marshal runs within its
	// send.
	data := m.Data
	m.Data = nil
	head, err := protov2.MarshalOptions{}.MarshalAppend(make([]byte, 0, 64), m.DownloadTaskLogResponse)
	m.Data = data
	if err != nil {
		return nil, err
	}
	head = protowire.AppendTag(head, dataField, protowire.BytesType)
	head = protowire.AppendVarint(head, uint64(len(data)))

	m.taken = true
	lent := &lentBuffer{data: data, release: m.release}
	return mem.BufferSlice{mem.SliceBuffer(head), mem.NewBuffer(&lent.data, lent)}, nil
}

// lentBuffer is the data of one message, lent by a download. As the
// [mem.BufferPool] of its buffer it hears of the buffer's last Free (Put),
// and gives the data back.
type lentBuffer struct {
	data    []byte
	release func()
}

func (b *lentBuffer) Get(int) *[]byte { panic("server: lentBuffer is not a pool to get from") }

func (b *lentBuffer) Put(*[]byte) { b.release() }
