package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/buildlog/buildlog/api"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/internal/benchproc"
)

// path is one way to download a log.
type path struct {
	name string
	// server is the relaying process whose CPU and memory are reported;
	// nil for direct downloads.
	server *child
	// fetch downloads the log of the given size into w, returning its
	// length.
	fetch func(size int64, w io.Writer) (int64, error)
	// synthetic paths serve bytes of their own: only the length is checked.
	synthetic bool
}

func httpFetch(c *http.Client, base string) func(int64, io.Writer) (int64, error) {
	return func(size int64, w io.Writer) (int64, error) {
		req, err := http.NewRequest(http.MethodGet, base+logPath(size), nil)
		if err != nil {
			return 0, err
		}
		req.Header.Set("X-Auth-Token", token)
		resp, err := c.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		return io.CopyBuffer(w, resp.Body, make([]byte, 64<<10))
	}
}

func grpcFetch(c buildlogv1.BuildLogServiceClient) func(int64, io.Writer) (int64, error) {
	ctx := metadata.AppendToOutgoingContext(context.Background(), api.TokenMetadataKey, token)
	return func(size int64, w io.Writer) (int64, error) {
		stream, err := c.DownloadTaskLog(ctx, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID(size), TaskName: task})
		if err != nil {
			return 0, err
		}
		var n int64
		for {
			msg, err := stream.Recv()
			if err == io.EOF {
				return n, nil
			}
			if err != nil {
				return n, err
			}
			w.Write(msg.GetData())
			n += int64(len(msg.GetData()))
		}
	}
}

// result is one path's figures in one cell.
type result struct {
	path
	median time.Duration
	cpu    time.Duration // the server's, over the timed runs
	// localCPU is this process's over the timed runs: the upstream's and
	// the clients', as the paths run one at a time.
	localCPU time.Duration
	// rtos counts the machine's TCP retransmission timeouts during the
	// timed runs: on loopback, each is a packet the kernel dropped and a
	// download that stalled for at least 200 ms.
	rtos    int64
	peakRSS int64
}

// measureCell downloads the log of the given size conc times at once
// through each path, runs+1 times with the paths interleaved, and returns
// each path's figures over the timed runs.
func measureCell(paths []path, size int64, conc, runs int) ([]result, error) {
	want := digest(size)
	results := make([]result, len(paths))
	times := make([][]time.Duration, len(paths))
	for r := range runs + 1 {
		for i, p := range paths {
			results[i].path = p
			check := r == 0 // the warm-up run checks content
			var cpuBefore time.Duration
			if p.server != nil {
				if r == 1 {
					p.server.startProfile()
				}
				cpuBefore = p.server.CPU()
			}
			if !check {
				// The collection work left by earlier paths is not this one's.
				runtime.GC()
			}
			localBefore, rtosBefore := benchproc.SelfCPU(), tcpTimeouts()
			start := time.Now()
			errs := make([]error, conc)
			var wg sync.WaitGroup
			for j := range conc {
				wg.Go(func() { errs[j] = download(p, size, check, want) })
			}
			wg.Wait()
			elapsed := time.Since(start)
			if !check {
				results[i].localCPU += benchproc.SelfCPU() - localBefore
				results[i].rtos += tcpTimeouts() - rtosBefore
			}
			for _, err := range errs {
				if err != nil {
					return nil, fmt.Errorf("%s: %w", p.name, err)
				}
			}
			if p.server != nil {
				results[i].peakRSS = max(results[i].peakRSS, p.server.PeakRSS())
				if !check {
					results[i].cpu += p.server.CPU() - cpuBefore
				}
			}
			if !check {
				times[i] = append(times[i], elapsed)
			}
		}
	}
	for i, p := range paths {
		if p.server != nil {
			p.server.stopProfile()
		}
		results[i].median = median(times[i])
	}
	return results, nil
}

// tcpTimeouts returns the machine's count of TCP retransmission timeouts
// (TcpExt TCPTimeouts in /proc/net/netstat), or 0 where there is none.
func tcpTimeouts() int64 {
	b, err := os.ReadFile("/proc/net/netstat")
	if err != nil {
		return 0
	}
	lines := strings.Split(string(b), "\n")
	for i := 0; i+1 < len(lines); i += 2 {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) != len(values) || len(names) == 0 || names[0] != "TcpExt:" {
			continue
		}
		for j, name := range names {
			if name == "TCPTimeouts" {
				n, _ := strconv.ParseInt(values[j], 10, 64)
				return n
			}
		}
	}
	return 0
}

// download fetches the log through p and checks its length, and its
// content when check is set.
func download(p path, size int64, check bool, want [32]byte) error {
	h := sha256.New()
	var w io.Writer = io.Discard
	if check {
		w = h
	}
	n, err := p.fetch(size, w)
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("got %d bytes, want %d", n, size)
	}
	if check && !p.synthetic && [32]byte(h.Sum(nil)) != want {
		return fmt.Errorf("content differs from the upstream's")
	}
	return nil
}

// latencyRow is one path's small-log latency.
type latencyRow struct {
	upstream, path     string
	p50, p99           time.Duration
	proxyP50, proxyP99 time.Duration
	// cpu is the relaying process's CPU time per request; 0 for direct
	// requests.
	cpu time.Duration
}

// measureLatency times n sequential small-log requests per path and run,
// the paths interleaved, after a checked warm-up request each.
func measureLatency(kind string, paths []path, n, runs int) ([]latencyRow, error) {
	// A synthetic path calls no upstream: its latency compares with nothing.
	paths = slices.DeleteFunc(slices.Clone(paths), func(p path) bool { return p.synthetic })
	want := digest(smallLog)
	samples := make([][]time.Duration, len(paths))
	cpu := make([]time.Duration, len(paths))
	for _, p := range paths {
		if err := download(p, smallLog, true, want); err != nil {
			return nil, fmt.Errorf("%s: %w", p.name, err)
		}
	}
	for _, p := range paths {
		if p.server != nil {
			p.server.startProfile()
		}
	}
	defer func() {
		for _, p := range paths {
			if p.server != nil {
				p.server.stopProfile()
			}
		}
	}()
	for range runs {
		for i, p := range paths {
			var cpuBefore time.Duration
			if p.server != nil {
				cpuBefore = p.server.CPU()
			}
			for range n {
				start := time.Now()
				if err := download(p, smallLog, false, want); err != nil {
					return nil, fmt.Errorf("%s: %w", p.name, err)
				}
				samples[i] = append(samples[i], time.Since(start))
			}
			if p.server != nil {
				cpu[i] += p.server.CPU() - cpuBefore
			}
		}
	}
	rows := make([]latencyRow, len(paths))
	for i, p := range paths {
		slices.Sort(samples[i])
		rows[i] = latencyRow{upstream: kind, path: p.name, p50: quantile(samples[i], 0.50), p99: quantile(samples[i], 0.99),
			cpu: cpu[i] / time.Duration(len(samples[i]))}
	}
	for i := range rows {
		rows[i].proxyP50, rows[i].proxyP99 = rows[1].p50, rows[1].p99
	}
	return rows, nil
}

// quantile returns the q-quantile of sorted samples (nearest rank).
func quantile(sorted []time.Duration, q float64) time.Duration {
	i := int(float64(len(sorted))*q+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
