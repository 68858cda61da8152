package service

import "sync"

// window is what a shared read holds of the log for its members: blocks
// of one chunk each, block i holding the bytes from start+i*block. It
// keeps the blocks from the lowest one still held up to the read's head,
// at most limit of them. Widening raises limit and moves nothing; the
// reader reuses the lowest block once every member has read past it, and
// every block goes back to the pool of chunk-sized buffers (the one the
// downloads riding shared reads take their own chunk from) when the read
// is done, so that flights of every width share one kind of memory.
//
// A window is guarded by its flight's mu.
type window struct {
	start  int64      // the log offset of block 0
	block  int64      // the size of a block: the chunk size, or less for a read shorter than a chunk
	blocks []*[]byte  // blocks[0] is block base
	base   int64      // the index of blocks[0]
	limit  int        // the most blocks held
	pool   *sync.Pool // of *[]byte of len block; nil: the blocks are the window's own
}

// held is the offset of the first byte the window holds (head when it
// holds nothing).
func (w *window) held(head int64) int64 {
	if len(w.blocks) == 0 {
		return head
	}
	return w.start + w.base*w.block
}

// size is the bytes the window may hold at most.
func (w *window) size() int64 { return int64(w.limit) * w.block }

// bytes returns what the window holds from pos (held(head) <= pos < head),
// up to the end of pos's block.
func (w *window) bytes(pos, head int64) []byte {
	i := (pos - w.start) / w.block
	at := (pos - w.start) % w.block
	b := *w.blocks[i-w.base]
	return b[at:min(w.block, at+head-pos)]
}

// space returns where the bytes from head go, up to the end of head's
// block and to end, taking a block when head starts one: a new one while
// fewer than limit are held, else the lowest one when no member needs it
// any more (low, the lowest member's position, is past it). It returns
// nil when the window is full.
func (w *window) space(head, end, low int64) []byte {
	i := (head - w.start) / w.block
	if i >= w.base+int64(len(w.blocks)) {
		switch {
		case len(w.blocks) == 0:
			w.base = i
			w.blocks = append(w.blocks, w.take())
		case len(w.blocks) < w.limit:
			w.blocks = append(w.blocks, w.take())
		case w.start+(w.base+1)*w.block <= low:
			// The lowest block goes to the head: nobody can join at
			// its bytes from now on.
			b := w.blocks[0]
			copy(w.blocks, w.blocks[1:])
			w.blocks[len(w.blocks)-1] = b
			w.base++
		default:
			return nil
		}
	}
	at := (head - w.start) % w.block
	b := *w.blocks[i-w.base]
	return b[at:min(w.block, at+end-head)]
}

// release gives every block back.
func (w *window) release() {
	for _, b := range w.blocks {
		w.put(b)
	}
	w.base += int64(len(w.blocks))
	w.blocks = nil
}

func (w *window) take() *[]byte {
	if w.pool != nil {
		return w.pool.Get().(*[]byte)
	}
	b := make([]byte, w.block)
	return &b
}

func (w *window) put(b *[]byte) {
	if w.pool != nil {
		w.pool.Put(b)
	}
}
