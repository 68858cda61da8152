package service

import (
	"bytes"
	"testing"
)

// filledPump returns a pump over a ring holding data, with no reader.
func filledPump(data []byte) *pump {
	ring := make([]byte, 2*len(data))
	p := &pump{ring: ring, done: make(chan struct{})}
	p.cond.L = &p.mu
	copy(ring, data)
	p.written = int64(len(data))
	close(p.done)
	return p
}

func TestPumpReleasesInRingOrder(t *testing.T) {
	t.Parallel()
	p := filledPump(bytes.Repeat([]byte{'y'}, 3000))
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
