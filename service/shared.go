package service

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/buildlog/buildlog/upstream"
)

// Shared reads: many callers of one log cost the upstream about one read,
// and each still proves its own access.
//
// sharing sits between the downloads and the upstream as a [LogSource]. It
// keeps, per log (record, task, level), the read in flight (a [flight]),
// the action's state as last asked, and which callers' credentials the
// upstream accepted for that log, and when.
//
// The rule that keeps every caller's access its own: a caller receives
// nothing that another caller's request fetched (bytes, a "nothing new", an
// action state) unless an upstream answer to a log request of its own,
// with its own credentials, for this log, succeeded within the
// re-authorization interval; a caller whose proof is older proves itself
// again, and a refusal is its answer, exactly as without sharing. A
// download that joins a read proves itself by a one-byte request of its
// own before its first byte (whose answer must also show the same version
// of the log); a follower proven within the interval joins without one.
// A state call proves nothing (full-stages names no task nor level), and
// a refusal, in an answer or in a body, ends the proof. The proof is
// checked when the caller joins, whatever the interleaving of the others:
// a shared read only ever carries bytes to callers it admitted that way.
type sharing struct {
	next LogSource
	// firstWindow is the chunks one flight holds for its readers at
	// first; its window widens to hold readers that drift apart, up to
	// memberWindow chunks a member and maxWindow in all.
	firstWindow, memberWindow, maxWindow int
	chunk                                int
	// blocks are the chunk-sized buffers of the flights' windows and of
	// the downloads riding them.
	blocks sync.Pool
	// minShared: a read of a finished log that announces no more bytes
	// than this is not shared (a joiner's proof would cost as much).
	minShared int64
	// fresh is how long a followed log's last answer (its state, "nothing
	// new", its newest bytes) stands for other callers: the poll interval.
	fresh time.Duration
	// reauthorize is how long a caller's proof of access to a log stands.
	reauthorize time.Duration

	mu   sync.Mutex
	logs map[logKey]*sharedLog

	stats SharedStats
}

// SharedStats counts what shared reads did; read it with
// [Service.SharedStats].
type SharedStats struct {
	// Joins counts downloads (and follower polls) served from a read that
	// another caller's request made.
	Joins atomic.Int64
	// Detaches counts readers that fell behind a shared read's window and
	// went on with a request of their own.
	Detaches atomic.Int64
	// RequestsSaved counts upstream requests not made: joins and answers
	// (states, "nothing new") taken from another caller's, less the
	// proofs they needed.
	RequestsSaved atomic.Int64
	// BytesSaved counts log bytes delivered from another caller's read.
	BytesSaved atomic.Int64
}

// logKey names one log.
type logKey struct{ record, task, level string }

func keyOf(req upstream.Request) logKey {
	return logKey{req.RecordID, req.TaskName, req.LogLevel}
}

// tokenID identifies a caller's credentials without keeping them: the
// server's own credentials (no token) are one caller.
type tokenID [sha256.Size]byte

// sharedLog is what sharing knows of one log.
type sharedLog struct {
	flights  []*flight             // the reads others may join, newest first
	proofs   map[tokenID]time.Time // when the upstream last accepted each caller for this log
	action   *upstream.Action      // the action's state as last asked
	actionAt time.Time
	asking   *asking // the state call in flight, if any
	// changed is closed when a followed read brings new bytes: followers
	// waiting for their next poll poll at once.
	changed chan struct{}
	known   int64 // the furthest offset a followed read reached
	sweep   *time.Timer
}

// WithSharedReads makes concurrent readers of one log share upstream
// reads (see sharing): followers share polls and their answers, downloads
// join a read in flight. Each caller's access is proven by an upstream
// answer of its own at most reauthorize old. Off by default.
func WithSharedReads(reauthorize time.Duration) Option {
	return func(s *Service) { s.sharedReauthorize = reauthorize }
}

// DefaultSharedReauthorize is how long a caller's proof of access stands.
const DefaultSharedReauthorize = 5 * time.Minute

// A shared read's window, in chunks: at first, for each reader riding
// it, and at most.
const (
	sharedWindowChunks       = 4
	sharedMemberWindowChunks = 2
	sharedMaxWindowChunks    = 256
)

func newSharing(next LogSource, chunkSize int, fresh, reauthorize time.Duration) *sharing {
	sh := &sharing{
		next:         next,
		firstWindow:  sharedWindowChunks,
		memberWindow: sharedMemberWindowChunks,
		chunk:        chunkSize,
		maxWindow:    sharedMaxWindowChunks,
		minShared:    int64(chunkSize),
		fresh:        fresh,
		reauthorize:  reauthorize,
		logs:         make(map[logKey]*sharedLog),
	}
	sh.blocks.New = func() any {
		b := make([]byte, chunkSize)
		return &b
	}
	return sh
}

// SharedStats returns the shared reads' counters; nil when shared reads
// are off.
func (s *Service) SharedStats() *SharedStats {
	if s.sharing == nil {
		return nil
	}
	return &s.sharing.stats
}

// entry returns the log's state, created if need be. The caller holds mu.
func (sh *sharing) entry(k logKey) *sharedLog {
	l := sh.logs[k]
	if l == nil {
		l = &sharedLog{proofs: make(map[tokenID]time.Time), changed: make(chan struct{})}
		sh.logs[k] = l
		l.sweep = time.AfterFunc(sh.fresh, func() { sh.sweepLog(k, l) })
	}
	return l
}

// sweepLog drops what of a log's state has gone stale, and the state once
// nothing of it stands: every poll interval while it lives.
func (sh *sharing) sweepLog(k logKey, l *sharedLog) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	now := time.Now()
	for id, at := range l.proofs {
		if now.Sub(at) >= sh.reauthorize {
			delete(l.proofs, id)
		}
	}
	l.prune(now, sh.fresh)
	if len(l.flights) == 0 && len(l.proofs) == 0 && sh.logs[k] == l {
		delete(sh.logs, k)
		return
	}
	l.sweep.Reset(sh.fresh)
}

func idOf(token string) tokenID { return sha256.Sum256([]byte(token)) }

// proven reports whether the caller's access to the log was proven
// recently enough. The caller holds mu.
func (sh *sharing) proven(l *sharedLog, id tokenID, now time.Time) bool {
	at, ok := l.proofs[id]
	return ok && now.Sub(at) < sh.reauthorize
}

// prove records that the upstream accepted the caller for the log.
func (sh *sharing) prove(k logKey, id tokenID) {
	sh.mu.Lock()
	sh.entry(k).proofs[id] = time.Now()
	sh.mu.Unlock()
}

// forget drops a caller's proof once the upstream refused it.
func (sh *sharing) forget(k logKey, id tokenID) {
	sh.mu.Lock()
	if l := sh.logs[k]; l != nil {
		delete(l.proofs, id)
	}
	sh.mu.Unlock()
}

// changes returns a channel closed when the log's followed read brings
// new bytes.
func (sh *sharing) changes(req upstream.Request) <-chan struct{} {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.entry(keyOf(req)).changed
}

// grew wakes the log's waiting followers when a followed read brought
// bytes past any read before (head is where it is now).
func (sh *sharing) grew(k logKey, head int64) {
	sh.mu.Lock()
	if l := sh.logs[k]; l != nil && head > l.known {
		l.known = head
		close(l.changed)
		l.changed = make(chan struct{})
	}
	sh.mu.Unlock()
}

// ActionStatus answers a caller whose access is proven from the state
// another follower asked within the poll interval, or waits for the one
// being asked; otherwise it asks itself.
func (sh *sharing) ActionStatus(ctx context.Context, req upstream.Request) (*upstream.Action, error) {
	k, id, now := keyOf(req), idOf(req.Token), time.Now()
	sh.mu.Lock()
	l := sh.entry(k)
	proven := sh.proven(l, id, now)
	if proven && l.action != nil && now.Sub(l.actionAt) < sh.fresh {
		a := *l.action
		sh.mu.Unlock()
		sh.stats.RequestsSaved.Add(1)
		return &a, nil
	}
	if ask := l.asking; proven && ask != nil {
		sh.mu.Unlock()
		select {
		case <-ask.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if ask.err == nil {
			a := ask.action
			sh.stats.RequestsSaved.Add(1)
			return &a, nil
		}
		// Another caller's failure is not this one's answer: ask.
	} else {
		sh.mu.Unlock()
	}
	ask := &asking{done: make(chan struct{})}
	sh.mu.Lock()
	if l.asking == nil {
		l.asking = ask
	}
	sh.mu.Unlock()
	a, err := sh.next.ActionStatus(ctx, req)
	sh.mu.Lock()
	if err == nil {
		// Not a proof of access to the log: full-stages names no task
		// nor level, and its permission may not be the log's.
		c := *a
		l.action, l.actionAt = &c, time.Now()
		ask.action = c
	}
	ask.err = err
	if l.asking == ask {
		l.asking = nil
	}
	sh.mu.Unlock()
	close(ask.done)
	if err != nil {
		sh.forget(k, id)
		return nil, err
	}
	return a, nil
}

// asking is a state call in flight, which proven callers wait for.
type asking struct {
	done   chan struct{}
	action upstream.Action
	err    error
}

// DownloadTaskLog rides the log's read in flight when it can, and reads
// on its own otherwise, its read becoming the one later callers ride.
func (sh *sharing) DownloadTaskLog(ctx context.Context, req upstream.Request) (*upstream.Log, error) {
	return sh.download(ctx, req, nil, req.Offset, 1)
}

// download is DownloadTaskLog for a caller that may already know the log
// (known: an answer it was admitted to): proven, it then joins a read of
// the same log without a probe of its own. A caller that fell behind
// another read with others (group of them, the lowest at from) starts,
// when it is the first of them here, the read they all ride.
func (sh *sharing) download(ctx context.Context, req upstream.Request, known *upstream.Log, from int64, group int) (*upstream.Log, error) {
	if req.Limit > 0 && req.Limit <= sh.minShared {
		return sh.own(ctx, req) // a probe (REST HEAD) or a small range: nothing to share
	}
	k, id, now := keyOf(req), idOf(req.Token), time.Now()
	sh.mu.Lock()
	l := sh.entry(k)
	proven := sh.proven(l, id, now)
	l.prune(now, sh.fresh)
	for _, f := range l.flights {
		log, m := f.join(req, proven, now, req.Offset-from)
		if log == nil && m == nil {
			continue
		}
		sh.mu.Unlock()
		if log != nil { // nothing new, from an answer of this interval
			sh.stats.RequestsSaved.Add(1)
			return log, nil
		}
		if log, err := sh.admit(ctx, k, id, m, proven, known); log != nil || err != nil {
			return log, err
		}
		return sh.own(ctx, req)
	}
	// A read for readers that fell behind together starts at the lowest
	// of them, so that the others ride it too.
	fr := req
	if from < req.Offset && !req.Growing {
		fr.Offset = from
		if req.Limit > 0 {
			fr.Limit += req.Offset - from
		}
	}
	f := newFlight(sh, k, fr)
	if !fr.Growing {
		f.awaited = group - 1
	}
	l.flights = append([]*flight{f}, l.flights...)
	if len(l.flights) > maxFlights {
		// The oldest goes on for its members; newcomers ride the others.
		l.flights[maxFlights].drop()
		l.flights = l.flights[:maxFlights]
	}
	sh.mu.Unlock()
	return f.open(ctx, id, req)
}

// own reads the log with the caller's own request, not shared.
func (sh *sharing) own(ctx context.Context, req upstream.Request) (*upstream.Log, error) {
	k, id := keyOf(req), idOf(req.Token)
	log, err := sh.next.DownloadTaskLog(ctx, req)
	if err != nil {
		sh.forget(k, id)
		return nil, err
	}
	sh.prove(k, id)
	log.Body = &watchedBody{ReadCloser: log.Body, refused: func() { sh.forget(k, id) }}
	return log, nil
}

// watchedBody forgets its caller's proof when a read of it ends with the
// upstream's refusal (a resumption refused its credentials).
type watchedBody struct {
	io.ReadCloser
	refused func()
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if refused(err) {
		b.refused()
	}
	return n, err
}

// refused reports whether err is an answer of the upstream refusing a
// request (rather than a break): its caller's proof no longer stands.
func refused(err error) bool {
	var e *upstream.Error
	return errors.As(err, &e)
}

// admit lets a member that joined a flight read from it once the flight's
// answer is in and the caller's access is proven: by a one-byte request of
// its own, unless it was proven within the interval and follows, or rides
// on after falling behind another read of the same log (known). The log
// its own answer showed must be the flight's. It returns the caller's
// refusal as it would be alone, or nil, nil when the caller must read on
// its own instead: the flight failed, or the log is another version.
func (sh *sharing) admit(ctx context.Context, k logKey, id tokenID, m *member, proven bool, known *upstream.Log) (*upstream.Log, error) {
	f := m.f
	var own *upstream.Log
	ref := known // what the caller's own answer said of the log
	if !proven || !f.growing && known == nil {
		// While the flight's answer is awaited.
		probe := m.req
		probe.Offset, probe.Limit = 0, 1
		log, err := sh.next.DownloadTaskLog(ctx, probe)
		if err != nil {
			m.Close()
			sh.forget(k, id)
			return nil, err // the caller's own refusal, as it would be alone
		}
		log.Body.Close()
		sh.prove(k, id)
		own, ref = log, log
	}
	select {
	case <-f.ready:
	case <-ctx.Done():
		m.Close()
		return nil, ctx.Err()
	}
	if f.err != nil || f.unshared || ref != nil && !f.growing && (ref.Size != f.log.Size || ref.Version() != f.log.Version()) ||
		f.growing && m.req.Offset > f.start && (f.log.Size < 0 || m.req.Offset > f.log.Size) {
		m.Close()
		return nil, nil
	}
	log := *f.log
	log.Skipped = 0
	if own != nil {
		log.ContentType, log.FileName, log.RequestID = own.ContentType, own.FileName, own.RequestID
	} else {
		sh.stats.RequestsSaved.Add(1)
	}
	log.Body = m
	m.admitted(ctx)
	sh.stats.Joins.Add(1)
	return &log, nil
}

// unregister drops f from the log's reads, if it is one.
func (sh *sharing) unregister(k logKey, f *flight) {
	sh.mu.Lock()
	if l := sh.logs[k]; l != nil {
		l.flights = slices.DeleteFunc(l.flights, func(g *flight) bool { return g == f })
	}
	sh.mu.Unlock()
	f.drop()
}

// maxFlights bounds the reads of one log that others may join: readers
// at a few places in the log (those that fell behind together, a caller
// resuming) each find theirs.
const maxFlights = 8

// prune drops the reads no longer to be joined. The caller holds sh.mu.
func (l *sharedLog) prune(now time.Time, fresh time.Duration) {
	l.flights = slices.DeleteFunc(l.flights, func(f *flight) bool {
		if f.stale(now, fresh) {
			f.drop()
			return true
		}
		return false
	})
}
