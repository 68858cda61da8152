// Package service implements buildlog.v1.BuildLogService: it validates a
// request, fetches the log from the upstream API with the caller's token and
// relays it as a stream of chunks, with backpressure from the caller down to
// the upstream connection.
//
// Import order of the repository's packages is one way: cmd → server →
// {gateway, service} → upstream; gen is a leaf. service declares the
// interface it needs from the upstream ([LogSource]); upstream never imports
// service.
package service

import (
	"context"
	"fmt"
	"io"
	"math"
	"mime"
	"path"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/upstream"
)

// Chunk sizes: the data carried by one stream message.
const (
	// DefaultChunkSize was chosen by measurement (go run ./bench and
	// go run ./bench/memory): against 64 KiB, it relays a 1 GiB log 15-30%
	// faster over REST and gRPC, with a quarter of the messages. Each
	// download holds a ring of two chunks (512 KiB); 48 slow readers peak
	// at 66 MiB against a 96 MiB target.
	DefaultChunkSize = 256 << 10
	// MinChunkSize and MaxChunkSize bound the setting; the maximum stays well
	// under gRPC's default 4 MiB message limit, which clients in every
	// language enforce.
	MinChunkSize = 1 << 10
	MaxChunkSize = 2 << 20
)

// smallRange is the size below which a range known to fit in one message
// gets a ring of its own size.
const smallRange = 32 << 10

// defaultContentType is the media type of a log whose upstream answer named
// none, or an invalid one.
const defaultContentType = "application/octet-stream"

// LogSource fetches action logs. *upstream.Client implements it.
type LogSource interface {
	DownloadTaskLog(ctx context.Context, req upstream.Request) (*upstream.Log, error)
}

// Server implements buildlogv1.BuildLogServiceServer.
type Server struct {
	buildlogv1.UnimplementedBuildLogServiceServer

	source    LogSource
	chunkSize int
	buffers   sync.Pool     // of *[]byte with len 2*chunkSize, the pumps' rings
	slots     chan struct{} // one per download in flight; nil: no limit
	codec     lendingCodec  // see ServerOption

	serverCredentials bool // see auth.go
}

// Option configures a [Server].
type Option func(*Server)

// WithChunkSize sets the largest data size of one stream message, between
// [MinChunkSize] and [MaxChunkSize]; the default is [DefaultChunkSize].
func WithChunkSize(n int) Option {
	return func(s *Server) { s.chunkSize = n }
}

// WithMaxDownloads caps the downloads in flight at n: a call beyond it fails
// at once with RESOURCE_EXHAUSTED rather than waiting in a queue. 0 (the
// default) sets no cap.
func WithMaxDownloads(n int) Option {
	return func(s *Server) {
		if n > 0 {
			s.slots = make(chan struct{}, n)
		}
	}
}

// New returns a service that fetches logs from source.
func New(source LogSource, opts ...Option) (*Server, error) {
	s := &Server{source: source, chunkSize: DefaultChunkSize}
	for _, opt := range opts {
		opt(s)
	}
	if s.chunkSize < MinChunkSize || s.chunkSize > MaxChunkSize {
		return nil, fmt.Errorf("chunk size %d is out of range [%d, %d]", s.chunkSize, MinChunkSize, MaxChunkSize)
	}
	s.buffers.New = func() any {
		// The pump's ring: room for the chunk being sent and the next.
		b := make([]byte, 2*s.chunkSize)
		return &b
	}
	return s, nil
}

// DownloadTaskLog implements buildlogv1.BuildLogServiceServer.
func (s *Server) DownloadTaskLog(req *buildlogv1.DownloadTaskLogRequest, stream grpc.ServerStreamingServer[buildlogv1.DownloadTaskLogResponse]) error {
	ctx := stream.Context()
	token, err := s.callerToken(ctx)
	if err == nil {
		err = validate(req)
	}
	if err == nil {
		err = s.withSlot(func() error { return s.relay(ctx, req, token, stream) })
	}
	if err != nil {
		return toStatus(ctx, err).Err()
	}
	return nil
}

// withSlot runs f in one of the download slots, or fails at once when all
// are taken.
func (s *Server) withSlot(f func() error) error {
	if s.slots == nil {
		return f()
	}
	select {
	case s.slots <- struct{}{}:
	default:
		return &overloadedError{limit: cap(s.slots)}
	}
	defer func() { <-s.slots }()
	return f()
}

// relay fetches the log and sends the requested range of it. Memory is the
// pump's ring of two chunks, reused across downloads: the messages sent
// hold parts of it until they are on the wire, and Send blocks while the
// caller's flow-control window is full, so a slow caller slows the upstream
// read instead of filling memory.
func (s *Server) relay(ctx context.Context, req *buildlogv1.DownloadTaskLogRequest, token string, stream grpc.ServerStreamingServer[buildlogv1.DownloadTaskLogResponse]) error {
	offset := req.GetOffset()
	// The upstream request has its own cancel, to release a read the pump
	// is blocked in when the relay ends first.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	log, err := s.source.DownloadTaskLog(ctx, upstream.Request{
		RecordID: req.GetRecordId(),
		TaskName: req.GetTaskName(),
		LogLevel: upstreamLogLevel(req.GetLogLevel()),
		Token:    token,
		Offset:   offset,
		Limit:    req.GetLimit(),
	})
	if err != nil {
		return err
	}
	defer log.Body.Close()
	interrupted := func(at int64, err error) error {
		return &interruptedError{resumeOffset: at, requestID: log.RequestID, err: err}
	}

	if log.Size >= 0 && offset > log.Size {
		return &offsetError{offset: offset, size: log.Size}
	}

	remaining := req.GetLimit()
	if remaining == 0 {
		remaining = math.MaxInt64
	}
	// The metadata is read before the pump starts: a resumption updates
	// log.RequestID from the pump's goroutine.
	resp := &buildlogv1.DownloadTaskLogResponse{Offset: offset, Metadata: logMetadata(req, log)}
	var (
		p    *pump
		bufp *[]byte // the ring, when it came from the pool
	)
	switch n := min(log.Size-offset, remaining); {
	case log.Size >= 0 && n < smallRange:
		// A ring of the range's size, cheaper than a pooled one the
		// garbage collector may have dropped.
		p = readInline(log.Body, make([]byte, max(n, 1)))
	case log.Size >= 0 && n <= int64(s.chunkSize):
		bufp = s.buffers.Get().(*[]byte)
		// The range fits in one message: reading ahead of it gains
		// nothing. (What has arrived is still sent as it arrives.)
		p = readInline(log.Body, *bufp)
	default:
		bufp = s.buffers.Get().(*[]byte)
		p = startPump(log.Body, *bufp)
	}
	ln := &loan{}
	s.codec.loans.Store(resp, ln)
	stopAbort := context.AfterFunc(ctx, func() { p.abort(ctx.Err()) })
	defer func() {
		stopAbort()
		s.codec.loans.Delete(resp)
		cancel() // releases a read waiting on the upstream
		// The ring goes back to the pool once gRPC has freed every
		// message that still holds a part of it.
		p.stop(func() {
			if bufp != nil {
				s.buffers.Put(bufp)
			}
		})
	}()

	pos := offset
	for remaining > 0 {
		data, rerr := p.next(min(int64(s.chunkSize), remaining))
		if len(data) > 0 {
			resp.Data, resp.Offset = data, pos
			// The data is lent to the codec for this Send. If the codec
			// copied it instead (see codec.go), Send has encoded the message
			// before it returns, and the bytes go back to the reader now.
			ln.data, ln.region, ln.taken = data, p.lend(len(data)), false
			err := stream.Send(resp)
			if !ln.taken {
				ln.region.release()
			}
			ln.data, ln.region = nil, nil
			if err != nil {
				return err
			}
			resp.Metadata = nil
			pos += int64(len(data))
			remaining -= int64(len(data))
			continue
		}
		if rerr == io.EOF {
			if log.Size >= 0 && pos != log.Size && remaining > 0 {
				return interrupted(pos, io.ErrUnexpectedEOF)
			}
			break
		}
		return interrupted(pos, rerr)
	}
	if resp.Metadata != nil {
		// Nothing was sent: the range is empty. One message still carries the
		// metadata, so callers always learn what the log is.
		resp.Data = nil
		return stream.Send(resp)
	}
	return nil
}

func upstreamLogLevel(l buildlogv1.LogLevel) string {
	switch l {
	case buildlogv1.LogLevel_LOG_LEVEL_INFO:
		return "INFO"
	case buildlogv1.LogLevel_LOG_LEVEL_DEBUG:
		return "DEBUG"
	}
	return ""
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
