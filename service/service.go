// Package service is buildlog's download core: it authenticates a caller,
// validates the request, admits the download, fetches the log from the
// upstream API (with retries and resumption) and hands its bytes out chunk
// by chunk, with backpressure from the caller down to the upstream
// connection. It knows nothing of the transports: the gRPC service
// (package server) and the REST mirror (package gateway) are adapters that
// translate a request into a [Request], each [Chunk] into a message or
// body bytes, and the [api.Error] a download fails with into a gRPC status
// or an HTTP answer.
//
// Imports point one way: cmd → server → gateway → service → upstream, and
// each of them → api → gen. service declares the interface it needs from
// the upstream ([LogSource]); upstream never imports service.
package service

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/buildlog/buildlog/api"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/upstream"
)

// Chunk sizes: the data carried by one stream message.
const (
	// DefaultChunkSize was chosen by measurement (bench/README.md).
	DefaultChunkSize = 256 << 10
	// MinChunkSize and MaxChunkSize bound the setting; the maximum stays
	// well under gRPC's default 4 MiB message limit, which clients in every
	// language enforce.
	MinChunkSize = 1 << 10
	MaxChunkSize = 2 << 20
)

// LogSource fetches action logs. *upstream.Client implements it.
type LogSource interface {
	DownloadTaskLog(ctx context.Context, req upstream.Request) (*upstream.Log, error)
	// ActionStatus tells whether the log's action has finished, for
	// followed downloads.
	ActionStatus(ctx context.Context, req upstream.Request) (*upstream.Action, error)
}

// Service runs downloads. It is safe for concurrent use.
type Service struct {
	source    LogSource
	chunkSize int
	rings     sync.Pool     // of *[]byte with len 2*chunkSize, the pumps' rings
	slots     chan struct{} // one per download in flight; nil: no limit
	observer  Observer
	// callers decides who may use the server's own credentials (see
	// caller.go); nil: nobody.
	callers *callerAuth
	// callerIdle ends a download whose caller accepts no bytes this long;
	// 0 never does.
	callerIdle time.Duration
	// follow is how followed downloads poll (follow.go).
	follow followPolicy
	// ending is cancelled by EndFollows: followed downloads end at once.
	ending    context.Context
	endFollow context.CancelFunc
	// sharing, when shared reads are on, is source's decorator that
	// shares reads of one log between callers (shared.go).
	sharing           *sharing
	sharedReauthorize time.Duration
}

// Option configures a [Service].
type Option func(*Service)

// WithChunkSize sets the largest data size of one chunk, between
// [MinChunkSize] and [MaxChunkSize]; the default is [DefaultChunkSize].
func WithChunkSize(n int) Option {
	return func(s *Service) { s.chunkSize = n }
}

// WithMaxDownloads caps the downloads in flight at n: a download beyond it
// fails at once with RESOURCE_EXHAUSTED rather than waiting in a queue. 0
// (the default) sets no cap.
func WithMaxDownloads(n int) Option {
	return func(s *Service) {
		if n > 0 {
			s.slots = make(chan struct{}, n)
		}
	}
}

// WithObserver sets who hears of every download (the access log,
// metrics); the default hears nothing.
func WithObserver(o Observer) Option {
	return func(s *Service) { s.observer = o }
}

// WithCallerIdleTimeout ends a download whose caller has accepted no bytes
// for d, so that it frees its slot; time spent waiting for the upstream
// does not count. 0 (the default) waits for ever.
func WithCallerIdleTimeout(d time.Duration) Option {
	return func(s *Service) { s.callerIdle = d }
}

// New returns a service that fetches logs from source.
func New(source LogSource, opts ...Option) (*Service, error) {
	s := &Service{source: source, chunkSize: DefaultChunkSize, observer: nopObserver{},
		follow: followPolicy{interval: DefaultFollowPollInterval, maxDuration: DefaultFollowMaxDuration}}
	s.ending, s.endFollow = context.WithCancel(context.Background())
	for _, opt := range opts {
		opt(s)
	}
	if err := s.follow.check(); err != nil {
		return nil, err
	}
	if s.chunkSize < MinChunkSize || s.chunkSize > MaxChunkSize {
		return nil, fmt.Errorf("chunk-size %d is out of range: use %d to %d bytes", s.chunkSize, MinChunkSize, MaxChunkSize)
	}
	if s.callerIdle < 0 {
		return nil, fmt.Errorf("caller-idle-timeout must not be negative, got %s", s.callerIdle)
	}
	if s.sharedReauthorize < 0 {
		return nil, fmt.Errorf("shared-reauthorize must not be negative, got %s", s.sharedReauthorize)
	}
	if s.sharedReauthorize > 0 {
		s.sharing = newSharing(s.source, s.chunkSize, s.follow.interval, s.sharedReauthorize)
		s.source = s.sharing
	}
	s.rings.New = func() any {
		// The pump's ring: room for the chunk being sent and the next.
		b := make([]byte, 2*s.chunkSize)
		return &b
	}
	return s, nil
}

// Transport names the way a download's caller came: a label of the access
// log and metrics.
type Transport string

// The transports.
const (
	GRPC Transport = "grpc"
	REST Transport = "rest"
)

// Request is one download, as its transport received it.
type Request struct {
	// Message names the log and the byte range of it; Open validates it.
	Message *buildlogv1.DownloadTaskLogRequest
	// Invalid lists problems the transport found while reading the request
	// (a query parameter that does not parse); Open reports them with its
	// own.
	Invalid []Violation
	// Caller is who asks.
	Caller Caller
	// Transport labels the download in the access log and metrics.
	Transport Transport
	// Probe asks only for the log's metadata (a REST HEAD): the upstream is
	// asked for as few bytes as it allows, and no chunk is handed out.
	Probe bool
	// Interrupt, when set, makes a write to the caller that is blocked (the
	// caller reads nothing) return, so that the download can end: see
	// [WithCallerIdleTimeout]. It may be called from another goroutine.
	Interrupt func()
	// FollowUntil, when not zero, is when a followed download must end,
	// with a status that asks the caller to resume: the transport closes
	// the connection then (its maximum age).
	FollowUntil time.Time
}

// Observer hears of downloads, for the access log and metrics. Its methods
// are called on the download's goroutine: they must be cheap and safe for
// concurrent use. Nothing passed to them holds a secret.
type Observer interface {
	// Relayed reports n more bytes handed to a caller of transport t.
	Relayed(t Transport, n int)
	// Started reports a download admitted; every Started has its Ended.
	Started(t Transport)
	// Ended reports a download over, or refused (then without Started).
	Ended(ctx context.Context, e *Ended)
}

// Ended describes a download that is over.
type Ended struct {
	Transport Transport
	Request   *buildlogv1.DownloadTaskLogRequest
	// Err is how it failed, nil when the caller received the whole range.
	Err      *api.Error
	Bytes    int64
	Duration time.Duration
	// RequestID is the upstream's id of its answer, when known.
	RequestID string
	// Admitted is false for a download refused before it took a slot.
	Admitted bool
	// Abandoned is set for a download its transport opens again otherwise
	// (Download.Abandon): not one of its own for the access log.
	Abandoned bool
}

type nopObserver struct{}

func (nopObserver) Relayed(Transport, int)        {}
func (nopObserver) Started(Transport)             {}
func (nopObserver) Ended(context.Context, *Ended) {}
