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
// The ring has three cursors, each a count of bytes since the start:
//
//	released ≤ lent ≤ written
//
// The reader writes into the free part, from written up to released plus
// the ring's size. The relay takes the part from lent to written (next),
// lends it out (lend), and each lent region comes back with release: at
// once when Send copied it, or when gRPC has written it to the wire when
// Send took it without a copy (see codec.go). Regions may come back out of
// order (a cancelled stream frees its queue); released only moves past a
// region once every region before it is back too.
type pump struct {
	mu       sync.Mutex
	cond     sync.Cond
	ring     []byte
	released int64
	lent     int64
	written  int64
	pending  []*region // lent regions, in ring order, not yet past released
	err      error     // the body's final error, io.EOF at its end
	aborted  error     // why the relay gave up waiting (its caller left)
	closed   bool      // the relay is done: stop reading
	idle     func()    // after closed, called once no region is lent out
	done     chan struct{}
	// inline, when set, is the body next reads itself, on the relay's
	// goroutine, instead of a reader goroutine (see readInline).
	inline io.Reader
}

// region is a part of the ring lent to the relay.
type region struct {
	p        *pump
	end      int64 // the lent cursor after this region
	returned bool
}

// startPump starts reading body into ring.
func startPump(body io.Reader, ring []byte) *pump {
	p := &pump{ring: ring, done: make(chan struct{})}
	p.cond.L = &p.mu
	go p.run(body)
	return p
}

// readInline returns a pump that reads body only within next, on the
// relay's goroutine. For a range that fits in one message reading ahead
// gains nothing, and a goroutine and its handoffs are most of a small
// log's cost.
func readInline(body io.Reader, ring []byte) *pump {
	p := &pump{ring: ring, done: make(chan struct{}), inline: body}
	p.cond.L = &p.mu
	close(p.done)
	return p
}

// free returns the ring's next free piece, empty when it is full. The
// caller holds mu.
func (p *pump) free() []byte {
	size := int64(len(p.ring))
	start := p.written % size
	return p.ring[start:min(size, start+size-(p.written-p.released))]
}

// wrote records the result of reading into free. The caller holds mu.
func (p *pump) wrote(n int, err error) {
	p.written += int64(n)
	if err != nil {
		p.err = err
	}
	p.cond.Broadcast()
}

func (p *pump) run(body io.Reader) {
	defer close(p.done)
	size := int64(len(p.ring))
	for {
		p.mu.Lock()
		for p.written-p.released == size && !p.closed {
			p.cond.Wait()
		}
		if p.closed {
			p.mu.Unlock()
			return
		}
		free := p.free()
		p.mu.Unlock()

		n, err := body.Read(free)

		p.mu.Lock()
		p.wrote(n, err)
		p.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// next waits for data not yet lent and returns up to limit bytes of it, in
// one piece of the ring. With no data left it returns the body's final
// error. The bytes are the relay's to lend; next returns them again until
// lend.
func (p *pump) next(limit int64) ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.written == p.lent && p.err == nil && p.aborted == nil {
		if free := p.free(); p.inline != nil && len(free) > 0 {
			p.mu.Unlock()
			n, err := p.inline.Read(free)
			p.mu.Lock()
			p.wrote(n, err)
			continue
		}
		p.cond.Wait()
	}
	if p.aborted != nil {
		return nil, p.aborted
	}
	if p.written == p.lent {
		return nil, p.err
	}
	size := int64(len(p.ring))
	start := p.lent % size
	end := min(size, start+(p.written-p.lent), start+limit)
	return p.ring[start:end], nil
}

// waitLent waits while the whole ring is lent out, which only the
// caller's taking the bytes ends (a transport holds a region until it has
// written it), until abort.
func (p *pump) waitLent() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.lent-p.released == int64(len(p.ring)) && p.aborted == nil {
		p.cond.Wait()
	}
}

// abort makes next return err from now on. The relay aborts when its call
// ends: with its earlier messages' regions still lent to a stalled
// stream's queue, no data may ever come.
func (p *pump) abort(err error) {
	p.mu.Lock()
	p.aborted = err
	p.cond.Broadcast()
	p.mu.Unlock()
}

// lend marks the next n bytes returned by next as lent out, until the
// region's release: the reader does not overwrite them meanwhile.
func (p *pump) lend(n int) *region {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lent += int64(n)
	r := &region{p: p, end: p.lent}
	p.pending = append(p.pending, r)
	return r
}

// release gives a lent region back to the reader, once every region lent
// before it is back too. Releasing a region twice does nothing.
func (r *region) release() {
	p := r.p
	p.mu.Lock()
	r.returned = true
	k := 0
	for k < len(p.pending) && p.pending[k].returned {
		p.released = p.pending[k].end
		k++
	}
	if k > 0 {
		p.pending = append(p.pending[:0], p.pending[k:]...)
		p.cond.Broadcast()
	}
	var idle func()
	if p.closed && len(p.pending) == 0 {
		idle, p.idle = p.idle, nil
	}
	p.mu.Unlock()
	if idle != nil {
		idle()
	}
}

// stop ends the reader and waits for it, then calls idle once no region
// is lent out any more: at once, or at the last release. A read blocked on
// the upstream must be released first, by cancelling its request. A region
// that is never released (its buffer dropped without being freed) leaves
// idle uncalled and the ring to the garbage collector.
func (p *pump) stop(idle func()) {
	p.mu.Lock()
	p.closed = true
	p.cond.Broadcast()
	p.mu.Unlock()
	<-p.done

	p.mu.Lock()
	if len(p.pending) > 0 {
		p.idle = idle
		idle = nil
	}
	p.mu.Unlock()
	if idle != nil {
		idle()
	}
}
