// Command follow measures buildlogd's live tail (follow=true) on real
// buildlogd processes in front of the simulated upstream, at the server's
// default --follow-poll-interval (2 s) unless -poll-interval says
// otherwise:
//
//   - tail latency: an action whose log grows by one line every
//     -line-every (250 ms), written by this program so that it knows when
//     each line appeared upstream, followed by -grpc gRPC and -rest REST
//     followers; the latency of a line is the time its last byte reached a
//     follower minus the time it was written (the followers start spread
//     over one poll interval, so that their polls fall at different
//     moments of a line's life). p50 and p99 per transport, against the
//     goal p99 ≤ poll interval + 100 ms;
//   - upstream requests per follower-minute, by route (task-log,
//     full-stages): while the log grows (the tail latency run) and, at the
//     same time on another buildlogd, while a running action's log does not
//     grow at all;
//   - the cost of skipping on an upstream that ignores Range: one follower
//     of a log with -skip-size (64 MiB) already written that then grows by
//     a line every -skip-line-every (1 s), upstream body bytes and polls per
//     minute, against the same log with Range honoured.
//
// Each scenario has a buildlogd child of its own, so that its CPU is its
// own; the upstream (with a counter of requests and body bytes by record
// and route in front of it) and the followers run in this process. After
// each window the actions finish, and every follower must then end OK
// with the whole log. It prints markdown tables, and exits 1 when the
// latency goal is missed. Run it from the repository root:
//
//	go run ./bench/follow [-duration 60s] [-skip-duration 60s] [-grpc 10] [-rest 10]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"time"

	"github.com/buildlog/buildlog/internal/benchproc"
	"github.com/buildlog/buildlog/service"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

const (
	task  = "stage1"
	token = "bench-token"
)

// Record ids of the scenarios' actions.
const (
	tailRecord       = "f0110000-0000-4000-8000-000000000001"
	idleRecord       = "f0110000-0000-4000-8000-000000000002"
	skipIgnoreRecord = "f0110000-0000-4000-8000-000000000003"
	skipRangeRecord  = "f0110000-0000-4000-8000-000000000004"
)

// latencySlack is what the goal allows beyond the poll interval.
const latencySlack = 100 * time.Millisecond

type options struct {
	duration, skipDuration time.Duration
	lineEvery, skipEvery   time.Duration
	pollInterval           time.Duration
	grpc, rest             int
	skipSize               int64
}

func main() {
	var o options
	flag.DurationVar(&o.duration, "duration", time.Minute, "length of the tail latency and idle window")
	flag.DurationVar(&o.skipDuration, "skip-duration", time.Minute, "length of the window of the Range skipping runs")
	flag.DurationVar(&o.lineEvery, "line-every", 250*time.Millisecond, "how often the tail latency run's log grows by a line")
	flag.DurationVar(&o.skipEvery, "skip-line-every", time.Second, "how often the skipping runs' logs grow by a line")
	flag.DurationVar(&o.pollInterval, "poll-interval", 0, "buildlogd's --follow-poll-interval; 0 for its default")
	flag.IntVar(&o.grpc, "grpc", 10, "gRPC followers of the tail latency run, and of the idle one")
	flag.IntVar(&o.rest, "rest", 10, "REST followers of the tail latency run, and of the idle one")
	flag.Int64Var(&o.skipSize, "skip-size", 64<<20, "bytes of the skipping runs' logs written before they are followed")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "follow:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	interval := service.DefaultFollowPollInterval
	var flags []string
	if o.pollInterval > 0 {
		interval = o.pollInterval
		flags = append(flags, "--follow-poll-interval", o.pollInterval.String())
	}
	up, err := startUpstream()
	if err != nil {
		return err
	}
	defer up.Close()
	up.AddToken(token)
	dir, err := os.MkdirTemp("", "buildlog-follow")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin, err := benchproc.Build(dir)
	if err != nil {
		return err
	}
	// After the action finished, a follower may wait out a poll that still
	// finds bytes, one that finds none, then one that asks the state: a
	// follower that saw nothing new backs off to 3 intervals, and one that
	// skipped n bytes waits n / 8 MiB/s.
	drain := 3*interval + 2*time.Duration(o.skipSize/(8<<20))*time.Second + 10*time.Second

	fmt.Fprintf(os.Stderr, "follow: tail latency and idle runs, %s…\n", o.duration)
	lines := 16 * lineWidth()
	tailRun, tailEnd, err := runPhase(ctx, bin, up, flags, o.duration, drain, nil,
		spec{name: "tail", recordID: tailRecord, every: o.lineEvery, grpc: o.grpc, rest: o.rest,
			stagger: interval / time.Duration(max(o.grpc+o.rest, 1))},
		spec{name: "idle", recordID: idleRecord, base: lines, grpc: o.grpc, rest: o.rest})
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "follow: Range skipping runs, %s…\n", o.skipDuration)
	var sent [2]int64
	skipRun, skipEnd, err := runPhase(ctx, bin, up, flags, o.skipDuration, drain, &sent,
		spec{name: "ignores Range", recordID: skipIgnoreRecord, log: upstreamtest.Log{IgnoreRange: true}, base: o.skipSize, every: o.skipEvery, grpc: 1},
		spec{name: "honours Range", recordID: skipRangeRecord, base: o.skipSize, every: o.skipEvery, grpc: 1})
	if err != nil {
		return err
	}

	fmt.Printf("%d CPUs (runtime.NumCPU), %s, buildlogd --follow-poll-interval %s\n\n", runtime.NumCPU(), runtime.Version(), interval)
	met := printLatency(tailRun[0], o, interval)
	printRequests(tailRun, o)
	printSkipping(skipRun, o, sent)
	errs := []error{tailEnd, skipEnd}
	if !met {
		errs = append(errs, errors.New("the tail latency goal was missed"))
	}
	return errors.Join(errs...)
}

// runPhase runs the scenarios of specs at once, each on a buildlogd child
// of its own: it waits until all their followers are ready, marks the
// window's start, middle and end, then finishes the actions and waits up
// to drain for every follower to end OK, which ended reports on. When sent
// is not nil, it gets the simulator's BytesSent at the window's start and
// end. An error means there are no figures.
func runPhase(ctx context.Context, bin string, up *countedUpstream, flags []string, window, drain time.Duration, sent *[2]int64, specs ...spec) (_ []*scenario, ended, _ error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var out []*scenario
	defer func() {
		cancel()
		for _, s := range out {
			s.close()
		}
	}()
	for _, sp := range specs {
		s := &scenario{spec: sp}
		out = append(out, s)
		if err := s.start(ctx, bin, up, flags); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", sp.name, err)
		}
	}
	readyCtx, readyCancel := context.WithTimeout(ctx, time.Minute)
	defer readyCancel()
	for _, s := range out {
		if err := s.ready(readyCtx); err != nil {
			return nil, nil, err
		}
	}
	for i := range 3 {
		if i > 0 && !sleep(ctx, window/2) {
			return nil, nil, ctx.Err()
		}
		for _, s := range out {
			s.mark(up, i)
		}
		if sent != nil && i != 1 {
			sent[i/2] = up.BytesSent()
		}
	}
	for _, s := range out {
		s.end()
	}
	var errs []error
	for _, s := range out {
		errs = append(errs, s.wait(drain))
	}
	return out, errors.Join(errs...), nil
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
