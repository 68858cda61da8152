package service

import (
	"bytes"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
)

// blockingReader never returns, so a pump's ring holds only what a test
// writes into it.
type blockingReader struct{ release chan struct{} }

func (r blockingReader) Read([]byte) (int, error) { <-r.release; return 0, nil }

// filledPump returns a pump over a ring holding data, its reader blocked.
func filledPump(t *testing.T, data []byte) *pump {
	t.Helper()
	r := blockingReader{release: make(chan struct{})}
	ring := make([]byte, 2*len(data))
	p := &pump{ring: ring, done: make(chan struct{})}
	p.cond.L = &p.mu
	copy(ring, data)
	p.written = int64(len(data))
	close(p.done) // no reader goroutine
	t.Cleanup(func() { close(r.release) })
	return p
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
			p := filledPump(t, data)
			var c lendingCodec
			got, err := p.next(int64(len(data)))
			if err != nil {
				t.Fatal(err)
			}
			m := tc.msg
			m.Data = got
			ln := &loan{data: got, region: p.lend(len(got))}
			c.loans.Store(m, ln)

			enc, err := c.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			if !ln.taken {
				t.Fatal("the codec copied the lent data")
			}
			if &m.Data[0] != &got[0] {
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

			if p.released != 0 {
				t.Fatalf("released %d bytes before gRPC freed the message", p.released)
			}
			enc.Free()
			if p.released != int64(len(data)) {
				t.Fatalf("released %d bytes after Free, want %d", p.released, len(data))
			}
		})
	}
}

func TestLendingCodecCopiesWhatWasNotLent(t *testing.T) {
	data := bytes.Repeat([]byte{'x'}, 2*minLendSize)
	p := filledPump(t, data)
	var c lendingCodec
	got, _ := p.next(int64(len(data)))
	m := &buildlogv1.DownloadTaskLogResponse{Data: got}
	ln := &loan{data: got, region: p.lend(len(got))}
	c.loans.Store(m, ln)

	for _, tc := range []struct {
		name string
		msg  *buildlogv1.DownloadTaskLogResponse
	}{
		{"another message", &buildlogv1.DownloadTaskLogResponse{Data: got}},
		{"other data", &buildlogv1.DownloadTaskLogResponse{Data: bytes.Clone(got)}},
		{"small data", &buildlogv1.DownloadTaskLogResponse{Data: got[:minLendSize-1]}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name != "another message" {
				c.loans.Store(tc.msg, ln)
				defer c.loans.Delete(tc.msg)
			}
			enc, err := c.Marshal(tc.msg)
			if err != nil {
				t.Fatal(err)
			}
			defer enc.Free()
			if ln.taken {
				t.Fatal("the codec took data that was not lent to it")
			}
			want, _ := proto.Marshal(tc.msg)
			if !bytes.Equal(enc.Materialize(), want) {
				t.Fatal("the copied encoding differs from proto.Marshal's")
			}
		})
	}

	// Taken once, then copied.
	first, _ := c.Marshal(m)
	if !ln.taken {
		t.Fatal("the codec did not take the lent data")
	}
	second, _ := c.Marshal(m)
	second.Free()
	if p.released != 0 {
		t.Fatal("a second encoding of the message released the region")
	}
	first.Free()
	if p.released != int64(len(data)) {
		t.Fatalf("released %d, want %d", p.released, len(data))
	}
}

func TestPumpReleasesInRingOrder(t *testing.T) {
	p := filledPump(t, bytes.Repeat([]byte{'y'}, 3000))
	r1 := p.lend(1000)
	r2 := p.lend(1000)
	r3 := p.lend(1000)
	r2.release()
	if p.released != 0 {
		t.Fatalf("released %d with the first region still lent", p.released)
	}
	r1.release()
	if p.released != 2000 {
		t.Fatalf("released %d, want 2000", p.released)
	}
	idle := 0
	p.stop(func() { idle++ })
	if idle != 0 {
		t.Fatal("idle called with a region still lent")
	}
	r3.release()
	r3.release()
	if p.released != 3000 || idle != 1 {
		t.Fatalf("released %d, idle called %d times; want 3000, 1", p.released, idle)
	}
}
