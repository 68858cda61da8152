package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/buildlog/buildlog/bench/internal/tail"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// Targets of the idle followers scenario.
const (
	followerRSSTarget = 150 << 20
	followerCPUTarget = 5.0 // percent of one core
)

// followOptions shape the idle followers scenario.
type followOptions struct {
	followers int           // half gRPC, half REST
	actions   int           // running actions they follow, round robin
	written   int64         // bytes of each action's log written before it is followed
	conns     int           // gRPC client connections, streams spread over them
	settle    time.Duration // after the last follower opened, before the CPU is measured
	idle      time.Duration // how long the CPU is measured
	poll      time.Duration // buildlogd's --follow-poll-interval; 0 for its default
	explain   bool          // print what the followers hold, and save profiles, even when the targets are met
}

// followFigures is what the idle followers scenario measured.
type followFigures struct {
	peakRSS      int64
	cpuPercent   float64 // buildlogd's, over the idle window
	opened       time.Duration
	upstreamRate float64        // upstream requests a second over the idle window
	routes       map[string]int // of the simulator's last requests, by route
	base, full   adminStats     // before any follower, and with all open (after a GC)
	groups       []goroutineGroup
	profiles     string // where the profiles went, with explain
}

// followerRecord names the log of running action i.
func followerRecord(i int) string { return fmt.Sprintf("%s%012d", followerRecordPrefix, 100+i) }

// followerRecordPrefix starts the record ids of the followed actions.
const followerRecordPrefix = "f0110000-0000-4000-8000-"

// measureIdleFollowers opens o.followers followed downloads of o.actions
// running actions whose logs do not grow, half over gRPC (spread over
// o.conns connections, as the server allows each 100 streams) and half
// over REST (each on an HTTP/1.1 connection of its own), waits until each
// has received the log written so far, and measures buildlogd's CPU while
// they idle, its peak resident set, and (through its pprof endpoint) the
// goroutines and heap they hold. When a target is missed (or o.explain),
// it then lists the largest goroutine groups and saves profiles, 10 s of
// CPU among them, the followers still idle.
func measureIdleFollowers(bin string, up *upstreamtest.Server, o followOptions) (*followFigures, error) {
	raiseFileLimit()
	admin, err := freeAddr()
	if err != nil {
		return nil, err
	}
	flags := []string{"--upstream", up.URL, "--max-downloads", fmt.Sprint(2 * o.followers), "--admin-addr", admin, "--pprof"}
	if o.poll > 0 {
		flags = append(flags, "--follow-poll-interval", o.poll.String())
	}
	srv, err := startBuildlogd(bin, flags...)
	if err != nil {
		return nil, err
	}
	defer srv.Stop()
	fig := &followFigures{}
	if fig.base, err = readAdminStats(admin); err != nil {
		return nil, err
	}
	for i := range o.actions {
		a := up.AddAction(followerRecord(i), task, upstreamtest.Action{Log: upstreamtest.Log{Size: 1 << 30}})
		a.Grow(o.written) // each follower receives it, then nothing new
	}

	var clients []buildlogv1.BuildLogServiceClient
	for range o.conns {
		conn, c, err := dial(srv.GRPCAddr)
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		clients = append(clients, c)
	}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: o.followers}}
	defer hc.CloseIdleConnections()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	opened, failed, wait := openFollowers(ctx, o, clients, hc, srv.HTTPAddr)
	select {
	case <-opened:
	case err := <-failed:
		return nil, fmt.Errorf("a follower failed before it opened: %w", err)
	case <-time.After(2 * time.Minute):
		return nil, errors.New("the followers did not all open within 2 minutes")
	}
	fig.opened = time.Since(start)

	time.Sleep(o.settle)
	cpu0, n0, t0 := srv.CPU(), up.RequestCount(), time.Now()
	time.Sleep(o.idle)
	cpu1, n1, t1 := srv.CPU(), up.RequestCount(), time.Now()
	fig.cpuPercent = 100 * float64(cpu1-cpu0) / float64(t1.Sub(t0))
	fig.upstreamRate = float64(n1-n0) / t1.Sub(t0).Seconds()
	fig.routes = map[string]int{}
	for _, r := range up.Requests() {
		if strings.Contains(r.Path, "/"+followerRecordPrefix) {
			fig.routes[route(r.Path)]++
		}
	}
	select {
	case err := <-failed:
		return nil, fmt.Errorf("a follower ended while idle: %w", err)
	default:
	}
	if fig.full, err = readAdminStats(admin); err != nil {
		return nil, err
	}
	fig.peakRSS = srv.PeakRSS()
	if o.explain || fig.peakRSS >= followerRSSTarget || fig.cpuPercent >= followerCPUTarget {
		if fig.groups, err = readGoroutineGroups(admin); err != nil {
			return nil, err
		}
		if fig.profiles, err = saveProfiles(admin); err != nil {
			return nil, err
		}
	}
	cancel()
	wait()
	return fig, nil
}

// openFollowers starts the followers, at most 100 opening at once;
// opened is closed once all have received their first bytes, failed
// gets the first error of one that ended, and wait waits for all to end
// once ctx is cancelled.
func openFollowers(ctx context.Context, o followOptions, clients []buildlogv1.BuildLogServiceClient, hc *http.Client, httpAddr string) (opened <-chan struct{}, failed <-chan error, wait func()) {
	allOpen := make(chan struct{})
	errs := make(chan error, o.followers)
	var wg, pending sync.WaitGroup
	sem := make(chan struct{}, 100)
	pending.Add(o.followers)
	go func() {
		for i := range o.followers {
			sem <- struct{}{}
			var once sync.Once
			open := func() { once.Do(func() { <-sem; pending.Done() }) }
			got := func(p tail.Piece) {
				if p.Len > 0 {
					open()
				}
			}
			t := tail.Target{RecordID: followerRecord(i % o.actions), TaskName: task, Token: token}
			wg.Go(func() {
				var err error
				if i%2 == 0 {
					err = tail.GRPC(ctx, clients[(i/2)%len(clients)], t, got)
				} else {
					err = tail.REST(ctx, hc, httpAddr, t, got)
				}
				if ctx.Err() == nil {
					errs <- fmt.Errorf("follower %d: %w", i, err)
				}
				open()
			})
		}
	}()
	go func() { pending.Wait(); close(allOpen) }()
	return allOpen, errs, func() { pending.Wait(); wg.Wait() }
}

// raiseFileLimit lifts this process's open-file limit to its hard limit:
// each REST follower is a connection at both ends, and buildlogd, a
// child, inherits the limit.
func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			fmt.Fprintln(os.Stderr, "memory: raise the open-file limit:", err)
		}
	}
}

// freeAddr returns a loopback address with a port free right now, for
// buildlogd's admin listener (whose address its log does not give).
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// route names the upstream API route of a request path.
func route(path string) string {
	switch {
	case strings.HasSuffix(path, "/task-log"):
		return "task-log"
	case strings.HasSuffix(path, "/full-stages"):
		return "full-stages"
	}
	return path
}

// printFollowers prints what the idle followers hold and cost.
func printFollowers(fig *followFigures, o followOptions) {
	n := float64(o.followers)
	per := func(a, b int64) string { return fmt.Sprintf("%.1f KiB", float64(b-a)/n/1024) }
	fmt.Printf("\nIdle followers: all %d open after %s; upstream requests while idle: %.1f/s (the simulator's last %d: %d task-log, %d full-stages)\n",
		o.followers, fig.opened.Round(time.Millisecond), fig.upstreamRate, fig.routes["task-log"]+fig.routes["full-stages"], fig.routes["task-log"], fig.routes["full-stages"])
	fmt.Printf("Per follower (with all open, after a GC, less the server before any): %.2f goroutines, %s heap in use, %s heap live, %s goroutine stacks\n",
		float64(fig.full.goroutines-fig.base.goroutines)/n, per(fig.base.heapInuse, fig.full.heapInuse),
		per(fig.base.heapAlloc, fig.full.heapAlloc), per(fig.base.stackInuse, fig.full.stackInuse))
	if fig.groups == nil {
		return
	}
	fmt.Printf("\nbuildlogd's goroutines, largest groups (of %d):\n\n", fig.full.goroutines)
	for _, g := range fig.groups {
		fmt.Printf("  %5d  %s\n", g.count, strings.Join(g.frames, " < "))
	}
	fmt.Printf("\nProfiles (heap after a GC, 10 s of CPU while idle) in %s: go tool pprof -top %s/heap.pprof\n", fig.profiles, fig.profiles)
}
