package service

import (
	"context"
	"io"

	"github.com/buildlog/buildlog/upstream"
)

// member is one download's view of a flight: the body of its log.
type member struct {
	f     *flight
	req   upstream.Request // the download's own request
	pos   int64            // the log offset of its next byte
	owner bool             // its caller's request is the flight's

	// Guarded by f.mu.
	detached bool // it reads on its own (own) from pos
	// from is, once detached, the lowest position of the members that
	// detached with it, and group how many they are: a read it starts
	// starts there, and keeps what it reads for them until they join.
	from    int64
	group   int
	waiting bool // a Read waits for the flight's next bytes
	done    bool // its download's request ended (ctx)
	closed  bool

	ctx      context.Context
	stopWake func() bool
	own      io.ReadCloser // its own answer, once detached
}

// admitted lets m read: a Read waiting for bytes returns when the
// download's request ends.
func (m *member) admitted(ctx context.Context) {
	m.ctx = ctx
	f := m.f
	m.stopWake = context.AfterFunc(ctx, func() {
		f.mu.Lock()
		m.done = true
		f.data.Broadcast()
		stop := f.leave(m) // a caller that left costs the upstream nothing more
		f.mu.Unlock()
		if stop {
			f.stop()
		}
	})
}

func (m *member) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	f := m.f
	f.mu.Lock()
	for {
		switch {
		case m.done:
			f.mu.Unlock()
			return 0, m.ctx.Err()
		case m.detached:
			f.mu.Unlock()
			return m.readOwn(p)
		case m.pos < f.head:
			n := m.copy(p)
			f.room.Signal()
			f.mu.Unlock()
			if !m.owner {
				f.sh.stats.BytesSaved.Add(int64(n))
			}
			return n, nil
		case f.rerr == io.EOF:
			f.mu.Unlock()
			return 0, io.EOF
		case f.rerr != nil && m.owner:
			f.mu.Unlock()
			return 0, f.rerr // its own request's end, as alone
		case f.rerr != nil:
			// Another caller's read broke: go on alone, with the
			// resumption this download has of its own.
			delete(f.members, m)
			m.detached, m.from = true, m.pos
			continue
		}
		m.waiting = true
		f.room.Signal() // a full window's reader may let others go now
		f.data.Wait()
		m.waiting = false
	}
}

// copy copies what the window holds from m.pos. The caller holds f.mu.
func (m *member) copy(p []byte) int {
	f := m.f
	n := 0
	for n < len(p) && m.pos < f.head {
		k := copy(p[n:], f.win.bytes(m.pos, f.head))
		n += k
		m.pos += int64(k)
	}
	return n
}

// readOwn reads from m's own read, made at the first call: an upstream
// request of its own or another flight, which must show the log that this
// flight read.
func (m *member) readOwn(p []byte) (int, error) {
	if m.own == nil {
		req := m.req
		req.Offset = m.pos
		if m.req.Limit > 0 {
			req.Limit = m.req.Offset + m.req.Limit - m.pos
			if req.Limit <= 0 {
				return 0, io.EOF
			}
		}
		if err := m.ctx.Err(); err != nil {
			return 0, err
		}
		// Through the sharing again: the readers that fell behind
		// together ride one read, the first one's, each proven anew.
		log, err := m.f.sh.download(m.ctx, req, m.f.log, min(m.from, m.pos), max(m.group, 1))
		if err != nil {
			return 0, err
		}
		if err := upstream.Continues(m.f.log, log, m.pos, m.f.growing); err != nil {
			log.Body.Close()
			return 0, err
		}
		m.own = log.Body
	}
	n, err := m.own.Read(p)
	if refused(err) {
		m.f.sh.forget(m.f.key, idOf(m.req.Token))
	}
	return n, err
}

// Close ends m's ride; the last member of a read under way stops it.
func (m *member) Close() error {
	f := m.f
	f.mu.Lock()
	if m.closed {
		f.mu.Unlock()
		return nil
	}
	m.closed = true
	stop := f.leave(m)
	f.mu.Unlock()
	if m.stopWake != nil {
		m.stopWake()
	}
	if stop {
		f.stop()
	}
	if m.own != nil {
		return m.own.Close()
	}
	return nil
}

// ownBody is an answer returned as it came, whose request ends with it.
type ownBody struct {
	io.ReadCloser
	close func()
}

func (b *ownBody) Close() error {
	err := b.ReadCloser.Close()
	b.close()
	return err
}

// isShared reports whether body rides a shared read.
func isShared(body io.Reader) bool {
	_, ok := body.(*member)
	return ok
}
