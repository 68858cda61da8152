package service

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/buildlog/buildlog/api"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/upstream"
)

// Following. A followed download reads the log in segments: each is one
// upstream answer from the offset reached so far ("Range: bytes=N-"), read
// to its end through a pump as any download is. Between segments the
// download holds no ring and no upstream request: it waits for the poll
// interval, then asks again. The action's state (upstream.Action) is asked
// at the start and after every poll that found nothing new; once it says
// finished, the next read is the last, and the download ends OK after it.
// The upstream is assumed to have written the whole log by the time it
// reports the action finished.

// Defaults of following.
const (
	// DefaultFollowPollInterval is the pause between polls of a log that
	// grows; peers poll every 1 to 4 s.
	DefaultFollowPollInterval = 2 * time.Second
	// DefaultFollowMaxDuration bounds one followed download; its caller
	// resumes after it.
	DefaultFollowMaxDuration = time.Hour
)

// Poll pacing: while nothing changes the interval grows by backoffFactor
// after each poll, up to maxBackoff times the base interval; new bytes
// bring it back to the base.
const (
	backoffFactor = 1.5
	maxBackoff    = 3
	// skipRate bounds what polling an upstream that ignores Range costs:
	// each poll sends the whole log, so the pause after one that skipped
	// n bytes is at least n / skipRate seconds.
	skipRate = 8 << 20
)

// followPolicy is how followed downloads poll.
type followPolicy struct {
	interval, maxDuration time.Duration
}

func (p followPolicy) check() error {
	if p.interval < 10*time.Millisecond || p.interval > time.Hour {
		return fmt.Errorf("follow-poll-interval %s is out of range: use 10ms to 1h", p.interval)
	}
	if p.maxDuration <= 0 {
		return fmt.Errorf("follow-max-duration must be positive, got %s", p.maxDuration)
	}
	return nil
}

// WithFollow sets how followed downloads poll the upstream: every
// interval while the log grows, less often while it does not, and for at
// most maxDuration in all. The defaults are [DefaultFollowPollInterval]
// and [DefaultFollowMaxDuration].
func WithFollow(interval, maxDuration time.Duration) Option {
	return func(s *Service) { s.follow = followPolicy{interval: interval, maxDuration: maxDuration} }
}

// EndFollows ends every followed download at once, and those opened later
// as soon as they start, with UNAVAILABLE/FOLLOW_INTERRUPTED and their
// resumeOffset: a server that shuts down calls it first, so that its
// drain waits only for downloads that end by themselves.
func (s *Service) EndFollows() { s.endFollow() }

// follower is the state of a followed download.
type follower struct {
	action  *buildlogv1.ActionState
	pending bool // action has not been handed out since it changed
	final   bool // the segment being read (or the last one) was read after the action finished
	ended   bool // the last chunk, saying the action finished, was handed out
	grew    bool // the last segment delivered bytes
	seen    int64
	wait    time.Duration // before the next poll
	backoff time.Duration // the wait without the skipped prefix's
	// skipWait is the least wait after a poll whose upstream ignored the
	// Range: in proportion to the prefix it sent again.
	skipWait time.Duration
	until    time.Time // when the download must end
	byAge    bool      // until is the connection's, not the follow limit
	ureq     upstream.Request
}

// startFollow asks the action's state before the first read, and decides
// when the download must end.
func (d *Download) startFollow(ureq upstream.Request) error {
	s := d.s
	f := &follower{wait: s.follow.interval, backoff: s.follow.interval, until: d.start.Add(s.follow.maxDuration), seen: -1}
	if u := d.req.FollowUntil; !u.IsZero() && u.Before(f.until) {
		f.until, f.byAge = u, true
	}
	d.follow = f
	if s.ending.Err() != nil {
		return followInterrupted(d.pos)
	}
	act, err := s.source.ActionStatus(d.ctx, ureq)
	if err != nil {
		return err
	}
	f.setAction(act)
	f.final = act.Finished
	ureq.Growing = !f.final
	f.ureq = ureq
	return nil
}

// setAction records the action's state, to be handed out when it changed.
func (f *follower) setAction(a *upstream.Action) {
	st := &buildlogv1.ActionState{Finished: a.Finished, Status: a.Status, FinishTime: a.FinishTime}
	if f.action == nil || f.action.Finished != st.Finished || f.action.Status != st.Status || f.action.FinishTime != st.FinishTime {
		f.action, f.pending = st, true
	}
}

// take returns the action's state when it is to be handed out.
func (f *follower) take() *buildlogv1.ActionState {
	if f == nil || !f.pending {
		return nil
	}
	f.pending = false
	return f.action
}

// between is what a followed download does once a segment is over: hand
// out a state not yet handed out (a chunk without data), end after the
// final segment (io.EOF, after a last chunk saying the action finished),
// or poll (a zero chunk: read on).
func (d *Download) between() (Chunk, error) {
	f := d.follow
	switch {
	case f.final && f.ended:
		return Chunk{}, io.EOF
	case f.final:
		// Whatever the first message said, the last of a finished action
		// says it finished.
		f.ended, f.pending = true, false
		return Chunk{Offset: d.pos, Action: f.action}, nil
	case f.pending:
		return Chunk{Offset: d.pos, Action: f.take()}, nil
	}
	return Chunk{}, d.poll()
}

// poll waits for the next poll and reads what is new: a segment to read,
// or nothing (the next poll waits longer).
func (d *Download) poll() error {
	f, s := d.follow, d.s
	wait := f.wait
	if rest := time.Until(f.until); rest < wait {
		if !sleepCtx(d.followCtx, rest, nil) {
			return d.followErr()
		}
		return followEnded(f.byAge, s.follow.maxDuration, d.pos)
	}
	var grew <-chan struct{}
	if s.sharing != nil {
		grew = s.sharing.changes(f.ureq) // another follower's poll found new bytes
	}
	if !sleepCtx(d.followCtx, wait, grew) {
		return d.followErr()
	}
	ureq := f.ureq
	ureq.Offset = d.pos
	if d.req.Message.GetLimit() > 0 {
		ureq.Limit = d.remaining
	}
	if !f.grew {
		act, err := s.source.ActionStatus(d.followCtx, ureq)
		if err != nil {
			return d.followErrOr(err)
		}
		f.setAction(act)
		if act.Finished {
			f.final, ureq.Growing = true, false
		}
	}
	log, err := d.request(ureq)
	if err != nil {
		return d.followErrOr(err)
	}
	if log.Size >= 0 && log.Size < f.seen {
		log.Body.Close()
		return &upstream.ChangedError{Offset: d.pos, Problem: fmt.Sprintf("it was %d bytes long and is now %d", f.seen, log.Size)}
	}
	f.seen = max(f.seen, log.Size)
	if f.final && log.Size >= 0 && d.offset > log.Size {
		log.Body.Close()
		return offsetError(d.offset, log.Size)
	}
	f.skipWait = time.Duration(float64(log.Skipped) / skipRate * float64(time.Second))
	d.startSegment(log)
	if d.pump == nil {
		f.segmentOver(false, s.follow.interval) // nothing new
	}
	return nil
}

// segmentOver notes that a followed download's segment ended, having
// delivered bytes or not, and paces the next poll: the base interval after
// new bytes, longer after each poll without, and never less than what the
// segment's skipped prefix asks.
func (f *follower) segmentOver(grew bool, interval time.Duration) {
	f.grew = grew
	f.wait = interval
	if !grew {
		f.wait = min(time.Duration(float64(f.backoff)*backoffFactor), maxBackoff*interval)
	}
	f.backoff = max(f.wait, interval)
	f.wait = max(f.wait, f.skipWait)
}

// followErr is why a followed download's wait ended early: the caller
// left, or follows are ending.
func (d *Download) followErr() error {
	return d.followErrOr(d.followCtx.Err())
}

// followErrOr turns the error of an upstream call or wait into the end of
// follows when they are ending.
func (d *Download) followErrOr(err error) error {
	if d.follow != nil && d.ctx.Err() == nil && d.s.ending.Err() != nil {
		return followInterrupted(d.pos)
	}
	return err
}

// followEnded ends a download that followed as long as it may.
func followEnded(byAge bool, limit time.Duration, pos int64) *api.Error {
	if byAge {
		return followInterrupted(pos)
	}
	return newError(codes.DeadlineExceeded, api.ReasonFollowTimeLimit,
		fmt.Sprintf("the log was followed for the server's limit of %s; follow on with offset=%d", limit, pos),
		map[string]string{api.MetadataResumeOffset: strconv.FormatInt(pos, 10)})
}

// followInterrupted ends a followed download because the server shuts
// down or the connection is at its maximum age.
func followInterrupted(pos int64) *api.Error {
	return newError(codes.Unavailable, api.ReasonFollowInterrupted,
		fmt.Sprintf("the server ended the follow (it shuts down, or the connection reached its maximum age); follow on with offset=%d on a new connection", pos),
		map[string]string{api.MetadataResumeOffset: strconv.FormatInt(pos, 10)})
}

// withResumeOffset gives e, the end of a followed download, the offset to
// follow on from, unless it has one.
func withResumeOffset(e *api.Error, pos int64) *api.Error {
	if _, ok := e.Metadata[api.MetadataResumeOffset]; ok {
		return e
	}
	md := make(map[string]string, len(e.Metadata)+1)
	for k, v := range e.Metadata {
		md[k] = v
	}
	md[api.MetadataResumeOffset] = strconv.FormatInt(pos, 10)
	out := *e
	out.Metadata = md
	return &out
}

// sleepCtx waits for d, or until wake is closed, unless ctx ends first;
// it reports whether it waited.
func sleepCtx(ctx context.Context, d time.Duration, wake <-chan struct{}) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-wake:
		return ctx.Err() == nil
	case <-ctx.Done():
		return false
	}
}
