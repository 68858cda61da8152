// Package chunkwire decodes buildlog's stream messages without copying
// their log data: a DownloadTaskLogResponse's data field is left in the
// buffer it arrived in. The Go client's codec (package client) uses it on
// each received message.
package chunkwire

import (
	"errors"
	"slices"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
)

// Decode decodes the message b followed by lent into m. A
// DownloadTaskLogResponse's data aliases b or lent instead of being copied;
// anything else, or a response with fields this decoder does not know, goes
// through proto.Unmarshal. The caller must not change b or lent while m is
// in use.
func Decode(b, lent []byte, m any) error {
	msg, ok := m.(proto.Message)
	if !ok {
		return errors.New("not a proto message")
	}
	if len(b) == 0 {
		b, lent = lent, nil // the whole message was lent
	}
	chunk, ok := m.(*buildlogv1.DownloadTaskLogResponse)
	if ok && decodeChunk(b, lent, chunk) {
		return nil
	}
	if lent != nil {
		b = append(slices.Clip(b), lent...)
	}
	return proto.Unmarshal(b, msg)
}

// decodeChunk decodes a DownloadTaskLogResponse, b followed by lent,
// with its data aliasing them. A non-nil lent must be exactly the data
// field's bytes, with b ending in the field's tag and length, as the
// service's codec writes it. Fields it does not know, as from a newer
// server, are kept as unknown fields, as proto.Unmarshal keeps them. It
// reports false, having changed nothing, for input it does not handle: a
// known field of the wrong wire type, metadata or action twice, a lent elsewhere, or
// malformed input (which proto.Unmarshal then reports).
func decodeChunk(b, lent []byte, m *buildlogv1.DownloadTaskLogResponse) bool {
	var (
		data     []byte
		offset   int64
		metadata []byte // the last metadata field; several are merged by proto.Unmarshal
		mdCount  int
		action   []byte // the last action field, as metadata
		acCount  int
		unknown  []byte
	)
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.BytesType && lent != nil:
			var size uint64
			size, n = protowire.ConsumeVarint(b)
			if n < 0 || n != len(b) || size != uint64(len(lent)) {
				return false // lent is not this field's bytes, at the end
			}
			data, lent = lent, nil
		case num == 1 && typ == protowire.BytesType:
			data, n = protowire.ConsumeBytes(b)
		case num == 2 && typ == protowire.VarintType:
			var v uint64
			v, n = protowire.ConsumeVarint(b)
			offset = int64(v)
		case num == 3 && typ == protowire.BytesType:
			metadata, n = protowire.ConsumeBytes(b)
			mdCount++
		case num == 4 && typ == protowire.BytesType:
			action, n = protowire.ConsumeBytes(b)
			acCount++
		case num <= 4 || !num.IsValid():
			return false // a known field of another wire type, or no field
		default:
			// Kept as proto.Unmarshal keeps them: the tag re-encoded, then
			// the value as it came.
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n >= 0 {
				unknown = append(protowire.AppendTag(unknown, num, typ), b[:n]...)
			}
		}
		if n < 0 || mdCount > 1 || acCount > 1 {
			return false
		}
		b = b[n:]
	}
	if lent != nil {
		return false // no data field for it
	}
	var md *buildlogv1.LogMetadata
	if mdCount > 0 {
		md = &buildlogv1.LogMetadata{}
		if proto.Unmarshal(metadata, md) != nil {
			return false
		}
	}
	var ac *buildlogv1.ActionState
	if acCount > 0 {
		ac = &buildlogv1.ActionState{}
		if proto.Unmarshal(action, ac) != nil {
			return false
		}
	}
	if len(data) == 0 {
		data = nil // as proto.Unmarshal leaves an empty proto3 bytes field
	}
	proto.Reset(m)
	m.Data, m.Offset, m.Metadata, m.Action = data, offset, md, ac
	if unknown != nil {
		m.ProtoReflect().SetUnknown(unknown)
	}
	return true
}
