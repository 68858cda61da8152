package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// ChangedError reports that the log changed while it was being downloaded:
// a resumed request found a different size or version, so the bytes already
// delivered and the rest cannot be joined. The caller must start over.
type ChangedError struct {
	// Offset is where the download was resumed.
	Offset int64
	// Problem says what differed.
	Problem string
}

func (e *ChangedError) Error() string {
	return fmt.Sprintf("the log changed during the download (resuming at byte %d: %s)", e.Offset, e.Problem)
}

// resumingBody is a log body that survives breaks: when a read fails (a
// reset, a body shorter than announced, an idle timeout), it asks the
// upstream for the rest with "Range: bytes=N-" and goes on, so the reader
// sees one uninterrupted stream. It never joins two versions of a log: the
// resumed answer must describe the same log (size and validator), or Read
// fails with a *ChangedError.
type resumingBody struct {
	c   *Client
	ctx context.Context // the caller's: when it ends, nothing resumes
	req Request         // the original request
	log *Log            // the first answer (its size and version), whose RequestID follows resumptions

	body    io.ReadCloser
	pos     int64 // log offset of body's next byte
	resumes int
	broken  error // the read error to recover from before the next read
}

func newResumingBody(ctx context.Context, c *Client, req Request, log *Log) *resumingBody {
	return &resumingBody{c: c, ctx: ctx, req: req, log: log, body: log.Body, pos: req.Offset}
}

func (b *resumingBody) Read(p []byte) (int, error) {
	for {
		if b.broken != nil {
			if err := b.resume(); err != nil {
				return 0, err
			}
		}
		n, err := b.body.Read(p)
		b.pos += int64(n)
		if err == nil || err == io.EOF || !b.canResume() {
			return n, err
		}
		b.broken = err
		if n > 0 {
			return n, nil
		}
	}
}

func (b *resumingBody) Close() error { return b.body.Close() }

// canResume reports whether a broken body may be resumed: the caller is
// still waiting, and the policy allows another resumption.
func (b *resumingBody) canResume() bool {
	return b.ctx.Err() == nil && b.resumes < b.c.retry.MaxResumes
}

// resume replaces the broken body with the rest of the log from b.pos
// (open skips there when the upstream ignores the Range).
func (b *resumingBody) resume() error {
	broken := b.broken
	b.broken = nil
	b.body.Close()
	b.body = http.NoBody
	b.resumes++
	b.c.observer.Resume(b.pos)

	req := b.req
	req.Offset = b.pos
	if b.req.Limit > 0 {
		req.Limit = max(b.req.Offset+b.req.Limit-b.pos, 1)
	}
	log, err := b.c.openWithRetry(b.ctx, req)
	if err != nil {
		var protoErr *ProtocolError
		if errors.As(err, &protoErr) {
			// Such as a Content-Range that does not answer the Range: the log
			// may have been replaced.
			return &ChangedError{Offset: b.pos, Problem: protoErr.Problem}
		}
		return fmt.Errorf("%w; resuming at byte %d failed: %w", broken, b.pos, err)
	}
	if err := b.sameLog(log); err != nil {
		log.Body.Close()
		return err
	}
	b.body = log.Body
	b.log.RequestID = log.RequestID // the answer now read, for diagnostics
	return nil
}

// sameLog checks that a resumed answer describes the log being downloaded.
func (b *resumingBody) sameLog(log *Log) error {
	return Continues(b.log, log, b.pos, b.req.Growing)
}

// Continues checks that next, an answer for the same log from offset pos,
// describes the log that was answered: the same size and ETag or
// Last-Modified, or for a log that grows (growing) one no shorter than
// pos. It returns a [*ChangedError] otherwise: the bytes before pos and
// after it cannot be joined.
func Continues(was, next *Log, pos int64, growing bool) error {
	switch {
	case growing && next.Size >= 0 && next.Size < pos:
		return &ChangedError{Offset: pos, Problem: fmt.Sprintf("it is now %d bytes long", next.Size)}
	case growing:
		return nil // it grows, so its size and version change
	case was.Size >= 0 && next.Size >= 0 && next.Size != was.Size:
		return &ChangedError{Offset: pos, Problem: fmt.Sprintf("its size was %d bytes and is now %d", was.Size, next.Size)}
	case next.Size >= 0 && next.Size < pos:
		return &ChangedError{Offset: pos, Problem: fmt.Sprintf("it is now %d bytes long", next.Size)}
	case was.version != "" && next.version != "" && next.version != was.version:
		return &ChangedError{Offset: pos, Problem: "its ETag or Last-Modified changed"}
	}
	return nil
}
