package service

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"runtime"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/buildlog/buildlog/upstream"
)

// gated is a fake upstream for the flights' own tests: every answer
// serves pat(o) at log offset o, but no body gives bytes at or past allow
// until the test raises it.
type gated struct {
	mu      sync.Mutex
	cond    sync.Cond
	size    int64
	allow   int64
	blocked int // body reads waiting for allow
	reqs    []upstream.Request
	piece   int // when not 0, the most a body read returns
}

func pat(o int64) byte { return byte(o%251) ^ byte(o>>8) }

func newGated(size, allow int64) *gated {
	g := &gated{size: size, allow: allow}
	g.cond.L = &g.mu
	return g
}

func (g *gated) setAllow(n int64) {
	g.mu.Lock()
	g.allow = n
	g.cond.Broadcast()
	g.mu.Unlock()
}

func (g *gated) DownloadTaskLog(ctx context.Context, req upstream.Request) (*upstream.Log, error) {
	g.mu.Lock()
	g.reqs = append(g.reqs, req)
	g.mu.Unlock()
	if req.Limit == 1 {
		return &upstream.Log{Body: http.NoBody, Size: g.size}, nil // a probe
	}
	end := g.size
	if req.Limit > 0 {
		end = min(end, req.Offset+req.Limit)
	}
	b := &gatedBody{g: g, ctx: ctx, pos: req.Offset, end: end}
	b.stop = context.AfterFunc(ctx, func() { g.mu.Lock(); g.cond.Broadcast(); g.mu.Unlock() })
	return &upstream.Log{Body: b, Size: g.size}, nil
}

func (g *gated) ActionStatus(ctx context.Context, req upstream.Request) (*upstream.Action, error) {
	return &upstream.Action{}, nil
}

type gatedBody struct {
	g        *gated
	ctx      context.Context
	pos, end int64
	stop     func() bool
}

func (b *gatedBody) Read(p []byte) (int, error) {
	g := b.g
	g.mu.Lock()
	defer g.mu.Unlock()
	for b.pos >= g.allow && b.pos < b.end && b.ctx.Err() == nil {
		g.blocked++
		g.cond.Wait()
		g.blocked--
	}
	if err := b.ctx.Err(); err != nil {
		return 0, err
	}
	if b.pos >= b.end {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), g.allow-b.pos, b.end-b.pos))
	if g.piece > 0 {
		n = min(n, g.piece)
	}
	for i := 0; i < n; i++ {
		p[i] = pat(b.pos + int64(i))
	}
	b.pos += int64(n)
	return n, nil
}

func (b *gatedBody) Close() error { b.stop(); return nil }

// readCheck reads n bytes from body and reports the first offset whose
// byte is not the log's, or -1.
func readCheck(t *testing.T, body io.Reader, off int64, n int) int64 {
	t.Helper()
	buf := make([]byte, n)
	if _, err := io.ReadFull(body, buf); err != nil {
		t.Fatalf("read at %d: %v", off, err)
	}
	for i, c := range buf {
		if c != pat(off+int64(i)) {
			return off + int64(i)
		}
	}
	return -1
}

const rchunk = 1024 // first window 4 KiB, member window 2 KiB

func newTestSharing(g LogSource) *sharing {
	return newSharing(g, rchunk, time.Minute, time.Minute)
}

func req(tok string, off int64) upstream.Request {
	return upstream.Request{RecordID: "r", TaskName: "t", Token: tok, Offset: off}
}

// Readers come at random offsets and times and read at random paces,
// some stalling: through joins, widening, detaching and rejoining, every
// one gets the log's bytes from its offset, and nothing else.
func TestSharedRandomReadersGetTheirBytes(t *testing.T) {
	t.Parallel()
	const size = 256 << 10
	g := newGated(size, size)
	g.piece = 700 // small upstream reads interleave with everything
	sh := newTestSharing(g)
	var wg sync.WaitGroup
	for i := range 24 {
		wg.Go(func() {
			rnd := rand.New(rand.NewPCG(uint64(i), 7))
			time.Sleep(time.Duration(rnd.IntN(20)) * time.Millisecond)
			off := int64(rnd.IntN(4) * 3000) // close together: they meet
			if i%3 == 0 {
				off = int64(rnd.IntN(size / 2))
			}
			log, err := sh.DownloadTaskLog(context.Background(), req(fmt.Sprint("caller", i%5), off))
			if err != nil {
				t.Error(err)
				return
			}
			defer log.Body.Close()
			buf := make([]byte, 1+rnd.IntN(3*rchunk))
			for pos := off; ; {
				n, err := log.Body.Read(buf[:1+rnd.IntN(len(buf))])
				for k := range n {
					if buf[k] != pat(pos+int64(k)) {
						t.Errorf("reader %d: wrong byte at %d", i, pos+int64(k))
						return
					}
				}
				pos += int64(n)
				if err == io.EOF {
					if pos != size {
						t.Errorf("reader %d: EOF at %d, want %d", i, pos, size)
					}
					return
				}
				if err != nil {
					t.Errorf("reader %d at %d: %v", i, pos, err)
					return
				}
				if i%4 == 1 && rnd.IntN(100) == 0 {
					time.Sleep(time.Duration(rnd.IntN(50)) * time.Millisecond) // stalls
				}
			}
		})
	}
	wg.Wait()
	st := &sh.stats
	t.Logf("joins %d, detaches %d, bytes saved %d, upstream requests %d", st.Joins.Load(), st.Detaches.Load(), st.BytesSaved.Load(), len(g.reqs))
}

// refusingSrc answers, then refuses the body's continuation (as a
// resumption with a revoked token is refused) after 2 KiB.
type refusingSrc struct {
	mu       sync.Mutex
	statuses int
}

type refusedBody struct{ n int }

func (b *refusedBody) Read(p []byte) (int, error) {
	if b.n >= 2048 {
		return 0, &upstream.Error{StatusCode: http.StatusUnauthorized, Code: "APIGW.0301"}
	}
	k := min(len(p), 2048-b.n)
	b.n += k
	return k, nil
}
func (b *refusedBody) Close() error { return nil }

func (s *refusingSrc) DownloadTaskLog(ctx context.Context, req upstream.Request) (*upstream.Log, error) {
	return &upstream.Log{Body: &refusedBody{}, Size: -1}, nil
}
func (s *refusingSrc) ActionStatus(ctx context.Context, req upstream.Request) (*upstream.Action, error) {
	s.mu.Lock()
	s.statuses++
	s.mu.Unlock()
	return &upstream.Action{Status: "running"}, nil
}

// A refusal that comes in a body (a resumption refused its credentials)
// ends the caller's proof: its next state call is its own.
func TestSharedRefusalInABodyEndsTheProof(t *testing.T) {
	src := &refusingSrc{}
	sh := newSharing(src, rchunk, time.Minute, time.Minute)
	ctx := context.Background()
	r := req("a", 0)
	r.Growing = true
	if _, err := sh.ActionStatus(ctx, r); err != nil {
		t.Fatal(err)
	}
	log, err := sh.DownloadTaskLog(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(io.Discard, log.Body)
	log.Body.Close()
	t.Logf("the caller's read ended with %v", err)
	sh.mu.Lock()
	proven := sh.proven(sh.logs[keyOf(r)], idOf("a"), time.Now())
	sh.mu.Unlock()
	if _, err := sh.ActionStatus(ctx, r); err != nil {
		t.Fatal(err)
	}
	if proven || src.statuses == 1 {
		t.Errorf("after the upstream refused a's token (401 in the body): still proven=%v; its next state call answered from the cache: %v", proven, src.statuses == 1)
	}
}

// At the log's end, a member whose remaining bytes are all in the window
// is not detached (the reader checks head >= end first).
func TestSharedNoDetachAtTheEnd(t *testing.T) {
	// a reads 4096 bytes; the rest of the log is the widest window of
	// two members.
	probe := newTestSharing(nil)
	size := 4096 + int64(max(2*probe.memberWindow, probe.firstWindow)*rchunk)
	g := newGated(size, 0)
	sh := newTestSharing(g)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, err := sh.DownloadTaskLog(ctx, req("a", 0))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Body.Close()
	f := a.Body.(*member).f
	b, err := sh.DownloadTaskLog(ctx, req("b", 0))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Body.Close()
	g.setAllow(4096)
	if bad := readCheck(t, a.Body, 0, 4096); bad >= 0 {
		t.Fatal(bad)
	}
	g.setAllow(size)
	n, err := io.Copy(io.Discard, b.Body)
	if err != nil || n != size {
		t.Fatalf("b: %d, %v", n, err)
	}
	f.mu.Lock()
	ring, detached := f.win.size(), a.Body.(*member).detached
	f.mu.Unlock()
	before := len(g.reqs)
	if bad := readCheck(t, a.Body, 4096, int(size-4096)); bad >= 0 {
		t.Fatal(bad)
	}
	if detached {
		t.Errorf("a, at 4096 with [4096, %d) all in the %d-byte window, was detached at the end; it made %d more upstream requests", size, ring, len(g.reqs)-before)
	}
}

// A follower further on than a poll in flight rides it, once the poll's
// answer shows the log reaching its offset; one past the log's end polls
// on its own.
func TestSharedFollowerRidesAnEarlierPoll(t *testing.T) {
	const size = 4 * rchunk // the widest window of two members: nobody detaches
	g := newGated(size, 0)
	sh := newTestSharing(g)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	follow := func(tok string, off int64) upstream.Request {
		r := req(tok, off)
		r.Growing = true
		return r
	}
	a, err := sh.DownloadTaskLog(ctx, follow("a", 0))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Body.Close()
	b, err := sh.DownloadTaskLog(ctx, follow("b", 1000))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Body.Close()
	if !isShared(b.Body) || b.Body.(*member).f != a.Body.(*member).f {
		t.Fatal("b, at 1000 of a log of 4096, did not ride a's poll from 0")
	}
	c, err := sh.DownloadTaskLog(ctx, follow("c", size+100))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Body.Close()
	g.setAllow(size)
	if bad := readCheck(t, b.Body, 1000, size-1000); bad >= 0 {
		t.Fatalf("b got a wrong byte at %d", bad)
	}
	if bad := readCheck(t, a.Body, 0, size); bad >= 0 {
		t.Fatalf("a got a wrong byte at %d", bad)
	}
	polls := 0
	g.mu.Lock()
	for _, r := range g.reqs {
		if r.Limit != 1 {
			polls++
		}
	}
	g.mu.Unlock()
	if polls != 2 {
		t.Errorf("%d log polls, want 2: a's (which b rides) and c's own, past the log's end", polls)
	}
}

// Readers that fall behind a read together ride one read of their own,
// started at the lowest of them, whichever of them asks first: the read
// keeps its bytes from there until the others join.
func TestSharedGroupThatFellBehindRidesOneRead(t *testing.T) {
	const size = 64 << 10
	g := newGated(size, size)
	sh := newTestSharing(g)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	open := func(tok string) io.ReadCloser {
		log, err := sh.DownloadTaskLog(ctx, req(tok, 0))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { log.Body.Close() })
		return log.Body
	}
	a, b, c := open("a"), open("b"), open("c")
	if bad := readCheck(t, b, 0, rchunk); bad >= 0 {
		t.Fatal(bad)
	}
	if bad := readCheck(t, c, 0, 2*rchunk); bad >= 0 {
		t.Fatal(bad)
	}
	// a reads it all: b and c, far behind, detach together.
	if bad := readCheck(t, a, 0, size); bad >= 0 {
		t.Fatal(bad)
	}
	reads := func() (n int) {
		g.mu.Lock()
		defer g.mu.Unlock()
		for _, r := range g.reqs {
			if r.Limit != 1 { // not a probe
				n++
			}
		}
		return n
	}
	before := reads()
	// c, further on, asks first and reads on, within what the two of
	// them may hold.
	if bad := readCheck(t, c, 2*rchunk, 2*rchunk); bad >= 0 {
		t.Fatal(bad)
	}
	// Then both read on at one pace, b catching up first.
	if bad := readCheck(t, b, rchunk, 3*rchunk); bad >= 0 {
		t.Fatal(bad)
	}
	for off := int64(4 * rchunk); off < size; off += rchunk {
		for _, r := range []io.Reader{b, c} {
			if bad := readCheck(t, r, off, rchunk); bad >= 0 {
				t.Fatal(bad)
			}
		}
	}
	if n := reads() - before; n != 1 {
		t.Errorf("b and c, behind a together, made %d upstream reads after it, want 1", n)
	}
}

// lastRead is a fake upstream whose log answers give all their bytes in
// one Read, with io.EOF, once the test closes gate: a poll's read ends in
// the same Read as its last bytes arrive.
type lastRead struct {
	size int64
	gate chan struct{}
	mu   sync.Mutex
	reqs int // log requests, probes aside
}

func (e *lastRead) DownloadTaskLog(ctx context.Context, req upstream.Request) (*upstream.Log, error) {
	if req.Limit == 1 {
		return &upstream.Log{Body: http.NoBody, Size: e.size}, nil // a probe
	}
	e.mu.Lock()
	e.reqs++
	e.mu.Unlock()
	b := make([]byte, e.size-req.Offset)
	for i := range b {
		b[i] = pat(req.Offset + int64(i))
	}
	return &upstream.Log{Body: io.NopCloser(&gatedReader{gate: e.gate, r: iotest.DataErrReader(bytes.NewReader(b))}), Size: e.size}, nil
}

func (e *lastRead) ActionStatus(ctx context.Context, req upstream.Request) (*upstream.Action, error) {
	return &upstream.Action{}, nil
}

type gatedReader struct {
	gate <-chan struct{}
	r    io.Reader
}

func (g *gatedReader) Read(p []byte) (int, error) {
	<-g.gate
	return g.r.Read(p)
}

// A followed log's poll whose last bytes came stays for the followers of
// its interval, even while its reader has not noted its end (here, waiting
// to wake the log's other followers): its last member leaving does not
// stop it, it is not stale, and the next follower rides it.
func TestSharedEndedPollStaysForLaterFollowers(t *testing.T) {
	const size = 100
	e := &lastRead{size: size, gate: make(chan struct{})}
	sh := newTestSharing(e)
	follow := func(tok string) upstream.Request {
		r := req(tok, 0)
		r.Growing = true
		return r
	}
	a, err := sh.DownloadTaskLog(t.Context(), follow("a"))
	if err != nil {
		t.Fatal(err)
	}
	f := a.Body.(*member).f
	// The reader, having read the last bytes and the end, waits for
	// sh.mu to wake the log's other followers.
	sh.mu.Lock()
	close(e.gate)
	if bad := readCheck(t, a.Body, 0, size); bad >= 0 {
		t.Fatalf("a got a wrong byte at %d", bad)
	}
	closed := make(chan struct{})
	go func() {
		a.Body.Close()
		close(closed)
	}()
	for left := false; !left; runtime.Gosched() {
		f.mu.Lock()
		left = len(f.members) == 0
		f.mu.Unlock()
	}
	stale := f.stale(time.Now(), sh.fresh)
	sh.mu.Unlock()
	<-closed
	if stale {
		t.Error("the poll was stale as its reader was noting its end")
	}
	b, err := sh.DownloadTaskLog(t.Context(), follow("b"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Body.Close()
	if bad := readCheck(t, b.Body, 0, size); bad >= 0 {
		t.Fatalf("b got a wrong byte at %d", bad)
	}
	if e.reqs != 1 {
		t.Errorf("%d log polls for two followers of one interval, want 1", e.reqs)
	}
}
