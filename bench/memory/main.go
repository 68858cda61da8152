// Command memory checks buildlogd's memory targets on a real buildlogd
// process in front of a fast simulated upstream:
//
//   - relay: one 256 MiB log downloaded over gRPC, then over REST, each
//     verified by SHA-256; peak resident set under 48 MiB;
//   - slow readers: 48 downloads at once (half gRPC, half REST) of a large
//     log, each read far slower than the upstream sends; peak resident set
//     under 96 MiB;
//   - idle followers: 1,000 followed downloads (follow=true; 500 gRPC over
//     10 connections, 500 REST each on an HTTP/1.1 connection of its own)
//     of 10 running actions whose logs (-follow-written, 64 lines) do not
//     grow, opened 100 at a time and kept open once each has received the
//     log written so far; peak resident set under 150 MiB, and CPU while
//     they idle (over -follow-idle after -follow-settle, at the default
//     poll interval, which backs off to 6 s) under 5% of one core. It
//     also prints the goroutines, heap and stacks per follower (from
//     buildlogd's pprof endpoint), and when a target is missed (or with
//     -explain) the largest goroutine groups, and saves heap and CPU
//     profiles.
//
// It prints the figures and exits 1 when a target is missed. Run it from the
// repository root:
//
//	go run ./bench/memory [-size 256MiB] [-readers 48] [-hold 5s] [-followers 1000] [-buildlogd-flags "--shared-reads"] [-explain]
package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/buildlog/buildlog/api"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/internal/benchproc"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

const (
	recordID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
	task     = "stage1"
	token    = "bench-token"

	relayTarget  = 48 << 20
	readerTarget = 96 << 20
)

func main() {
	size := flag.Int64("size", 256<<20, "size of the relayed log, in bytes")
	readers := flag.Int("readers", 48, "slow readers at once")
	hold := flag.Duration("hold", 5*time.Second, "how long the slow readers read")
	var fo followOptions
	flag.IntVar(&fo.followers, "followers", 1000, "idle followers, half gRPC, half REST; 0 skips the scenario")
	flag.IntVar(&fo.actions, "follow-actions", 10, "running actions the idle followers follow")
	flag.Int64Var(&fo.written, "follow-written", 64*80, "bytes of each running action's log written before it is followed (64 lines)")
	flag.IntVar(&fo.conns, "follow-conns", 10, "gRPC connections the idle gRPC followers share")
	flag.DurationVar(&fo.settle, "follow-settle", 15*time.Second, "pause after the last follower opened, for their polls to back off")
	flag.DurationVar(&fo.idle, "follow-idle", 25*time.Second, "how long buildlogd's CPU is measured while the followers idle")
	flag.DurationVar(&fo.poll, "follow-poll-interval", 0, "buildlogd's --follow-poll-interval for the idle followers; 0 for its default (2s)")
	flag.Func("buildlogd-flags", "more buildlogd `flags` for every scenario, space-separated (e.g. \"--shared-reads=false\")", func(v string) error {
		extraFlags = strings.Fields(v)
		return nil
	})
	flag.BoolVar(&fo.explain, "explain", false, "print the idle followers' largest goroutine groups and save profiles even when the targets are met (always when one is missed)")
	flag.Parse()
	if err := run(*size, *readers, *hold, fo); err != nil {
		fmt.Fprintln(os.Stderr, "memory:", err)
		os.Exit(1)
	}
}

// extraFlags are the -buildlogd-flags, given to every buildlogd started.
var extraFlags []string

// startBuildlogd starts bin with flags and the -buildlogd-flags.
func startBuildlogd(bin string, flags ...string) (*benchproc.Process, error) {
	return benchproc.StartBuildlogd(bin, append(flags, extraFlags...)...)
}

func run(size int64, readers int, hold time.Duration, fo followOptions) error {
	up, err := upstreamtest.Start("127.0.0.1:0")
	if err != nil {
		return err
	}
	defer up.Close()
	up.AddToken(token)
	up.AddLog(recordID, task, upstreamtest.Log{Size: size})
	dir, err := os.MkdirTemp("", "buildlog-memory")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin, err := benchproc.Build(dir)
	if err != nil {
		return err
	}

	relay, err := measureRelay(bin, up.URL, size)
	if err != nil {
		return err
	}
	slow, err := measureSlowReaders(bin, up.URL, readers, hold)
	if err != nil {
		return err
	}
	var follow *followFigures
	if fo.followers > 0 {
		if follow, err = measureIdleFollowers(bin, up, fo); err != nil {
			return fmt.Errorf("idle followers: %w", err)
		}
	}

	fmt.Printf("| scenario | figure | buildlogd | target | result |\n| --- | --- | --- | --- | --- |\n")
	failed := false
	row := func(name, figure, got, target string, met bool) {
		result := "met"
		if !met {
			result, failed = "MISSED", true
		}
		fmt.Printf("| %s | %s | %s | %s | %s |\n", name, figure, got, target, result)
	}
	mib := func(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
	row(fmt.Sprintf("relay one %d MiB log (gRPC, then REST)", size>>20), "peak RSS", mib(relay), fmt.Sprintf("< %d MiB", relayTarget>>20), relay < relayTarget)
	row(fmt.Sprintf("%d slow readers at once (half gRPC, half REST)", readers), "peak RSS", mib(slow), fmt.Sprintf("< %d MiB", readerTarget>>20), slow < readerTarget)
	if follow != nil {
		name := fmt.Sprintf("%d idle followers (%d gRPC, %d REST) of %d running actions", fo.followers, (fo.followers+1)/2, fo.followers/2, fo.actions)
		row(name, "peak RSS", mib(follow.peakRSS), fmt.Sprintf("< %d MiB", followerRSSTarget>>20), follow.peakRSS < followerRSSTarget)
		row(name, fmt.Sprintf("CPU while idle (%s)", fo.idle), fmt.Sprintf("%.2f%% of a core", follow.cpuPercent), fmt.Sprintf("< %.0f%%", followerCPUTarget), follow.cpuPercent < followerCPUTarget)
		printFollowers(follow, fo)
	}
	if failed {
		return errors.New("a target was missed")
	}
	return nil
}

// measureRelay downloads the whole log over both paths from a fresh server
// and returns its peak resident set.
func measureRelay(bin, upstreamURL string, size int64) (int64, error) {
	srv, err := startBuildlogd(bin, "--upstream", upstreamURL)
	if err != nil {
		return 0, err
	}
	defer srv.Stop()
	want, _ := digest(upstreamtest.Reader(size, "INFO", task))
	conn, client, err := dial(srv.GRPCAddr)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	h := sha256.New()
	if err := grpcRead(context.Background(), client, h, 0); err != nil {
		return 0, fmt.Errorf("gRPC relay: %w", err)
	}
	if [32]byte(h.Sum(nil)) != want {
		return 0, errors.New("gRPC relay: the log differs from the upstream's")
	}
	h.Reset()
	if err := restRead(context.Background(), srv.HTTPAddr, h, 0); err != nil {
		return 0, fmt.Errorf("REST relay: %w", err)
	}
	if [32]byte(h.Sum(nil)) != want {
		return 0, errors.New("REST relay: the log differs from the upstream's")
	}
	return srv.PeakRSS(), nil
}

// measureSlowReaders runs readers slow downloads at once for hold from a
// fresh server and returns its peak resident set.
func measureSlowReaders(bin, upstreamURL string, readers int, hold time.Duration) (int64, error) {
	srv, err := startBuildlogd(bin, "--upstream", upstreamURL)
	if err != nil {
		return 0, err
	}
	defer srv.Stop()
	conn, client, err := dial(srv.GRPCAddr)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), hold)
	defer cancel()
	// Each reader takes a chunk every 20 ms: about 3 MiB/s, far below the
	// upstream's speed, so every download is held back by its reader.
	const pause = 20 * time.Millisecond
	var wg sync.WaitGroup
	errs := make(chan error, readers)
	for i := range readers {
		wg.Go(func() {
			var err error
			if i%2 == 0 {
				err = grpcRead(ctx, client, io.Discard, pause)
			} else {
				err = restRead(ctx, srv.HTTPAddr, io.Discard, pause)
			}
			if err != nil && ctx.Err() == nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, fmt.Errorf("a slow reader failed before the end: %w", err)
	}
	return srv.PeakRSS(), nil
}

func dial(addr string) (*grpc.ClientConn, buildlogv1.BuildLogServiceClient, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	return conn, buildlogv1.NewBuildLogServiceClient(conn), nil
}

// grpcRead downloads the log into w, pausing after each message.
func grpcRead(ctx context.Context, client buildlogv1.BuildLogServiceClient, w io.Writer, pause time.Duration) error {
	ctx = metadata.AppendToOutgoingContext(ctx, api.TokenMetadataKey, token)
	stream, err := client.DownloadTaskLog(ctx, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: task})
	if err != nil {
		return err
	}
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		w.Write(msg.GetData())
		if pause > 0 {
			time.Sleep(pause)
		}
	}
}

// restRead downloads the log into w over the REST mirror, pausing after
// each 64 KiB.
func restRead(ctx context.Context, httpAddr string, w io.Writer, pause time.Duration) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+"/v4/"+recordID+"/task-log?task_name="+task, nil)
	if err != nil {
		return err
	}
	req.Header.Set("X-Auth-Token", token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	buf := make([]byte, 64<<10)
	for {
		n, err := resp.Body.Read(buf)
		w.Write(buf[:n])
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err // such as io.ErrUnexpectedEOF: a download cut off
		}
		if pause > 0 {
			time.Sleep(pause)
		}
	}
}

func digest(r io.Reader) ([32]byte, error) {
	h := sha256.New()
	_, err := io.Copy(h, r)
	return [32]byte(h.Sum(nil)), err
}
