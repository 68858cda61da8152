package service

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"
	"weak"

	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/upstream"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// TestWaitingFollowerHoldsNoRing checks that a follower waiting for its
// next poll keeps no ring reachable, after a segment that needed one: the
// rings it read through are collected once the pool drops them.
func TestWaitingFollowerHoldsNoRing(t *testing.T) {
	const (
		record  = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
		tok     = "MIIEtestTOKEN-0123456789abcdef"
		written = 1 << 20
	)
	up := upstreamtest.NewServer()
	up.AddToken(tok)
	t.Cleanup(up.Close)
	uc, err := upstream.New(up.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(uc.CloseIdleConnections)
	s, err := New(uc, WithChunkSize(64<<10), WithFollow(time.Hour, 2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var rings []weak.Pointer[byte] // the backing arrays, which chunks slice
	newRing := s.rings.New
	s.rings.New = func() any {
		r := newRing().(*[]byte)
		mu.Lock()
		rings = append(rings, weak.Make(&(*r)[0]))
		mu.Unlock()
		return r
	}
	up.AddAction(record, "stage1", upstreamtest.Action{Log: upstreamtest.Log{Size: 4 << 20}}).Grow(written)

	ctx, cancel := context.WithCancel(context.Background())
	d, err := s.Open(ctx, Request{Message: &buildlogv1.DownloadTaskLogRequest{RecordId: record, TaskName: "stage1", Follow: true},
		Caller: Caller{Tokens: []string{tok}}, Transport: GRPC})
	if err != nil {
		t.Fatal(err)
	}
	for got := 0; got < written; {
		c, err := d.Next()
		if err != nil {
			t.Fatalf("after %d bytes: %v", got, err)
		}
		got += len(c.Data)
		c.Release()
	}
	waiting := make(chan error, 1)
	go func() { _, err := d.Next(); waiting <- err }() // ends the segment, then waits an hour
	t.Cleanup(func() {
		cancel()
		<-waiting
		d.Close(nil)
	})

	mu.Lock()
	made := len(rings)
	mu.Unlock()
	if made == 0 {
		t.Fatal("the follower read 1 MiB without a pooled ring: the test checks nothing")
	}
	// The segment ends as the waiting Next starts, and the pool drops what
	// it holds over two collections: collect until the rings are gone.
	for i := 0; ; i++ {
		runtime.GC()
		live := 0
		mu.Lock()
		for _, r := range rings {
			if r.Value() != nil {
				live++
			}
		}
		mu.Unlock()
		if live == 0 {
			return
		}
		if i == 200 {
			t.Fatalf("%d of the %d rings the follower read through are still reachable while it waits", live, made)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
