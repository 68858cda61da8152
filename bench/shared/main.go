// Command shared measures shared upstream reads (--shared-reads): what
// many readers of one log cost the upstream, and buildlogd, with and
// without them, in the same run. Run it from the repository root:
//
//	go run ./bench/shared
//
// Three scenarios, each run against a fresh buildlogd and simulated
// upstream:
//
//   - readers: -readers concurrent downloads (half gRPC, half REST) of one
//     -size log, with shared reads off and on: upstream body bytes and
//     requests, wall time, buildlogd CPU per GiB delivered.
//   - slow: -fast fast readers alone, then with one reader that reads at
//     -slow-rate among them (shared reads on): the fast ones' median wall
//     time, as a ratio.
//   - followers: -followers followers (half gRPC, half REST) of -actions
//     running actions that grow by themselves, with shared reads off and
//     on: upstream log polls and state calls per poll interval.
//
// Every download's bytes are checked against the log (SHA-256).
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/buildlog/buildlog/api"
	"github.com/buildlog/buildlog/client"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/internal/benchproc"
	"github.com/buildlog/buildlog/service"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

const (
	token  = "MIIEbenchTOKEN-shared"
	record = "5ba4ed00-0000-4000-8000-000000000000"
	task   = "stage1"
)

type options struct {
	size            int64
	readers, fast   int
	slowRate        int64
	followers       int
	actions         int
	followDuration  time.Duration
	step            int64
	every, interval time.Duration
	scenarios       string
}

func main() {
	var o options
	flag.Int64Var(&o.size, "size", 64<<20, "bytes of the log the readers download")
	flag.IntVar(&o.readers, "readers", 100, "concurrent readers of the readers scenario (half gRPC, half REST)")
	flag.IntVar(&o.fast, "fast", 10, "fast readers of the slow scenario")
	flag.Int64Var(&o.slowRate, "slow-rate", 8<<20, "bytes per second the slow reader reads")
	flag.IntVar(&o.followers, "followers", 1000, "followers of the followers scenario (half gRPC, half REST)")
	flag.IntVar(&o.actions, "actions", 10, "running actions the followers follow")
	flag.DurationVar(&o.followDuration, "follow-duration", 30*time.Second, "how long the actions run while followed")
	flag.Int64Var(&o.step, "step", 2000, "bytes each action's log grows by every -every")
	flag.DurationVar(&o.every, "every", 250*time.Millisecond, "how often each action's log grows")
	flag.StringVar(&o.scenarios, "scenarios", "readers,slow,followers", "which scenarios to run, comma-separated")
	flag.Parse()
	o.interval = service.DefaultFollowPollInterval
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "shared:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	dir, err := os.MkdirTemp("", "buildlog-shared")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin, err := benchproc.Build(dir)
	if err != nil {
		return err
	}
	fmt.Printf("%d CPUs (runtime.NumCPU), %s\n\n", runtime.NumCPU(), runtime.Version())

	want := func(name string) bool { return slices.Contains(strings.Split(o.scenarios, ","), name) }
	if want("readers") {
		if err := runReaders(ctx, bin, o); err != nil {
			return err
		}
	}
	if want("slow") {
		if err := runSlow(ctx, bin, o); err != nil {
			return err
		}
	}
	if want("followers") {
		return runFollowers(ctx, bin, o)
	}
	return nil
}

func runReaders(ctx context.Context, bin string, o options) error {
	fmt.Fprintf(os.Stderr, "shared: %d readers of a %s log…\n", o.readers, mib(o.size))
	fmt.Printf("%d concurrent readers (%d gRPC, %d REST) of one %s log\n\n", o.readers, o.readers-o.readers/2, o.readers/2, mib(o.size))
	fmt.Println("| shared reads | upstream body bytes | × log | upstream requests | wall | buildlogd CPU/GiB | peak RSS | joins | detaches |")
	fmt.Println("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
	for _, shared := range []bool{false, true} {
		r, err := readers(ctx, bin, o, shared, o.readers, 0)
		if err != nil {
			return err
		}
		fmt.Printf("| %v | %s | %.2f | %d | %s | %.2f s | %s | %d | %d |\n", shared, mib(r.upBytes), float64(r.upBytes)/float64(o.size),
			r.upRequests, r.wall.Round(time.Millisecond), r.cpu.Seconds()/(float64(r.delivered)/(1<<30)), mib(r.peakRSS), r.joins, r.detaches)
	}

	return nil
}

func runSlow(ctx context.Context, bin string, o options) error {
	fmt.Fprintf(os.Stderr, "shared: a slow reader among %d fast ones…\n", o.fast)
	alone, err := readers(ctx, bin, o, true, o.fast, 0)
	if err != nil {
		return err
	}
	mixed, err := readers(ctx, bin, o, true, o.fast, o.slowRate)
	if err != nil {
		return err
	}
	fmt.Printf("\nA slow reader (%s/s) among %d fast ones (shared reads on)\n\n", mib(o.slowRate), o.fast)
	fmt.Println("| run | fast readers' median wall | ratio | slow reader's wall | upstream body bytes | detaches |")
	fmt.Println("| --- | --- | --- | --- | --- | --- |")
	fmt.Printf("| fast only | %s | 1.00 | | %s | %d |\n", alone.fastMedian.Round(time.Millisecond), mib(alone.upBytes), alone.detaches)
	fmt.Printf("| with the slow one | %s | %.2f | %s | %s | %d |\n", mixed.fastMedian.Round(time.Millisecond),
		float64(mixed.fastMedian)/float64(alone.fastMedian), mixed.slowWall.Round(time.Millisecond), mib(mixed.upBytes), mixed.detaches)

	return nil
}

func runFollowers(ctx context.Context, bin string, o options) error {
	fmt.Fprintf(os.Stderr, "shared: %d followers of %d actions, %s each way…\n", o.followers, o.actions, o.followDuration)
	fmt.Printf("\n%d followers (%d gRPC, %d REST) of %d running actions, %s, each log growing %d bytes every %s; poll interval %s\n\n",
		o.followers, o.followers-o.followers/2, o.followers/2, o.actions, o.followDuration, o.step, o.every, o.interval)
	fmt.Println("| shared reads | log polls per interval | state calls per interval | upstream body bytes | buildlogd CPU | peak RSS | every follower identical |")
	fmt.Println("| --- | --- | --- | --- | --- | --- | --- |")
	for _, shared := range []bool{false, true} {
		f, err := followers(ctx, bin, o, shared)
		if err != nil {
			return err
		}
		fmt.Printf("| %v | %.1f | %.1f | %s | %.2f s | %s | %v |\n", shared, f.polls, f.states, mib(f.upBytes), f.cpu.Seconds(), mib(f.peakRSS), f.identical)
	}
	return nil
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// counted is the simulated upstream behind a handler that counts requests
// by route; the simulator counts body bytes.
type counted struct {
	*upstreamtest.Server
	url             string
	srv             *http.Server
	logs, stages    atomic.Int64
	countFrom, stop atomic.Int64 // unix nanos of the counting window; 0: always
}

func startUpstream() (*counted, error) {
	sim, err := upstreamtest.Start("127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	sim.AddToken(token)
	u := &counted{Server: sim}
	front := httpServe(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		now := time.Now().UnixNano()
		if from, to := u.countFrom.Load(), u.stop.Load(); from == 0 || now >= from && (to == 0 || now < to) {
			if strings.HasSuffix(r.URL.Path, "/task-log") {
				u.logs.Add(1)
			} else if strings.HasSuffix(r.URL.Path, "/full-stages") {
				u.stages.Add(1)
			}
		}
		sim.ServeHTTP(w, r)
	}))
	u.url, u.srv = front.url, front.srv
	return u, nil
}

func (u *counted) Close() {
	u.srv.Close()
	u.Server.Close()
}

// readersRun is what one run of concurrent readers measured.
type readersRun struct {
	upBytes, upRequests, delivered int64
	wall, cpu                      time.Duration
	fastMedian, slowWall           time.Duration
	peakRSS                        int64
	joins, detaches                int64
}

// readers runs n readers of one log (alternating gRPC and REST), plus one
// reading at slowRate when it is not 0, all starting together.
func readers(ctx context.Context, bin string, o options, shared bool, n int, slowRate int64) (readersRun, error) {
	var r readersRun
	up, err := startUpstream()
	if err != nil {
		return r, err
	}
	defer up.Close()
	up.AddLog(record, task, upstreamtest.Log{Size: o.size})
	want := sha256.Sum256(upstreamtest.Generate(o.size, "INFO", task))
	srv, err := benchproc.StartBuildlogd(bin, "--upstream", up.url, "--shared-reads="+fmt.Sprint(shared), "--admin-addr", "127.0.0.1:0",
		"--max-downloads", "4096", "--max-streams-per-connection", "4096")
	if err != nil {
		return r, err
	}
	defer srv.Stop()
	conn, err := grpc.NewClient(srv.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()), client.WithChunkCodec())
	if err != nil {
		return r, err
	}
	defer conn.Close()
	c := buildlogv1.NewBuildLogServiceClient(conn)
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n + 1, DisableCompression: true}}
	defer hc.CloseIdleConnections()
	admin := adminURL(srv)

	total := n
	if slowRate > 0 {
		total++
	}
	start := make(chan struct{})
	walls := make([]time.Duration, total)
	errs := make([]error, total)
	var wg sync.WaitGroup
	for i := range total {
		wg.Go(func() {
			<-start
			t0 := time.Now()
			h := sha256.New()
			var w io.Writer = h
			rest := i%2 == 1
			if i == n { // the slow one, over REST
				w, rest = &throttled{w: h, rate: slowRate, start: t0}, true
			}
			if rest {
				errs[i] = readREST(ctx, hc, srv.HTTPAddr, w)
			} else {
				errs[i] = readGRPC(ctx, c, w)
			}
			walls[i] = time.Since(t0)
			if errs[i] == nil && !bytes.Equal(h.Sum(nil), want[:]) {
				errs[i] = fmt.Errorf("reader %d: the bytes differ from the log's", i)
			}
		})
	}
	cpu0, sent0 := srv.CPU(), up.BytesSent()
	t0 := time.Now()
	close(start)
	wg.Wait()
	r.wall = time.Since(t0)
	r.cpu = srv.CPU() - cpu0
	if err := errors.Join(errs...); err != nil {
		return r, err
	}
	r.upBytes, r.upRequests, r.delivered = up.BytesSent()-sent0, up.logs.Load(), int64(total)*o.size
	fast := slices.Clone(walls[:n])
	slices.Sort(fast)
	r.fastMedian = fast[n/2]
	if slowRate > 0 {
		r.slowWall = walls[n]
	}
	r.peakRSS = srv.PeakRSS()
	r.joins = scrape(admin, "buildlog_shared_joins_total")
	r.detaches = scrape(admin, "buildlog_shared_detaches_total")
	return r, nil
}

func readGRPC(ctx context.Context, c buildlogv1.BuildLogServiceClient, w io.Writer) error {
	ctx = metadata.AppendToOutgoingContext(ctx, api.TokenMetadataKey, token)
	_, err := client.Download(ctx, c, &buildlogv1.DownloadTaskLogRequest{RecordId: record, TaskName: task}, w)
	return err
}

func readREST(ctx context.Context, hc *http.Client, addr string, w io.Writer) error {
	return getREST(ctx, hc, "http://"+addr+"/v4/"+record+"/task-log?task_name="+task, w)
}

func getREST(ctx context.Context, hc *http.Client, u string, w io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("X-Auth-Token", token)
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	_, err = io.Copy(w, resp.Body)
	return err
}

// throttled writes at most rate bytes per second on average.
type throttled struct {
	w     io.Writer
	rate  int64
	start time.Time
	n     int64
}

func (t *throttled) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		k := min(len(p), 16<<10)
		n, err := t.w.Write(p[:k])
		t.n += int64(n)
		if err != nil {
			return n, err
		}
		p = p[k:]
		if due := t.start.Add(time.Duration(float64(t.n) / float64(t.rate) * float64(time.Second))); time.Until(due) > 0 {
			time.Sleep(time.Until(due))
		}
	}
	return total, nil
}

// followersRun is what one run of followers measured.
type followersRun struct {
	polls, states float64 // upstream requests per poll interval, in the steady window
	upBytes       int64
	cpu           time.Duration
	peakRSS       int64
	identical     bool
}

func followers(ctx context.Context, bin string, o options, shared bool) (followersRun, error) {
	var f followersRun
	up, err := startUpstream()
	if err != nil {
		return f, err
	}
	defer up.Close()
	// Room for the whole run; the actions finish by Finish.
	room := o.step*int64(o.followDuration/o.every) + 1<<20
	actions := make([]*upstreamtest.RunningAction, o.actions)
	records := make([]string, o.actions)
	for i := range actions {
		records[i] = fmt.Sprintf("f011ee00-0000-4000-8000-%012d", i)
		actions[i] = up.AddAction(records[i], task, upstreamtest.Action{Log: upstreamtest.Log{Size: room}})
		actions[i].Grow(o.step)
	}
	srv, err := benchproc.StartBuildlogd(bin, "--upstream", up.url, "--shared-reads="+fmt.Sprint(shared),
		"--max-downloads", "4096", "--max-streams-per-connection", "4096")
	if err != nil {
		return f, err
	}
	defer srv.Stop()
	conn, err := grpc.NewClient(srv.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()), client.WithChunkCodec())
	if err != nil {
		return f, err
	}
	defer conn.Close()
	c := buildlogv1.NewBuildLogServiceClient(conn)
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: o.followers, DisableCompression: true}}
	defer hc.CloseIdleConnections()

	hashes := make([][]byte, o.followers)
	errs := make([]error, o.followers)
	var wg sync.WaitGroup
	for i := range o.followers {
		rec := records[i%o.actions]
		wg.Go(func() {
			// Spread over one interval, as callers arrive.
			time.Sleep(time.Duration(i) * o.interval / time.Duration(o.followers))
			h := sha256.New()
			if i%2 == 1 {
				q := url.Values{"task_name": {task}, "follow": {"true"}}
				errs[i] = getREST(ctx, hc, "http://"+srv.HTTPAddr+"/v4/"+rec+"/task-log?"+q.Encode(), h)
			} else {
				ctx := metadata.AppendToOutgoingContext(ctx, api.TokenMetadataKey, token)
				_, errs[i] = client.Follow(ctx, c, &buildlogv1.DownloadTaskLogRequest{RecordId: rec, TaskName: task}, h)
			}
			hashes[i] = h.Sum(nil)
		})
	}
	// The logs grow while followed; requests are counted in the window
	// after every follower has started and before the actions finish.
	grow := time.NewTicker(o.every)
	startAt := time.Now().Add(o.interval + time.Second)
	up.countFrom.Store(startAt.UnixNano())
	endAt := time.Now().Add(o.followDuration)
	up.stop.Store(endAt.UnixNano())
	cpu0, sent0 := srv.CPU(), up.BytesSent()
	for time.Now().Before(endAt) {
		<-grow.C
		for _, a := range actions {
			a.Grow(o.step)
		}
	}
	grow.Stop()
	for _, a := range actions {
		a.Finish()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return f, err
	}
	f.cpu, f.upBytes, f.peakRSS = srv.CPU()-cpu0, up.BytesSent()-sent0, srv.PeakRSS()
	intervals := float64(endAt.Sub(startAt)) / float64(o.interval)
	f.polls, f.states = float64(up.logs.Load())/intervals, float64(up.stages.Load())/intervals
	f.identical = true
	for i := range o.followers {
		a := actions[i%o.actions]
		want := sha256.Sum256(upstreamtest.Generate(room, "INFO", task)[:a.Size()])
		f.identical = f.identical && bytes.Equal(hashes[i], want[:])
	}
	return f, nil
}

// served is an HTTP server on a loopback port.
type served struct {
	url string
	srv *http.Server
}

func httpServe(h http.Handler) served {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	return served{url: "http://" + ln.Addr().String(), srv: srv}
}

func adminURL(p *benchproc.Process) string { return "http://" + p.AdminAddr }

// scrape reads a counter from buildlogd's /metrics; 0 when absent.
func scrape(admin, name string) int64 {
	resp, err := http.Get(admin + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for line := range strings.SplitSeq(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return int64(f)
		}
	}
	return 0
}
