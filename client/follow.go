package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/buildlog/buildlog/api"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
)

// Defaults of [Download] and [Follow].
const (
	// DefaultMaxRetries is how many calls in a row may fail without
	// progress before a download gives up.
	DefaultMaxRetries = 10
	// DefaultMinBackoff is the pause before the first reconnect after a
	// failed call; each further failure in a row doubles it, up to
	// DefaultMaxBackoff. Pauses are jittered by up to half.
	DefaultMinBackoff = 100 * time.Millisecond
	DefaultMaxBackoff = 5 * time.Second
)

// ErrProtocol is wrapped by the error of a stream that broke the download
// contract: a message whose offset is not the next one, data past the
// requested range, a resumeOffset past the bytes received, or an OK ending
// before the range (or, following, the action) was complete. Nothing of
// the offending message is written, so the writer holds a correct prefix
// of the range; such an ending is not retried.
var ErrProtocol = errors.New("the server broke the download protocol")

// Result is how far a download got. [Download] and [Follow] return one with
// every error too: the writer holds the log from the request's offset to
// req.Offset+Written.
type Result struct {
	// Written is the number of log bytes written.
	Written int64
	// Metadata is the log's metadata as the last call that got a message
	// gave it; nil when none did. TotalSize is unset on a followed stream
	// that started while the action ran.
	Metadata *buildlogv1.LogMetadata
	// Action is the action's last reported state, on a followed download
	// only. After Follow returns without error it is finished, unless the
	// request's limit was reached first.
	Action *buildlogv1.ActionState
	// Calls is how many DownloadTaskLog calls were made: 1 plus the
	// reconnects.
	Calls int
}

// Reconnect describes a reconnect about to happen, for [OnReconnect].
type Reconnect struct {
	// Err is how the last call ended.
	Err error
	// Offset is the log offset the next call asks for.
	Offset int64
	// Delay is the pause before the next call.
	Delay time.Duration
	// Failures counts the calls in a row that ended without progress, the
	// last one included; 0 when the last call made progress.
	Failures int
}

// Option configures [Download] and [Follow].
type Option func(*options)

type options struct {
	maxRetries             int
	minBackoff, maxBackoff time.Duration
	onReconnect            func(Reconnect)
	onMetadata             func(*buildlogv1.LogMetadata)
	onAction               func(*buildlogv1.ActionState)
	callOpts               []grpc.CallOption
}

// WithMaxRetries sets how many calls in a row may end without progress
// (see [Download]) before the download gives up and returns the last one's
// error; default [DefaultMaxRetries]. 0 turns reconnecting off: the first
// call's ending is the download's.
func WithMaxRetries(n int) Option {
	return func(o *options) { o.maxRetries = max(n, 0) }
}

// WithBackoff sets the pause before the first reconnect after a failed
// call, doubled for each further failure in a row, and its longest;
// defaults [DefaultMinBackoff] and [DefaultMaxBackoff].
func WithBackoff(first, longest time.Duration) Option {
	return func(o *options) { o.minBackoff, o.maxBackoff = max(first, 0), max(longest, first, 0) }
}

// OnReconnect has f called before each reconnect, such as to tell a user
// (the buildlog CLI prints a line on stderr). It runs on the download's
// goroutine.
func OnReconnect(f func(Reconnect)) Option {
	return func(o *options) { o.onReconnect = f }
}

// OnMetadata has f called with the metadata of each call's first message.
func OnMetadata(f func(*buildlogv1.LogMetadata)) Option {
	return func(o *options) { o.onMetadata = f }
}

// OnAction has f called with each new state of a followed download's
// action: the first one reported, then each that differs from the one
// before (a reconnected call's first message repeats the state, which is
// not reported again).
func OnAction(f func(*buildlogv1.ActionState)) Option {
	return func(o *options) { o.onAction = f }
}

// WithCallOptions passes opts to every DownloadTaskLog call, such as
// [ChunkCodec]. Request metadata, the token included, comes from the
// context given to the download.
func WithCallOptions(opts ...grpc.CallOption) Option {
	return func(o *options) { o.callOpts = append(o.callOpts, opts...) }
}

// Follow streams the log of req with follow on (whatever req says) to w,
// until the action finished and its log was written in full, reconnecting
// as [Download] does; or, when req has a limit, until that many bytes were
// written. The result's Action is then the final state.
func Follow(ctx context.Context, c buildlogv1.BuildLogServiceClient, req *buildlogv1.DownloadTaskLogRequest, w io.Writer, opts ...Option) (*Result, error) {
	req = proto.CloneOf(req)
	req.Follow = true
	return Download(ctx, c, req, w, opts...)
}

// Download writes the range of the log that req asks for to w, with as
// many DownloadTaskLog calls as it takes. Each message's offset must be
// the next one expected, and a call that ends OK must have delivered the
// whole range (when the log's size is known) or, with req.Follow, the
// action's final state.
//
// After an ending that [Retryable] accepts it calls again for the rest:
// from the error's resumeOffset when it has one (which may not exceed the
// bytes received; bytes received again are skipped), else from the bytes
// received, with the remaining limit. It pauses before a reconnect as
// [WithBackoff] says (at least the error's RetryInfo delay), except after a
// call that made progress: one that wrote new bytes (no pause), or that got
// a message and was ended by the server as followed calls regularly are
// (FOLLOW_TIME_LIMIT, FOLLOW_INTERRUPTED; the first pause, so that a server
// that keeps ending calls at once is not called in a tight loop). It gives
// up after [WithMaxRetries] calls in a row without progress.
//
// It returns a nil error once the range is complete; otherwise the error
// that ended the last call (a gRPC status error, such as UNAUTHENTICATED),
// one wrapping [ErrProtocol], the writer's error, or, when ctx ended
// during a pause, ctx's as a status error.
func Download(ctx context.Context, c buildlogv1.BuildLogServiceClient, req *buildlogv1.DownloadTaskLogRequest, w io.Writer, opts ...Option) (*Result, error) {
	o := options{maxRetries: DefaultMaxRetries, minBackoff: DefaultMinBackoff, maxBackoff: DefaultMaxBackoff}
	for _, opt := range opts {
		opt(&o)
	}
	d := &download{c: c, req: req, w: w, o: &o, offset: req.GetOffset(), pos: req.GetOffset(), end: -1}
	if req.GetLimit() > 0 {
		d.end = d.offset + req.GetLimit()
	}
	from, failures := d.offset, 0
	for {
		before := d.pos
		progress, err := d.call(ctx, from)
		if err == nil {
			return &d.res, nil
		}
		if ctx.Err() != nil {
			return &d.res, status.FromContextError(ctx.Err()).Err()
		}
		if !Retryable(err) || o.maxRetries == 0 {
			return &d.res, err
		}
		if d.pos == d.end {
			return &d.res, nil // the call failed after the range's last byte
		}
		next, rerr := resumeOffset(err, d.pos)
		if rerr != nil {
			return &d.res, rerr
		}
		from = next
		failures++
		if progress {
			failures = 0
		}
		if failures > o.maxRetries {
			return &d.res, err
		}
		delay := o.backoff(failures, err)
		if d.pos == before && followEnded(err) {
			// The server ended a followed call that brought nothing new: a
			// progress for the budget, but not a reason to call at once
			// (a server that keeps doing it is not called in a tight loop).
			delay = max(delay, o.minBackoff)
		}
		if o.onReconnect != nil {
			o.onReconnect(Reconnect{Err: err, Offset: from, Delay: delay, Failures: failures})
		}
		if !sleep(ctx, delay) {
			return &d.res, status.FromContextError(ctx.Err()).Err()
		}
	}
}

// Retryable reports whether a download that ended with err may go on with
// another call: UNAVAILABLE (the server or its upstream unreachable or
// interrupted, a server shutting down or restarting, a connection
// closing), DEADLINE_EXCEEDED for a server's follow time limit
// (FOLLOW_TIME_LIMIT), and RESOURCE_EXHAUSTED with a retry delay
// (RetryInfo). Others, such as UNAUTHENTICATED, NOT_FOUND, OUT_OF_RANGE or
// ABORTED (LOG_CHANGED: the log must be downloaded again from its start),
// are final, and so are a caller's own cancel and deadline.
func Retryable(err error) bool {
	e, ok := api.FromError(err)
	if !ok {
		return false
	}
	switch e.Code {
	case codes.Unavailable:
		return true
	case codes.DeadlineExceeded:
		return e.Reason == api.ReasonFollowTimeLimit
	case codes.ResourceExhausted:
		return e.RetryDelay > 0
	}
	return false
}

// download is the state of one Download.
type download struct {
	c      buildlogv1.BuildLogServiceClient
	req    *buildlogv1.DownloadTaskLogRequest
	w      io.Writer
	o      *options
	offset int64 // where the range starts
	end    int64 // where it ends, -1 for the end of the log
	pos    int64 // where the bytes written end
	// total is the log's size as a call's metadata last gave it, across
	// calls: a resumed call that says nothing of it (or ends early) is
	// still held to it. nil while none gave it (a followed log).
	total *int64
	res   Result
}

// call makes one DownloadTaskLog call from the log offset from (at most
// d.pos) and writes what it delivers past d.pos. It returns nil once the
// range is complete, and reports whether the call made progress.
func (d *download) call(ctx context.Context, from int64) (progress bool, err error) {
	req := proto.CloneOf(d.req)
	req.Offset = from
	if d.end >= 0 {
		req.Limit = d.end - from
	}
	// A call abandoned for a protocol error is cancelled, not left open.
	// The log's key lets a proxy route every call for it to one replica.
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(ctx,
		api.LogKeyMetadataKey, api.LogKey(req.GetRecordId(), req.GetTaskName(), req.GetLogLevel())))
	defer cancel()
	d.res.Calls++
	stream, err := d.c.DownloadTaskLog(ctx, req, d.o.callOpts...)
	if err != nil {
		return false, err
	}
	start, next := d.pos, from
	received, finished := false, false
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return d.pos > start || received && followEnded(err), err
		}
		received = true
		if md := msg.GetMetadata(); md != nil {
			if t := md.TotalSize; t != nil {
				if d.total != nil && *t != *d.total {
					return d.pos > start, fmt.Errorf("the log was %d bytes long and a resumed call says %d: %w", *d.total, *t, ErrProtocol)
				}
				d.total = t
			}
			d.res.Metadata = md
			if d.o.onMetadata != nil {
				d.o.onMetadata(md)
			}
		}
		if a := msg.GetAction(); a != nil {
			finished = a.GetFinished()
			d.setAction(a)
		}
		if err := d.write(msg, &next); err != nil {
			return d.pos > start, err
		}
	}
	progress = d.pos > start
	switch {
	case !received:
		return progress, fmt.Errorf("the stream ended OK without a message (the first one carries the log's metadata): %w", ErrProtocol)
	case d.pos == d.end:
		return progress, nil
	case d.total != nil && d.pos != rangeEnd(*d.total, d.end):
		return progress, fmt.Errorf("the stream ended OK at offset %d, the range ends at %d: %w", d.pos, rangeEnd(*d.total, d.end), ErrProtocol)
	case req.GetFollow() && !finished:
		return progress, fmt.Errorf("the followed stream ended OK at offset %d before the action finished: %w", d.pos, ErrProtocol)
	}
	return progress, nil
}

// write checks that msg holds the bytes at *next and writes those past
// d.pos.
func (d *download) write(msg *buildlogv1.DownloadTaskLogResponse, next *int64) error {
	data, at := msg.GetData(), msg.GetOffset()
	if at != *next {
		return fmt.Errorf("a message at offset %d where %d was expected: %w", at, *next, ErrProtocol)
	}
	if d.end >= 0 && at+int64(len(data)) > d.end {
		return fmt.Errorf("a message of %d bytes at offset %d, past the range's end at %d: %w", len(data), at, d.end, ErrProtocol)
	}
	*next += int64(len(data))
	if skip := d.pos - at; skip > 0 {
		data = data[min(skip, int64(len(data))):] // received before
	}
	if len(data) == 0 {
		return nil
	}
	n, err := d.w.Write(data)
	d.pos += int64(n)
	d.res.Written = d.pos - d.offset
	if err != nil {
		return fmt.Errorf("write the log: %w", err)
	}
	return nil
}

// setAction records a reported state, and passes it on when it is new.
func (d *download) setAction(a *buildlogv1.ActionState) {
	if d.res.Action != nil && proto.Equal(d.res.Action, a) {
		return
	}
	d.res.Action = a
	if d.o.onAction != nil {
		d.o.onAction(a)
	}
}

// rangeEnd is where a range ending at end (-1: the log's end) ends in a
// log of size total.
func rangeEnd(total, end int64) int64 {
	if end >= 0 {
		return min(total, end)
	}
	return total
}

// followEnded reports whether err is the server ending a followed call as
// it does regularly: at its follow time limit, or as it shuts down or the
// connection reaches its maximum age.
func followEnded(err error) bool {
	e, ok := api.FromError(err)
	return ok && (e.Reason == api.ReasonFollowTimeLimit || e.Reason == api.ReasonFollowInterrupted)
}

// resumeOffset is where to go on after err, having written up to pos: the
// error's resumeOffset, or pos when it has none.
func resumeOffset(err error, pos int64) (int64, error) {
	e, ok := api.FromError(err)
	if !ok {
		return pos, nil
	}
	s, ok := e.Metadata[api.MetadataResumeOffset]
	if !ok {
		return pos, nil
	}
	r, perr := strconv.ParseInt(s, 10, 64)
	if perr != nil || r < 0 || r > pos {
		return 0, fmt.Errorf("resumeOffset %q after %d bytes received (%v): %w", s, pos, err, ErrProtocol)
	}
	return r, nil
}

// backoff is the pause before a reconnect after failures calls in a row
// without progress, and at least the delay err's RetryInfo asks for.
func (o *options) backoff(failures int, err error) time.Duration {
	var d time.Duration
	if failures > 0 {
		d = o.maxBackoff
		if shift := failures - 1; shift < 32 && o.minBackoff<<shift < d {
			d = o.minBackoff << shift
		}
		d = d/2 + rand.N(d/2+1)
	}
	if e, ok := api.FromError(err); ok {
		d = max(d, e.RetryDelay)
	}
	return d
}

// sleep waits for d unless ctx ends first; it reports whether it waited.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
