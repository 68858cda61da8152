package service

import (
	"io"
	"sync"
)

// pump reads a log body on its own goroutine into a ring buffer, so the
// relay sends what has arrived as soon as the caller can take more: a slow
// upstream's bytes go out without waiting for a whole chunk, and a fast
// one's pile up into full chunks while a Send is under way.
//
// The reader writes only into the ring's free part and the relay reads only
// its filled part; the indices, guarded by mu, hand the regions over.
type pump struct {
	mu     sync.Mutex
	cond   sync.Cond
	ring   []byte
	r, w   int64 // bytes taken by the relay, and written by the reader
	err    error // the body's final error, io.EOF at its end
	closed bool  // the relay is done: stop reading
	done   chan struct{}
}

// startPump starts reading body into ring.
func startPump(body io.Reader, ring []byte) *pump {
	p := &pump{ring: ring, done: make(chan struct{})}
	p.cond.L = &p.mu
	go p.run(body)
	return p
}

func (p *pump) run(body io.Reader) {
	defer close(p.done)
	size := int64(len(p.ring))
	for {
		p.mu.Lock()
		for p.w-p.r == size && !p.closed {
			p.cond.Wait()
		}
		if p.closed {
			p.mu.Unlock()
			return
		}
		start := p.w % size
		end := min(size, start+size-(p.w-p.r))
		free := p.ring[start:end]
		p.mu.Unlock()

		n, err := body.Read(free)

		p.mu.Lock()
		p.w += int64(n)
		if err != nil {
			p.err = err
		}
		p.cond.Broadcast()
		p.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// next waits for data and returns up to limit bytes of it, in one piece of
// the ring; they stay valid until consume. With no data left it returns
// the body's final error.
func (p *pump) next(limit int64) ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.w == p.r && p.err == nil {
		p.cond.Wait()
	}
	if p.w == p.r {
		return nil, p.err
	}
	size := int64(len(p.ring))
	start := p.r % size
	end := min(size, start+(p.w-p.r), start+limit)
	return p.ring[start:end], nil
}

// consume gives n bytes returned by next back to the reader.
func (p *pump) consume(n int) {
	p.mu.Lock()
	p.r += int64(n)
	p.cond.Broadcast()
	p.mu.Unlock()
}

// stop ends the reader and waits for it. A read blocked on the upstream
// must be released first, by cancelling its request.
func (p *pump) stop() {
	p.mu.Lock()
	p.closed = true
	p.cond.Broadcast()
	p.mu.Unlock()
	<-p.done
}
