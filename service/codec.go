package service

import (
	"sync"

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

// ServerOption returns the gRPC server option that lets the service send
// log data without copying it: the server's codec encodes a stream message
// as its other fields followed by the data as a buffer that still belongs to
// the relay's ring, which gets it back when gRPC frees the buffer, once the
// bytes are on the wire. Every other message, and every server without this
// option, takes gRPC's proto codec, which copies; the service works either
// way. Register the service on servers built with this option.
//
// The codec encodes the data field last. Protobuf parsers accept fields in
// any order, and a message's encoding has no canonical form, so the wire
// bytes decode to the same message in every language.
func (s *Server) ServerOption() grpc.ServerOption {
	return grpc.ForceServerCodecV2(&s.codec)
}

// lendingCodec is the server codec of [Server.ServerOption].
type lendingCodec struct {
	// loans maps a relay's response message to the loan of its current
	// data, for the duration of the relay.
	loans sync.Map // *buildlogv1.DownloadTaskLogResponse → *loan
}

// loan offers the relay's data to the codec for one Send.
type loan struct {
	data   []byte  // the ring region set as the message's data, or nil
	region *region // its pump region
	taken  bool    // the codec took it: region comes back when gRPC frees it
}

var protoCodec = encoding.GetCodecV2(proto.Name)

// dataField is the number of DownloadTaskLogResponse's data field.
var dataField = (&buildlogv1.DownloadTaskLogResponse{}).ProtoReflect().Descriptor().Fields().ByName("data").Number()

func (*lendingCodec) Name() string { return proto.Name }

func (c *lendingCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return protoCodec.Unmarshal(data, v)
}

func (c *lendingCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(*buildlogv1.DownloadTaskLogResponse)
	if !ok || len(m.Data) < minLendSize {
		return protoCodec.Marshal(v)
	}
	l, ok := c.loans.Load(m)
	if !ok {
		return protoCodec.Marshal(v)
	}
	ln := l.(*loan)
	// Only the very bytes lent, once: an interceptor may have replaced the
	// data, or send the message twice.
	if ln.taken || len(ln.data) != len(m.Data) || &ln.data[0] != &m.Data[0] {
		return protoCodec.Marshal(v)
	}

	// The other fields, encoded by the proto package (so a field added to
	// the message later is never left out), then the data field's tag and
	// length. The message is the relay's, and Marshal runs within its Send.
	data := m.Data
	m.Data = nil
	head, err := protov2.MarshalOptions{}.MarshalAppend(make([]byte, 0, 64), m)
	m.Data = data
	if err != nil {
		return nil, err
	}
	head = protowire.AppendTag(head, dataField, protowire.BytesType)
	head = protowire.AppendVarint(head, uint64(len(data)))

	ln.taken = true
	lent := &lentBuffer{data: data, region: ln.region}
	return mem.BufferSlice{mem.SliceBuffer(head), mem.NewBuffer(&lent.data, lent)}, nil
}

// lentBuffer is the data of one message, lent from the ring. As the
// [mem.BufferPool] of its buffer it hears of the buffer's last Free (Put),
// and gives the region back to the pump.
type lentBuffer struct {
	data   []byte
	region *region
}

func (b *lentBuffer) Get(int) *[]byte { panic("service: lentBuffer is not a pool to get from") }

func (b *lentBuffer) Put(*[]byte) { b.region.release() }
