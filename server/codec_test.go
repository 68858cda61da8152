package server

import (
	"bytes"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
)

// lent returns a lentChunk of m and a count of its releases.
func lent(m *buildlogv1.DownloadTaskLogResponse) (*lentChunk, *int) {
	released := new(int)
	return &lentChunk{DownloadTaskLogResponse: m, release: func() { *released++ }}, released
}

func TestLendingCodecEncodesTheSameMessage(t *testing.T) {
	data := []byte(strings.Repeat("log line\n", 1000))
	for _, tc := range []struct {
		name string
		msg  *buildlogv1.DownloadTaskLogResponse
	}{
		{"data only", &buildlogv1.DownloadTaskLogResponse{}},
		{"offset", &buildlogv1.DownloadTaskLogResponse{Offset: 1 << 40}},
		{"metadata", &buildlogv1.DownloadTaskLogResponse{Offset: 7, Metadata: &buildlogv1.LogMetadata{
			ContentType: "text/plain", FileName: "a.log", RequestId: "req", TotalSize: proto.Int64(9000)}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.msg
			m.Data = data
			lc, released := lent(m)
			enc, err := lendingCodec{}.Marshal(lc)
			if err != nil {
				t.Fatal(err)
			}
			if !lc.taken {
				t.Fatal("the codec copied the lent data")
			}
			if &m.Data[0] != &data[0] {
				t.Fatal("Marshal changed the message's data")
			}
			wire := enc.Materialize()
			decoded := &buildlogv1.DownloadTaskLogResponse{}
			if err := proto.Unmarshal(wire, decoded); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(decoded, m) {
				t.Fatalf("decoded %v, want %v", decoded, m)
			}
			if len(wire) != proto.Size(m) {
				t.Errorf("encoded %d bytes, proto.Size says %d", len(wire), proto.Size(m))
			}
			if *released != 0 {
				t.Fatal("released before gRPC freed the message")
			}
			enc.Free()
			if *released != 1 {
				t.Fatalf("released %d times after Free, want once", *released)
			}
		})
	}
}

func TestLendingCodecCopiesWhatWasNotLent(t *testing.T) {
	data := bytes.Repeat([]byte{'x'}, 2*minLendSize)
	for _, tc := range []struct {
		name string
		msg  any
	}{
		{"a plain message", &buildlogv1.DownloadTaskLogResponse{Data: data}},
		{"small data", &lentChunk{DownloadTaskLogResponse: &buildlogv1.DownloadTaskLogResponse{Data: data[:minLendSize-1]}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			enc, err := lendingCodec{}.Marshal(tc.msg)
			if err != nil {
				t.Fatal(err)
			}
			defer enc.Free()
			if lc, ok := tc.msg.(*lentChunk); ok && lc.taken {
				t.Fatal("the codec took data too small to lend")
			}
			want, _ := proto.Marshal(tc.msg.(proto.Message))
			if !bytes.Equal(enc.Materialize(), want) {
				t.Fatal("the copied encoding differs from proto.Marshal's")
			}
		})
	}

	// Taken once, then copied.
	lc, released := lent(&buildlogv1.DownloadTaskLogResponse{Data: data})
	first, _ := lendingCodec{}.Marshal(lc)
	if !lc.taken {
		t.Fatal("the codec did not take the lent data")
	}
	second, _ := lendingCodec{}.Marshal(lc)
	second.Free()
	if *released != 0 {
		t.Fatal("a second encoding of the message released the data")
	}
	first.Free()
	if *released != 1 {
		t.Fatalf("released %d times, want once", *released)
	}
}
