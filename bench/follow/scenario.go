package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/buildlog/buildlog/bench/internal/tail"
	"github.com/buildlog/buildlog/client"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/internal/benchproc"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// spec describes one scenario: a running action, how its log grows, and
// who follows it.
type spec struct {
	name     string
	recordID string
	log      upstreamtest.Log // IgnoreRange and the like; Size is set from base
	base     int64            // bytes written before anyone follows
	every    time.Duration    // one line more every this long; 0: the log does not grow
	grpc     int              // followers over gRPC, on one connection
	rest     int              // followers over REST, each on a connection of its own
	// stagger spreads the followers' starts, this long apart, so that
	// their polls fall at different moments of the log's growth.
	stagger time.Duration
}

// scenario is a spec at work: its own buildlogd child, the action on the
// shared upstream, and its followers.
type scenario struct {
	spec
	srv       *benchproc.Process
	action    *upstreamtest.RunningAction
	lines     *lineLog
	conn      *grpc.ClientConn
	hc        *http.Client
	followers []*follower
	stopGrow  context.CancelFunc
	grown     sync.WaitGroup
	wg        sync.WaitGroup

	marks [3]mark // at the window's start, middle and end
}

// mark is what was counted at one moment of the window.
type mark struct {
	at  time.Time
	cpu time.Duration // buildlogd's
	up  map[string]counts
}

// lineLog is the growth of an action's log, line by line, and when each
// line was written.
type lineLog struct {
	mu     sync.Mutex
	action *upstreamtest.RunningAction
	width  int64 // bytes per line
	base   int64 // the log's size before the first line
	times  []time.Time
}

// grow writes one more line, noting the time.
func (l *lineLog) grow() {
	// The lock spans the write, so that a follower that got the line finds
	// its time.
	l.mu.Lock()
	defer l.mu.Unlock()
	l.times = append(l.times, time.Now())
	l.action.Grow(l.width)
}

// written returns the time line i was written.
func (l *lineLog) written(i int) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.times[i]
}

// follower is one followed download and what it saw.
type follower struct {
	transport string // "gRPC" or "REST"
	lines     *lineLog
	opened    chan struct{} // closed once it delivered its first bytes, or base bytes when base > 0
	base      int64

	done      chan struct{} // closed once it ended
	delivered atomic.Int64  // log bytes delivered, in order
	mu        sync.Mutex
	samples   []sample // one per line delivered
	err       error    // how it ended; read once done
}

// sample is the delivery of one line: when it arrived after it was written.
type sample struct {
	line    int
	latency time.Duration
}

// got accounts for a piece of the log that arrived.
func (f *follower) got(p tail.Piece) {
	end, delivered := p.Offset+int64(p.Len), f.delivered.Load()
	if p.Offset != delivered && p.Len > 0 {
		f.err = fmt.Errorf("piece at %d after %d bytes", p.Offset, delivered)
	}
	// The lines whose last byte lies in (delivered, end] arrived now.
	f.mu.Lock()
	for i := f.lineIndex(delivered); f.base+int64(i+1)*f.lines.width <= end; i++ {
		f.samples = append(f.samples, sample{i, p.At.Sub(f.lines.written(i))})
	}
	f.mu.Unlock()
	delivered = max(delivered, end)
	f.delivered.Store(delivered)
	if p.Len > 0 && delivered >= max(f.base, 1) {
		select {
		case <-f.opened:
		default:
			close(f.opened)
		}
	}
}

// lineIndex is the first line whose end lies past offset off.
func (f *follower) lineIndex(off int64) int {
	if off < f.base {
		return 0
	}
	return int((off - f.base) / f.lines.width)
}

// lineWidth is the width of the simulator's generated lines, newline
// included: they all have one.
func lineWidth() int64 {
	b := upstreamtest.Generate(4096, "INFO", task)
	return int64(bytes.IndexByte(b, '\n') + 1)
}

// start starts the scenario's buildlogd and action, grows the log, and
// opens its followers.
func (s *scenario) start(ctx context.Context, bin string, up *countedUpstream, flags []string) error {
	srv, err := benchproc.StartBuildlogd(bin, append([]string{"--upstream", up.URL}, flags...)...)
	if err != nil {
		return err
	}
	s.srv = srv
	width := lineWidth()
	log := s.log
	log.Size = s.base + 1<<30 // room to grow; the action finishes by Finish
	s.action = up.AddAction(s.recordID, task, upstreamtest.Action{Log: log})
	s.action.Grow(s.base)
	s.lines = &lineLog{action: s.action, width: width, base: s.base}
	s.conn, err = grpc.NewClient(srv.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()), client.WithChunkCodec())
	if err != nil {
		return err
	}
	s.hc = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: s.rest, DisableCompression: true}}

	growCtx, stop := context.WithCancel(ctx)
	s.stopGrow = stop
	if s.every > 0 {
		s.grown.Go(func() {
			t := time.NewTicker(s.every)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					s.lines.grow()
				case <-growCtx.Done():
					return
				}
			}
		})
	}

	target := tail.Target{RecordID: s.recordID, TaskName: task, Token: token}
	grpcClient := buildlogv1.NewBuildLogServiceClient(s.conn)
	for i, transport := range transports(s.grpc, s.rest) {
		f := &follower{transport: transport, lines: s.lines, opened: make(chan struct{}), done: make(chan struct{}), base: s.base}
		s.followers = append(s.followers, f)
		s.wg.Go(func() {
			defer close(f.done)
			if !sleep(ctx, time.Duration(i)*s.stagger) {
				f.err = ctx.Err()
				close(f.opened)
				return
			}
			var err error
			if f.transport == "gRPC" {
				err = tail.GRPC(ctx, grpcClient, target, f.got)
			} else {
				err = tail.REST(ctx, s.hc, srv.HTTPAddr, target, f.got)
			}
			f.err = errors.Join(f.err, err)
			select {
			case <-f.opened:
			default:
				close(f.opened) // it failed before: waiting on it must not hang
			}
		})
	}
	return nil
}

// transports returns the transports of grpc gRPC and rest REST
// followers, alternating while both last.
func transports(grpc, rest int) []string {
	var out []string
	for grpc > 0 || rest > 0 {
		if grpc > 0 {
			out, grpc = append(out, "gRPC"), grpc-1
		}
		if rest > 0 {
			out, rest = append(out, "REST"), rest-1
		}
	}
	return out
}

// ready waits until every follower delivered its first bytes (all of base
// when base > 0).
func (s *scenario) ready(ctx context.Context) error {
	for _, f := range s.followers {
		select {
		case <-f.opened:
		case <-ctx.Done():
			return fmt.Errorf("%s: followers not ready: %w", s.name, ctx.Err())
		}
	}
	return nil
}

// mark notes the upstream's counts and buildlogd's CPU: at the window's
// start (i 0), its middle (1) and its end (2).
func (s *scenario) mark(up *countedUpstream, i int) {
	s.marks[i] = mark{at: time.Now(), cpu: s.srv.CPU(), up: up.snapshot(s.recordID)}
}

// end stops the growth and finishes the action.
func (s *scenario) end() {
	s.stopGrow()
	s.grown.Wait()
	s.action.Finish()
}

// wait waits, up to d, for every follower to end after the action
// finished, which each should do OK with the whole log.
func (s *scenario) wait(d time.Duration) error {
	deadline := time.Now().Add(d)
	var errs []error
	open, whole := 0, 0
	for i, f := range s.followers {
		select {
		case <-f.done:
		case <-time.After(time.Until(deadline)):
		}
		select {
		case <-f.done:
		default:
			open++
			if f.delivered.Load() == s.action.Size() {
				whole++
			}
			continue
		}
		if f.err != nil {
			errs = append(errs, fmt.Errorf("%s: %s follower %d: %w", s.name, f.transport, i, f.err))
		}
		if n := f.delivered.Load(); n != s.action.Size() {
			errs = append(errs, fmt.Errorf("%s: %s follower %d delivered %d bytes of %d", s.name, f.transport, i, n, s.action.Size()))
		}
	}
	if open > 0 {
		errs = append(errs, fmt.Errorf("%s: %d of %d followers still open %s after the action finished (%d of them with the whole log)", s.name, open, len(s.followers), d, whole))
	}
	return errors.Join(errs...)
}

func (s *scenario) close() {
	if s.conn != nil {
		s.conn.Close()
	}
	if s.hc != nil {
		s.hc.CloseIdleConnections()
	}
	if s.srv != nil {
		s.srv.Stop()
	}
}

// latencies returns the delivery latencies of the lines written during the
// window to the followers over transport, sorted.
func (s *scenario) latencies(transport string) []time.Duration {
	var out []time.Duration
	for _, f := range s.followers {
		if f.transport != transport {
			continue
		}
		f.mu.Lock()
		for _, x := range f.samples {
			if t := s.lines.written(x.line); !t.Before(s.marks[0].at) && !t.After(s.marks[2].at) {
				out = append(out, x.latency)
			}
		}
		f.mu.Unlock()
	}
	slices.Sort(out)
	return out
}

// rate returns the upstream requests (or, with bodyBytes, the answers'
// body bytes) of route per minute between marks i and j, per follower
// when perFollower.
func (s *scenario) rate(route string, i, j int, perFollower, bodyBytes bool) float64 {
	a, b := s.marks[i].up[route], s.marks[j].up[route]
	d := float64(b.requests - a.requests)
	if bodyBytes {
		d = float64(b.bytes - a.bytes)
	}
	if perFollower {
		d /= float64(len(s.followers))
	}
	return d / s.marks[j].at.Sub(s.marks[i].at).Minutes()
}

// cpuPercent is buildlogd's CPU over the window, in percent of one core.
func (s *scenario) cpuPercent() float64 {
	m0, m2 := s.marks[0], s.marks[2]
	return 100 * float64(m2.cpu-m0.cpu) / float64(m2.at.Sub(m0.at))
}
