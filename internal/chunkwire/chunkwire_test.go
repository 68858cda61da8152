package chunkwire

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
)

func TestDecodeMatchesProto(t *testing.T) {
	t.Parallel()
	withMetadata := &buildlogv1.DownloadTaskLogResponse{
		Data: []byte("line 1\nline 2\n"), Offset: 1 << 40,
		Metadata: &buildlogv1.LogMetadata{ContentType: "text/plain", FileName: "a.log", TotalSize: proto.Int64(99), RequestId: "r-1"},
	}
	encode := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// As the service's codec writes a chunk: the other fields, then the
	// data field's tag and length, then the data, which it lends.
	data := bytes.Repeat([]byte("y"), 5000)
	lentLayout := protowire.AppendVarint(protowire.AppendTag(encode(&buildlogv1.DownloadTaskLogResponse{Offset: 7, Metadata: withMetadata.Metadata}), 1, protowire.BytesType), uint64(len(data)))
	lentLayout = append(lentLayout, data...)
	tests := []struct {
		name    string
		in      []byte
		lent    int  // the last lent bytes of in come apart from the rest
		aliases bool // data is a slice of in, not a copy
	}{
		{name: "lent data", in: lentLayout, lent: len(data), aliases: true},
		{name: "lent whole message", in: encode(withMetadata), lent: len(encode(withMetadata)), aliases: true},
		{name: "lent part of the data", in: lentLayout, lent: len(data) - 1},
		{name: "lent more than the data", in: lentLayout, lent: len(data) + 1},
		{name: "lent metadata", in: append(encode(&buildlogv1.DownloadTaskLogResponse{Data: data}), encode(&buildlogv1.DownloadTaskLogResponse{Metadata: withMetadata.Metadata})...), lent: len(encode(&buildlogv1.DownloadTaskLogResponse{Metadata: withMetadata.Metadata}))},
		{name: "empty", in: nil},
		{name: "data only", in: encode(&buildlogv1.DownloadTaskLogResponse{Data: bytes.Repeat([]byte("x"), 70000)}), aliases: true},
		{name: "all fields", in: encode(withMetadata), aliases: true},
		{name: "repeated data, last wins", in: protowire.AppendBytes(protowire.AppendTag(encode(withMetadata), 1, protowire.BytesType), []byte("second")), aliases: true},
		{name: "metadata twice is merged", in: append(encode(withMetadata), encode(&buildlogv1.DownloadTaskLogResponse{Metadata: &buildlogv1.LogMetadata{FileName: "b.log"}})...)},
		{name: "unknown field", in: protowire.AppendVarint(protowire.AppendTag(encode(withMetadata), 9, protowire.VarintType), 5), aliases: true},
		{name: "unknown fields around data", in: append(protowire.AppendBytes(protowire.AppendTag(nil, 7, protowire.BytesType), []byte("new")), protowire.AppendFixed64(protowire.AppendTag(encode(withMetadata), 1000, protowire.Fixed64Type), 1)...), aliases: true},
		{name: "unknown field before lent data", in: append(protowire.AppendVarint(protowire.AppendTag(nil, 9, protowire.VarintType), 5), lentLayout...), lent: len(data), aliases: true},
		{name: "unknown group", in: protowire.AppendTag(protowire.AppendTag(encode(withMetadata), 8, protowire.StartGroupType), 8, protowire.EndGroupType), aliases: true},
		{name: "stray end group", in: protowire.AppendTag(encode(withMetadata), 8, protowire.EndGroupType)},
		{name: "known field, other wire type", in: protowire.AppendFixed32(protowire.AppendTag(encode(withMetadata), 2, protowire.Fixed32Type), 1)},
		{name: "truncated", in: encode(withMetadata)[:10]},
		{name: "action", in: encode(&buildlogv1.DownloadTaskLogResponse{Data: data, Offset: 3, Action: &buildlogv1.ActionState{Finished: true, Status: "success", FinishTime: "2026-12-02 18:00:00"}}), aliases: true},
		{name: "action only", in: encode(&buildlogv1.DownloadTaskLogResponse{Offset: 3, Action: &buildlogv1.ActionState{Status: "running"}})},
		{name: "action twice is merged", in: append(encode(&buildlogv1.DownloadTaskLogResponse{Action: &buildlogv1.ActionState{Status: "running"}}), encode(&buildlogv1.DownloadTaskLogResponse{Action: &buildlogv1.ActionState{Finished: true}})...)},
		{name: "bad action", in: protowire.AppendBytes(protowire.AppendTag(nil, 4, protowire.BytesType), []byte{0xff})},
		{name: "action, other wire type", in: protowire.AppendVarint(protowire.AppendTag(encode(withMetadata), 4, protowire.VarintType), 1)},
		{name: "bad metadata", in: protowire.AppendBytes(protowire.AppendTag(nil, 3, protowire.BytesType), []byte{0xff})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			want := &buildlogv1.DownloadTaskLogResponse{}
			wantErr := proto.Unmarshal(tt.in, want)
			got := &buildlogv1.DownloadTaskLogResponse{}
			var gotErr error
			if tt.lent > 0 {
				at := len(tt.in) - tt.lent
				gotErr = Decode(tt.in[:at:at], tt.in[at:], got)
			} else {
				gotErr = Decode(tt.in, nil, got)
			}
			if (gotErr != nil) != (wantErr != nil) {
				t.Fatalf("error %v, want %v", gotErr, wantErr)
			}
			if wantErr == nil && !proto.Equal(got, want) {
				t.Errorf("got %v, want %v", got, want)
			}
			if aliased := len(got.Data) > 0 && sameMemory(got.Data, tt.in); aliased != tt.aliases {
				t.Errorf("data aliases the input: %v, want %v", aliased, tt.aliases)
			}
		})
	}
}

// sameMemory reports whether sub lies within b.
func sameMemory(sub, b []byte) bool {
	for i := range len(b) - len(sub) + 1 {
		if &b[i] == &sub[0] {
			return true
		}
	}
	return false
}

func FuzzDecode(f *testing.F) {
	md := &buildlogv1.LogMetadata{FileName: "x.log", TotalSize: proto.Int64(3)}
	for _, m := range []*buildlogv1.DownloadTaskLogResponse{{}, {Data: []byte("abc"), Offset: 7, Metadata: md}} {
		b, _ := proto.Marshal(m)
		f.Add(b, uint16(0))
		f.Add(b, uint16(len(m.GetData())))
	}
	f.Fuzz(func(t *testing.T, in []byte, lent uint16) {
		want := &buildlogv1.DownloadTaskLogResponse{}
		wantErr := proto.Unmarshal(in, want)
		got := &buildlogv1.DownloadTaskLogResponse{}
		// The last lent bytes come apart from the rest, in memory of their
		// own, as a lent data field does.
		at := len(in) - min(int(lent), len(in))
		gotErr := Decode(bytes.Clone(in[:at]), bytes.Clone(in[at:]), got)
		if (gotErr != nil) != (wantErr != nil) {
			t.Fatalf("error %v, want %v", gotErr, wantErr)
		}
		if wantErr == nil && !proto.Equal(got, want) {
			t.Errorf("got %v, want %v", got, want)
		}
	})
}
