package service

import (
	"context"
	"errors"
	"io"
	"math"
	"mime"
	"path"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/buildlog/buildlog/api"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/upstream"
)

// smallRange is the size below which a range known to fit in one chunk
// gets a ring of its own size, cheaper than a pooled one the garbage
// collector may have dropped.
const smallRange = 32 << 10

// defaultContentType is the media type of a log whose upstream answer named
// none, or an invalid one.
const defaultContentType = "application/octet-stream"

// Download is one download in progress. Its caller pulls the log's chunks
// with Next, in order, and ends it with Close. A Download is used by one
// goroutine.
type Download struct {
	s     *Service
	req   Request
	ctx   context.Context // the caller's
	start time.Time

	// followCtx is ctx, and for a followed download also ended by
	// Service.EndFollows; upstream requests and waits run under it.
	followCtx  context.Context
	stopFollow func()
	follow     *follower // nil unless the download follows (follow.go)

	// Set by Open once the upstream has answered.
	meta      *buildlogv1.LogMetadata
	offset    int64 // where the range starts
	pos       int64 // the log offset of the next chunk
	out       int64 // the log offset of the chunk last handed out
	remaining int64 // bytes of the range not yet handed out
	size      int64 // the whole log's size, -1 unknown (or growing)
	admitted  bool

	// The segment being read: one upstream answer (a download that does
	// not follow has one).
	cancel    context.CancelFunc // ends the upstream request
	body      io.Closer
	pump      *pump
	ring      *[]byte     // from s.rings; nil for a ring of the range's size
	segStart  int64       // the log offset the segment starts at
	segSize   int64       // the log's size as the segment's answer gave it, -1 unknown
	stopAbort func() bool // stops aborting the pump when the caller leaves

	idle *time.Timer // the caller idle timeout, while a chunk is out
	// idleMu orders the timeout's interrupt with Close: no interrupt runs
	// once the download is closed, when its transport may be gone.
	idleMu     sync.Mutex
	idleFired  bool
	idleClosed bool
	lentPump   *pump // the pump whose lent ring Next waits for (waitForCaller)
	ended      *api.Error
	done       bool
	abandoned  bool
}

// Chunk is a piece of the log, lent to the caller of Next until Release.
type Chunk struct {
	// Data are the bytes; Offset is the log offset of Data[0].
	Data   []byte
	Offset int64
	// Action, on a followed download only, is the action's state when it
	// is new to the caller: on the first chunk, the first after it
	// changed, and the last, which has no Data, when the action finished.
	// A chunk may carry an Action and no Data.
	Action *buildlogv1.ActionState
	region *region
}

// Release gives the chunk's bytes back to the download, to be overwritten:
// call it once they are written or copied, from any goroutine; a second
// call does nothing. The download's buffer is reused only once every chunk
// handed out was released, Close or not.
func (c Chunk) Release() {
	if c.region != nil {
		c.region.release()
	}
}

// Open starts a download: it authenticates the caller, validates the
// request, takes a download slot and opens the log upstream, with retries.
// On success its metadata is known, and the caller must Close it. The
// error is an *api.Error.
func (s *Service) Open(ctx context.Context, req Request) (*Download, error) {
	d := &Download{s: s, req: req, ctx: ctx, start: time.Now()}
	if err := d.open(); err != nil {
		return nil, d.Close(err)
	}
	return d, nil
}

func (d *Download) open() error {
	s, m := d.s, d.req.Message
	token, err := s.callerToken(d.req.Caller)
	if err != nil {
		return err
	}
	if err := validate(m, d.req.Invalid); err != nil {
		return err
	}
	if s.slots != nil {
		select {
		case s.slots <- struct{}{}:
		default:
			return overloadedError(cap(s.slots))
		}
	}
	d.admitted = true
	s.observer.Started(d.req.Transport)

	d.offset, d.pos = m.GetOffset(), m.GetOffset()
	d.remaining = m.GetLimit()
	if d.remaining == 0 {
		d.remaining = math.MaxInt64
	}
	ureq := upstream.Request{
		RecordID: m.GetRecordId(),
		TaskName: m.GetTaskName(),
		LogLevel: upstreamLogLevel(m.GetLogLevel()),
		Token:    token,
		Offset:   d.offset,
		Limit:    m.GetLimit(),
	}
	if d.req.Probe {
		ureq.Limit = 1 // the answer's headers are what is wanted
	}
	d.followCtx = d.ctx
	if m.GetFollow() {
		ctx, cancel := context.WithCancel(d.ctx)
		stop := context.AfterFunc(s.ending, cancel)
		d.followCtx, d.stopFollow = ctx, func() { stop(); cancel() }
		if err := d.startFollow(ureq); err != nil {
			return d.followErrOr(err)
		}
		ureq = d.follow.ureq
	}
	log, err := d.request(ureq)
	if err != nil {
		return d.followErrOr(err)
	}
	d.size = log.Size
	if log.Size >= 0 && d.offset > log.Size && (d.follow == nil || d.follow.final) {
		log.Body.Close()
		return offsetError(d.offset, log.Size)
	}
	// The metadata is read before the pump starts: a resumption updates
	// log.RequestID from the pump's goroutine.
	d.meta = logMetadata(m, log)
	if f := d.follow; f != nil {
		f.seen = log.Size
		if !f.final {
			// The log grows: its size is not known yet.
			d.size, d.meta.TotalSize = -1, nil
		}
	}
	if d.req.Probe {
		d.body = log.Body
		return nil
	}
	d.startSegment(log)
	return nil
}

// request asks the upstream for a segment of the log, under a context of
// its own: cancelling it releases a read the pump is blocked in.
func (d *Download) request(ureq upstream.Request) (*upstream.Log, error) {
	ctx, cancel := context.WithCancel(d.followCtx)
	if err := ctx.Err(); err != nil {
		cancel()
		return nil, err // the caller left: its request is never sent
	}
	log, err := d.s.source.DownloadTaskLog(ctx, ureq)
	if err != nil {
		cancel()
		return nil, err
	}
	d.cancel = cancel
	return log, nil
}

// startSegment starts reading an upstream answer from d.pos, with a pump
// and a ring fit for what it holds; an answer with nothing in range gets
// neither.
func (d *Download) startSegment(log *upstream.Log) {
	s := d.s
	d.body, d.segStart, d.segSize = log.Body, d.pos, log.Size
	switch n := min(log.Size-d.pos, d.remaining); {
	case log.Size >= 0 && n <= 0:
		d.endSegment() // nothing (new) to read
		return
	case log.Size >= 0 && n < smallRange:
		d.pump = readInline(log.Body, make([]byte, n))
	case isShared(log.Body):
		// The shared read's window reads ahead for it: a ring of one
		// chunk, read on the relay's goroutine, is enough.
		d.ring = s.sharing.blocks.Get().(*[]byte)
		d.pump = readInline(log.Body, *d.ring)
	case log.Size >= 0 && n <= int64(s.chunkSize):
		// The range fits in one chunk: reading ahead of it gains nothing.
		// (What has arrived is still handed out as it arrives.)
		d.ring = s.rings.Get().(*[]byte)
		d.pump = readInline(log.Body, *d.ring)
	default:
		d.ring = s.rings.Get().(*[]byte)
		d.pump = startPump(log.Body, *d.ring)
	}
	// When the caller leaves (or follows end), a Next waiting for room in
	// the ring returns: chunks handed to a stalled transport may never be
	// released.
	p, ctx := d.pump, d.followCtx
	d.stopAbort = context.AfterFunc(ctx, func() { p.abort(ctx.Err()) })
}

// endSegment releases the segment's upstream request at once, and its
// ring once every chunk lent from it is released.
func (d *Download) endSegment() {
	if d.cancel != nil {
		d.cancel() // releases a read waiting on the upstream
		d.cancel = nil
	}
	if d.pump != nil {
		// Stopped and dropped: the stop function holds the pump, and with
		// it the ring, for as long as the download lives.
		d.stopAbort()
		d.stopAbort = nil
		ring := d.ring
		d.pump.stop(func() {
			if ring != nil {
				d.s.putRing(ring)
			}
		})
		d.pump, d.ring = nil, nil
	}
	if d.body != nil {
		d.body.Close()
		d.body = nil
	}
}

// Metadata describes the log: its media type, file name, size when the
// upstream announced it, and the upstream's request id.
func (d *Download) Metadata() *buildlogv1.LogMetadata { return d.meta }

// Action is the state of a followed download's action as it was last
// asked; nil when the download does not follow.
func (d *Download) Action() *buildlogv1.ActionState {
	if d.follow == nil {
		return nil
	}
	return d.follow.action
}

// Offset is where the requested range starts.
func (d *Download) Offset() int64 { return d.offset }

// Length is how many bytes the requested range holds, -1 when the log's
// size is unknown.
func (d *Download) Length() int64 {
	if d.size < 0 {
		return -1
	}
	return min(max(d.size-d.offset, 0), d.remaining)
}

// Next returns the next chunk of the range, up to the chunk size, as soon
// as some bytes of it have arrived; io.EOF once the whole range was handed
// out (and, when following, the action finished). Any other error ends the
// download: pass it to Close.
func (d *Download) Next() (Chunk, error) {
	d.waitForCaller()
	if d.stopIdle() {
		// The timeout fired as the caller took the last chunk: it is over.
		return Chunk{}, callerIdleError(d.s.callerIdle, d.pos)
	}
	for d.remaining > 0 {
		if d.pump == nil {
			if d.follow == nil || d.req.Probe {
				break // an empty range, or a probe
			}
			c, err := d.between()
			if err != nil {
				return Chunk{}, err
			}
			if c.Action != nil {
				d.out = d.pos
				d.startIdle()
				return c, nil
			}
			continue
		}
		data, err := d.pump.next(min(int64(d.s.chunkSize), d.remaining))
		if len(data) > 0 {
			c := Chunk{Data: data, Offset: d.pos, Action: d.follow.take(), region: d.pump.lend(len(data))}
			d.out = d.pos
			d.pos += int64(len(data))
			d.remaining -= int64(len(data))
			d.s.observer.Relayed(d.req.Transport, len(data))
			d.startIdle()
			return c, nil
		}
		if err != nil && err != io.EOF {
			return Chunk{}, d.followErrOr(&interruptedError{resumeOffset: d.pos, requestID: d.meta.GetRequestId(), err: err})
		}
		if d.segSize >= 0 && (d.pos < d.segSize || d.follow == nil && d.pos != d.segSize) {
			return Chunk{}, &interruptedError{resumeOffset: d.pos, requestID: d.meta.GetRequestId(), err: io.ErrUnexpectedEOF}
		}
		if d.follow == nil {
			break
		}
		grew := d.pos > d.segStart
		d.endSegment()
		d.follow.segmentOver(grew, d.s.follow.interval)
	}
	d.remaining = 0
	return Chunk{}, io.EOF
}

// Close ends the download and returns what its caller is to be told: nil
// when err is nil (the range was delivered in full), else err as an
// *api.Error, such as the one Next returned or a failure to write to the
// caller. It releases the download's slot and upstream request at once,
// and its buffer once every chunk is released. Later calls return the same.
func (d *Download) Close(err error) error {
	if d.done {
		return errorOrNil(d.ended)
	}
	d.done = true
	fired := d.stopIdle()
	d.idleMu.Lock()
	d.idleClosed, fired = true, fired || d.idleFired
	d.idleMu.Unlock()
	var e *api.Error
	switch {
	case err == nil:
	case errors.As(err, &e) && e.Reason == api.ReasonCallerIdle:
		d.ended = e // from Next
	case fired:
		// The chunk out when the timeout fired was not accepted: the
		// caller resumes at its first byte.
		d.ended = callerIdleError(d.s.callerIdle, d.out)
	default:
		d.ended = toError(d.ctx, err)
	}
	if d.follow != nil && d.ended != nil && d.admitted {
		d.ended = withResumeOffset(d.ended, d.pos)
	}
	d.endSegment()
	if d.stopFollow != nil {
		d.stopFollow()
	}
	if d.admitted && d.s.slots != nil {
		<-d.s.slots
	}
	d.s.observer.Ended(d.ctx, &Ended{
		Transport: d.req.Transport,
		Request:   d.req.Message,
		Err:       d.ended,
		Bytes:     d.pos - d.offset,
		Duration:  time.Since(d.start),
		RequestID: d.meta.GetRequestId(),
		Admitted:  d.admitted,
		Abandoned: d.abandoned,
	})
	return errorOrNil(d.ended)
}

// Abandon ends the download as Close does, for a transport that opens
// the log again otherwise (a Range that the log's unknown size cannot
// answer is served as the whole log): the observer hears of it as
// abandoned, so that one request makes one access log line.
func (d *Download) Abandon() {
	d.abandoned = true
	d.Close(nil)
}

// errorOrNil keeps a nil *api.Error from becoming a non-nil error.
func errorOrNil(e *api.Error) error {
	if e == nil {
		return nil
	}
	return e
}

// upstreamLogLevel is the upstream's spelling of l, "" for its default.
func upstreamLogLevel(l buildlogv1.LogLevel) string {
	if l == buildlogv1.LogLevel_LOG_LEVEL_UNSPECIFIED {
		return ""
	}
	return strings.TrimPrefix(l.String(), "LOG_LEVEL_")
}

// logMetadata describes the log for the first message.
func logMetadata(req *buildlogv1.DownloadTaskLogRequest, log *upstream.Log) *buildlogv1.LogMetadata {
	md := &buildlogv1.LogMetadata{
		ContentType: defaultContentType,
		FileName:    fileName(log.FileName, req.GetRecordId()+"-"+req.GetTaskName()+".log"),
		RequestId:   log.RequestID,
	}
	if mt, params, err := mime.ParseMediaType(log.ContentType); err == nil {
		if ct := mime.FormatMediaType(mt, params); ct != "" {
			md.ContentType = ct
		}
	}
	if log.Size >= 0 {
		md.TotalSize = proto.Int64(log.Size)
	}
	return md
}

// maxFileName is the longest file name most file systems accept, in bytes.
const maxFileName = 255

// fileName returns a safe plain file name: the last path element of name (or
// fallback when name has none), with characters outside [A-Za-z0-9._-]
// replaced by "_" and no leading dot.
func fileName(name, fallback string) string {
	base := path.Base(strings.ReplaceAll(name, `\`, "/"))
	if name == "" || base == "." || base == ".." || base == "/" {
		base = fallback
	}
	var b strings.Builder
	for _, r := range base {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		case r == '.' && b.Len() > 0:
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
		if b.Len() >= maxFileName {
			break
		}
	}
	return b.String()
}

// putRing gives a ring back to its pool.
func (s *Service) putRing(ring *[]byte) {
	if len(*ring) == s.chunkSize {
		s.sharing.blocks.Put(ring) // a download riding a shared read
		return
	}
	s.rings.Put(ring)
}
