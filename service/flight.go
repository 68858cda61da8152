package service

import (
	"context"
	"errors"
	"io"
	"math"
	"net/http"
	"sync"
	"time"

	"github.com/buildlog/buildlog/upstream"
)

// A flight is one upstream read of a log that many downloads ride: its
// answer's bytes go into a window (window.go: a few chunk-sized blocks)
// that every member reads from at its own pace. The reader never waits for
// the slowest member: when the window is full and a member waits for bytes
// past it, the window widens (up to a few chunks a member), and at its
// widest the members at its low end detach and go on together with an
// upstream request from the lowest of them.
//
// A member pins the window from its position: the reader reuses only a
// block that every attached member has read (and, in a read started for
// members that detached together, none until they have joined).
type flight struct {
	sh      *sharing
	key     logKey
	req     upstream.Request // the request that made it (its caller's)
	owner   tokenID          // its caller
	growing bool
	start   int64
	end     int64 // the log offset the read ends at: its range, or the log's size

	// reserve is how far past start its first member reads from: the
	// window holds that much at least, for the readers between.
	reserve int64
	// awaited is how many of the readers it was started for (a group
	// that fell behind another read together) have yet to join: until
	// they have, or the window is full at its widest, it keeps what it
	// read from its start, where the lowest of them is.
	awaited int

	// ready is closed once the upstream answered the request; err, log,
	// unshared and cancel are set before.
	ready    chan struct{}
	err      error         // the request failed: members read on their own
	log      *upstream.Log // the answer; its Body is the reader's
	unshared bool          // the answer was too small to share
	cancel   context.CancelFunc

	mu sync.Mutex
	// data wakes members waiting for bytes; room wakes the reader
	// waiting for members to make room.
	data, room sync.Cond
	win        window // the bytes from win.held(head) to head
	head       int64  // the log offset of the next byte read
	rerr       error  // how the read ended: io.EOF at its end
	endedAt    time.Time
	members    map[*member]struct{} // attached members
	running    bool                 // the reader goroutine runs
	closed     bool                 // the read was stopped: no member was left
	dropped    bool                 // not the log's flight any more
}

// rangeEnd is where req's range ends: the log's end when it has no limit.
func rangeEnd(req upstream.Request) int64 {
	if req.Limit > 0 {
		return req.Offset + req.Limit
	}
	return math.MaxInt64
}

func newFlight(sh *sharing, k logKey, req upstream.Request) *flight {
	f := &flight{sh: sh, key: k, req: req, owner: idOf(req.Token), growing: req.Growing, start: req.Offset, end: rangeEnd(req),
		head: req.Offset, ready: make(chan struct{}), members: make(map[*member]struct{})}
	f.data.L, f.room.L = &f.mu, &f.mu
	return f
}

// open makes the flight's request, with its caller's credentials, and
// returns that caller's log for own, its download's request (which starts
// at the flight's start, or past it for a read made for a group of
// readers that fell behind together): a member like the others. An
// answer too small to share is returned as it came, and the flight is
// dropped.
func (f *flight) open(ctx context.Context, id tokenID, own upstream.Request) (*upstream.Log, error) {
	sh := f.sh
	// The read outlives its caller's request while others ride it: it
	// ends when its last member leaves.
	// Until the answer, the caller's leaving ends it: those who joined
	// meanwhile read on their own.
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	early := context.AfterFunc(ctx, cancel)
	log, err := sh.next.DownloadTaskLog(rctx, f.req)
	if !early() && err == nil {
		log.Body.Close()
		log, err = nil, ctx.Err()
	}
	if err != nil {
		cancel()
		sh.forget(f.key, id)
		f.settle(err, nil, false, nil)
		sh.unregister(f.key, f)
		return nil, err // the caller's own refusal
	}
	sh.prove(f.key, id)
	if log.Size >= 0 && log.Size-f.start <= sh.minShared && !f.growing && own.Offset == f.start {
		f.settle(nil, nil, true, nil)
		sh.unregister(f.key, f)
		stop := context.AfterFunc(ctx, cancel)
		body := log.Body
		log.Body = &ownBody{ReadCloser: body, close: func() { stop(); cancel() }}
		return log, nil
	}
	m := &member{f: f, req: own, pos: own.Offset, owner: true}
	f.mu.Lock()
	f.reserve = own.Offset - f.start
	if log.Size >= 0 {
		f.end = min(f.end, log.Size)
	}
	f.members[m] = struct{}{}
	f.running = true
	f.mu.Unlock()
	// What the answer said, copied before the reader starts: a
	// resumption updates its RequestID as it reads.
	said := *log
	said.Body = nil
	f.settle(nil, &said, false, cancel)
	go f.run(log.Body)
	m.admitted(ctx)
	out := said
	out.Body = m
	return &out, nil
}

// settle records the upstream's answer and lets the members waiting for
// it go on.
func (f *flight) settle(err error, log *upstream.Log, unshared bool, cancel context.CancelFunc) {
	f.err, f.log, f.unshared, f.cancel = err, log, unshared, cancel
	close(f.ready)
}

// answered reports whether the upstream answered the flight's request.
func (f *flight) answered() bool {
	select {
	case <-f.ready:
		return true
	default:
		return false
	}
}

// over reports whether the flight brings nothing more: its request
// failed or was not shared, or its read ended. The caller holds f.mu.
func (f *flight) over() bool {
	return f.answered() && (f.err != nil || f.unshared || f.rerr != nil || f.closed)
}

// stale reports whether the flight should no longer be joined: it is
// over, and for a growing log its end is older than fresh (until then it
// says "nothing new" for others, and holds what it read).
func (f *flight) stale(now time.Time, fresh time.Duration) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.over() {
		return false
	}
	return !f.growing || f.rerr != io.EOF || now.Sub(f.endedAt) >= fresh
}

// join returns, for a download of req, a member of the flight, or for a
// followed log that has nothing new since the flight's end, an answer
// saying so; nil, nil when the download cannot ride the flight. proven
// is whether the caller's access was proven within the interval: a
// followed log is joined only then (a download of a finished one proves
// it in admit). The caller holds sh.mu.
//
// A download may also join a little ahead of the read, and wait for it
// there; one that fell behind another read with others (spread: how far
// it is past the lowest of them), further ahead by that much.
func (f *flight) join(req upstream.Request, proven bool, now time.Time, spread int64) (*upstream.Log, *member) {
	if req.Growing != f.growing {
		return nil, nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.answered() && (f.err != nil || f.unshared) || f.closed {
		return nil, nil
	}
	if rangeEnd(req) > rangeEnd(f.req) {
		return nil, nil // it asks for bytes the flight does not read
	}
	low := f.win.held(f.head)
	high := f.head
	switch {
	case f.rerr != nil:
	case !f.growing:
		high += int64(f.sh.firstWindow)*int64(f.sh.chunk) + spread
	case !f.answered():
		// A follower further on than this poll's start rides it too,
		// if its answer shows the log reaching that far (admit).
		high = math.MaxInt64
	case f.log.Size >= 0:
		high = max(high, f.log.Size)
	}
	if req.Offset < low || req.Offset > high {
		return nil, nil
	}
	if f.rerr != nil {
		// Over: only a followed log's clean end is still news.
		if !f.growing || f.rerr != io.EOF || now.Sub(f.endedAt) >= f.sh.fresh {
			return nil, nil
		}
		if req.Offset == f.head && proven {
			size := f.log.Size
			if size < 0 {
				size = f.head
			}
			return &upstream.Log{Body: http.NoBody, ContentType: f.log.ContentType, FileName: f.log.FileName,
				Size: size, RequestID: f.log.RequestID}, nil
		}
	}
	m := &member{f: f, req: req, pos: req.Offset}
	f.members[m] = struct{}{}
	f.awaited = max(f.awaited-1, 0)
	return nil, m
}

// run reads the answer into the window while its members make room.
func (f *flight) run(body io.ReadCloser) {
	defer body.Close()
	defer f.cancel() // its request is over
	f.mu.Lock()
	f.win = f.newWindow()
	for {
		var buf []byte
		for !f.closed && f.head < f.end {
			if buf = f.win.space(f.head, f.end, f.low()); buf != nil {
				break
			}
			if !f.starved() {
				f.room.Wait()
				continue
			}
			// Full, and a member waits for what comes next: the window
			// widens, or the members far behind go on by themselves.
			f.lagging()
		}
		if f.closed {
			break
		}
		if f.head >= f.end {
			f.rerr = io.EOF
			break
		}
		f.mu.Unlock()

		got, err := body.Read(buf)

		f.mu.Lock()
		f.head += int64(got)
		if err != nil {
			// Its end and when, together: joiners and the pruning
			// read both while grew below has f.mu unlocked.
			f.rerr, f.endedAt = err, time.Now()
			if refused(err) {
				f.sh.forget(f.key, f.owner) // a resumption was refused its credentials
			}
		}
		f.data.Broadcast()
		if got > 0 && f.growing {
			head := f.head
			f.mu.Unlock()
			f.sh.grew(f.key, head)
			f.mu.Lock()
		}
		if err != nil {
			break
		}
	}
	if f.rerr == nil {
		f.rerr = errAbandoned
	}
	if f.endedAt.IsZero() {
		f.endedAt = time.Now()
	}
	f.running = false
	f.data.Broadcast()
	f.release()
	f.mu.Unlock()
}

// newWindow returns the flight's window: at first a block a member (a
// lone reader's costs it one chunk), up to the first window; one block of
// the read's length for a read shorter than a chunk (a followed log's new
// bytes are often a few lines).
func (f *flight) newWindow() window {
	w := window{start: f.start, block: int64(f.sh.chunk), limit: min(f.sh.firstWindow, max(len(f.members), 1)), pool: &f.sh.blocks}
	w.limit = max(w.limit, min(int(f.reserve/w.block)+1, f.sh.maxWindow))
	if n := f.end - f.start; n < w.block {
		w.block, w.limit, w.pool = max(n, 1), 1, nil
	}
	return w
}

// errAbandoned ends a flight whose members all left.
var errAbandoned = errors.New("the shared read was abandoned")

// low is the lowest position of an attached member, head when none is
// attached. The caller holds f.mu.
func (f *flight) low() int64 {
	lo := f.head
	if f.awaited > 0 {
		lo = f.start
	}
	for m := range f.members {
		lo = min(lo, m.pos)
	}
	return lo
}

// lagging handles a full window that a member waits past: the window
// widens, up to memberWindow chunks a member (the readers of one log at
// two paces, REST and gRPC, a busy connection, stay together within what
// each may cost); at its widest, the members in its lower half, and the
// lowest, detach, together: they ride one read from the lowest of them.
// The caller holds f.mu.
func (f *flight) lagging() {
	if f.widen() {
		return
	}
	if f.awaited > 0 {
		f.awaited = 0 // those still awaited are slower than its window: they read on their own
		return
	}
	lo, half := f.low(), f.head-f.win.size()/2
	var group []*member
	for m := range f.members {
		if m.pos < half || m.pos == lo {
			group = append(group, m)
		}
	}
	for _, m := range group {
		f.detach(m)
		m.from, m.group = lo, len(group)
	}
}

// widen doubles the window unless it is at its bound: memberWindow a
// member (or the first window), at most maxWindow. The caller holds f.mu.
func (f *flight) widen() bool {
	limit := min(f.sh.maxWindow, max((len(f.members)+f.awaited)*f.sh.memberWindow, f.sh.firstWindow))
	if f.end != math.MaxInt64 {
		limit = min(limit, int((f.end-f.start+f.win.block-1)/f.win.block))
	}
	if f.win.limit >= limit {
		return false
	}
	f.win.limit = min(2*f.win.limit, limit)
	return true
}

// starved reports whether an attached member waits for bytes past head.
// The caller holds f.mu.
func (f *flight) starved() bool {
	for m := range f.members {
		if m.waiting && m.pos >= f.head {
			return true
		}
	}
	return false
}

// detach makes m go on with a request of its own. The caller holds f.mu.
func (f *flight) detach(m *member) {
	delete(f.members, m)
	m.detached, m.from = true, m.pos
	f.sh.stats.Detaches.Add(1)
	f.data.Broadcast()
}

// release gives the window back once nothing can read it any more. The
// caller holds f.mu.
func (f *flight) release() {
	if f.running || len(f.members) > 0 || !f.dropped && f.growing {
		return
	}
	f.win.release()
}

// drop notes that the flight is no longer the log's: no one joins it any
// more, and its window goes once its members are done.
func (f *flight) drop() {
	f.mu.Lock()
	f.dropped = true
	f.release()
	f.mu.Unlock()
}

// leave removes m; when it was the last member of a read under way, the
// read stops. A read that has all its bytes is not stopped (its reader
// may not have noted its end yet): it ends cleanly, and a followed log's
// stays for later followers. The caller holds f.mu; stop reports whether
// to unregister.
func (f *flight) leave(m *member) (stop bool) {
	if _, ok := f.members[m]; ok {
		delete(f.members, m)
		f.room.Signal()
	}
	if len(f.members) == 0 && f.running && !f.closed && f.rerr == nil && f.head < f.end {
		f.closed = true
		f.room.Signal()
		stop = true
	}
	f.release()
	return stop
}

// stop ends the read of a flight whose members all left.
func (f *flight) stop() {
	f.cancel()
	f.sh.unregister(f.key, f)
}
