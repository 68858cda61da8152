// Command bench measures how fast buildlogd relays logs, side by side with a
// plain reverse proxy in front of the same upstream, in one interleaved run
// on this machine.
//
//	go run ./bench [-sizes 1MiB,64MiB,1GiB] [-conc 1,16,128] [-runs 5]
//	               [-upstreams sim,file] [-max-bytes 2GiB] [-latency 500]
//
// Two upstreams serve the logs, in this process on loopback: the simulated
// upstream (upstreamtest, generated text) and a static-file server
// (http.ServeContent of a file on disk with the same text). For each
// upstream and each cell, the baseline — net/http/httputil.ReverseProxy —
// and two buildlogd (one serving REST, one gRPC) run as fresh child
// processes built from this repository, so each one's CPU time and peak RSS
// are its own and the cell's. Each cell of the matrix (log size × concurrent
// downloads) is measured run after run, the paths interleaved within a run:
//
//	direct  GET from the upstream
//	proxy   GET through the reverse proxy (the baseline)
//	rest    GET through buildlogd's REST mirror
//	grpc    the gRPC stream, read by a Go client on one shared connection,
//	        with the client package's codec (-grpc-codec proto for gRPC's)
//	floor   a plain grpc-go server streaming the same bytes from memory to
//	        the same client: the least any gRPC facade on grpc-go costs
//
// A cell whose concurrency × size exceeds -max-bytes is skipped. The first
// run of every cell warms up and checks every download's content (SHA-256
// against the generated log); timed runs check lengths. The table shows
// the median wall time of the cell's downloads, their aggregate
// throughput, the ratio to the proxy's median, the relaying process's CPU
// seconds per GiB relayed and its peak RSS (VmHWM), this process's CPU
// seconds per GiB (up+cli: the upstream's and the clients', as the paths
// run one at a time), and the TCP retransmission timeouts the machine
// counted during the path's timed runs (RTOs: on loopback, packets the
// kernel dropped).
//
// The latency table times -latency sequential requests per path and run
// for a 1 KiB log over kept-alive connections (the gRPC client reuses its
// connection, as real clients do), and reports p50, p99 and the relaying
// process's CPU time per request, which varies less between runs than
// latency on a shared machine.
package main

import (
	"cmp"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/buildlog/buildlog/client"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/server"
	"github.com/buildlog/buildlog/service"
)

const (
	token = "bench-token"
	task  = "stage1"
	// smallLog is the size of the log the latency table fetches.
	smallLog = 1 << 10
)

func main() {
	if target := os.Getenv(proxyEnv); target != "" {
		if err := serveProxy(target); err != nil {
			fmt.Fprintln(os.Stderr, "bench proxy:", err)
			os.Exit(1)
		}
		return
	}
	if chunk := os.Getenv(floorEnv); chunk != "" {
		if err := serveFloor(chunk); err != nil {
			fmt.Fprintln(os.Stderr, "bench gRPC floor:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type options struct {
	sizes     []int64
	conc      []int
	upstreams []string
	runs      int
	maxBytes  int64
	latency   int
	chunk     int64
	profile   string
	// clientCodec has the gRPC clients use the client package's codec.
	clientCodec bool
}

func parseFlags() (options, error) {
	sizes := flag.String("sizes", "1MiB,64MiB,1GiB", "comma-separated log sizes, in bytes or with a KiB/MiB/GiB suffix")
	conc := flag.String("conc", "1,16,128", "comma-separated numbers of concurrent downloads")
	ups := flag.String("upstreams", "sim,file", "comma-separated upstreams: sim (the simulated upstream), file (a static-file server)")
	runs := flag.Int("runs", 5, "timed runs of each path in each cell, after one warm-up run")
	maxBytes := flag.String("max-bytes", "2GiB", "skip cells whose concurrency × size exceeds this")
	latency := flag.Int("latency", 500, "small-log requests per path and run for the latency table; 0 skips it")
	chunk := flag.String("chunk-size", "", "buildlogd --chunk-size; default buildlogd's")
	codec := flag.String("grpc-codec", "client", "the gRPC clients' codec: client (the client package's, as buildlog recommends to Go programs) or proto (gRPC's default)")
	profile := flag.String("cpuprofile", "", "write CPU profiles of each relay's timed runs (and latency requests) into this directory")
	flag.Parse()

	var o options
	var err error
	for _, s := range strings.Split(*sizes, ",") {
		n, perr := parseBytes(s)
		err = cmp.Or(err, perr)
		o.sizes = append(o.sizes, n)
	}
	for _, s := range strings.Split(*conc, ",") {
		n, perr := strconv.Atoi(s)
		if perr != nil || n < 1 {
			err = cmp.Or(err, fmt.Errorf("bad concurrency %q", s))
		}
		o.conc = append(o.conc, n)
	}
	for _, u := range strings.Split(*ups, ",") {
		if u != "sim" && u != "file" {
			err = cmp.Or(err, fmt.Errorf("unknown upstream %q: want sim or file", u))
		}
		o.upstreams = append(o.upstreams, u)
	}
	var perr error
	o.maxBytes, perr = parseBytes(*maxBytes)
	err = cmp.Or(err, perr)
	if *chunk != "" {
		o.chunk, perr = parseBytes(*chunk)
		err = cmp.Or(err, perr)
	}
	o.runs, o.latency, o.profile = *runs, *latency, *profile
	switch *codec {
	case "client":
		o.clientCodec = true
	case "proto":
	default:
		err = cmp.Or(err, fmt.Errorf("unknown -grpc-codec %q: want client or proto", *codec))
	}
	if o.runs < 1 {
		err = cmp.Or(err, fmt.Errorf("-runs must be at least 1"))
	}
	return o, err
}

func run() error {
	o, err := parseFlags()
	if err != nil {
		return err
	}
	if o.profile != "" {
		if err := os.MkdirAll(o.profile, 0o755); err != nil {
			return err
		}
	}
	bin, cleanup, err := buildBinaries(o.profile != "")
	if err != nil {
		return err
	}
	defer cleanup()

	fmt.Printf("buildlog relay benchmark, %s\n", machine())
	chunk := "buildlogd's default"
	if o.chunk > 0 {
		chunk = formatBytes(o.chunk)
	}
	fmt.Printf("%d timed runs per path and cell (after a warm-up run), medians; ratio = time / proxy's time; chunk size %s\n\n",
		o.runs, chunk)
	var latencies []latencyRow
	fmt.Printf("%-8s %7s %5s %-6s %10s %10s %7s %9s %9s %12s %5s\n",
		"upstream", "size", "conc", "path", "median", "MiB/s", "ratio", "CPU s/GiB", "peak RSS", "up+cli s/GiB", "RTOs")
	for _, kind := range o.upstreams {
		rows, err := benchUpstream(kind, bin, o)
		if err != nil {
			return fmt.Errorf("upstream %s: %w", kind, err)
		}
		latencies = append(latencies, rows...)
	}
	if len(latencies) > 0 {
		fmt.Printf("\nsmall-log latency: %s log, %d sequential requests per path per run, %d runs interleaved\n",
			formatBytes(smallLog), o.latency, o.runs)
		fmt.Printf("%-8s %-6s %10s %10s %9s %9s %10s\n", "upstream", "path", "p50", "p99", "p50 ratio", "p99 ratio", "CPU/req")
		for _, r := range latencies {
			cpu := "-"
			if r.cpu > 0 {
				cpu = fmtDur(r.cpu)
			}
			fmt.Printf("%-8s %-6s %10s %10s %8.2fx %8.2fx %10s\n", r.upstream, r.path, fmtDur(r.p50), fmtDur(r.p99),
				float64(r.p50)/float64(r.proxyP50), float64(r.p99)/float64(r.proxyP99), cpu)
		}
	}
	return nil
}

// benchUpstream starts one upstream, with a buildlogd and a proxy in front
// of it, and measures every cell and the small-log latency through them.
func benchUpstream(kind string, bin binaries, o options) ([]latencyRow, error) {
	logs := append(slices.Clone(o.sizes), smallLog)
	up, err := startUpstream(kind, logs)
	if err != nil {
		return nil, err
	}
	defer up.close()

	for _, size := range o.sizes {
		for _, c := range o.conc {
			if int64(c)*size > o.maxBytes {
				continue
			}
			profile := ""
			if o.profile != "" {
				profile = filepath.Join(o.profile, fmt.Sprintf("%s-%s-%d", kind, formatBytes(size), c))
			}
			paths, stop, err := startPaths(bin, up.url, o, c, profile)
			if err != nil {
				return nil, err
			}
			results, err := measureCell(paths, size, c, o.runs)
			stop()
			if err != nil {
				return nil, fmt.Errorf("%s × %d: %w", formatBytes(size), c, err)
			}
			base := results[1].median
			for _, r := range results {
				gib := float64(size) * float64(c) * float64(o.runs) / (1 << 30)
				cpu, rss := "-", "-"
				if r.server != nil {
					cpu = fmt.Sprintf("%.2f", r.cpu.Seconds()/gib)
					rss = fmt.Sprintf("%.1f MiB", float64(r.peakRSS)/(1<<20))
				}
				fmt.Printf("%-8s %7s %5d %-6s %10s %10.0f %6.2fx %9s %9s %12.2f %5d\n", kind, formatBytes(size), c, r.name,
					fmtDur(r.median), float64(size)*float64(c)/(1<<20)/r.median.Seconds(),
					float64(r.median)/float64(base), cpu, rss, r.localCPU.Seconds()/gib, r.rtos)
			}
		}
	}
	if o.latency == 0 {
		return nil, nil
	}
	profile := ""
	if o.profile != "" {
		profile = filepath.Join(o.profile, kind+"-latency")
	}
	paths, stop, err := startPaths(bin, up.url, o, 1, profile)
	if err != nil {
		return nil, err
	}
	defer stop()
	return measureLatency(kind, paths, o.latency, o.runs)
}

// startPaths starts the relays in front of upstreamURL, fresh for each cell
// so that each one's peak RSS is the cell's: the proxy, and one buildlogd
// for REST and one for gRPC. stop stops them. With a profile prefix, each
// relay writes the CPU profile of its timed runs to prefix-PATH.pprof.
func startPaths(bin binaries, upstreamURL string, o options, conc int, profile string) (paths []path, stop func(), err error) {
	var stops []func()
	stop = func() {
		for _, f := range slices.Backward(stops) {
			f()
		}
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	profileEnv := func(name string) []string {
		if profile == "" {
			return nil
		}
		return []string{profileEnv + "=" + profile + "-" + name + ".pprof"}
	}
	startFacade := func(name string) (*child, error) {
		// The gRPC path carries a whole cell's downloads on one connection,
		// as the floor server does: no per-connection cap may queue them.
		args := []string{"--upstream", upstreamURL, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--admin-addr", "off",
			"--max-streams-per-connection", strconv.Itoa(server.DefaultConfig().MaxDownloads)}
		if o.chunk > 0 {
			args = append(args, "--chunk-size", strconv.FormatInt(o.chunk, 10))
		}
		c, err := startChild(bin.buildlogd, profileEnv(name), args...)
		if err == nil {
			stops = append(stops, c.Stop)
		}
		return c, err
	}
	proxy, err := startChild(bin.bench, append(profileEnv("proxy"), proxyEnv+"="+upstreamURL))
	if err != nil {
		return nil, nil, err
	}
	stops = append(stops, proxy.Stop)
	restFacade, err := startFacade("rest")
	if err != nil {
		return nil, nil, err
	}
	grpcFacade, err := startFacade("grpc")
	if err != nil {
		return nil, nil, err
	}
	dial := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if o.clientCodec {
		dial = append(dial, client.WithChunkCodec())
	}
	conn, err := grpc.NewClient(grpcFacade.GRPCAddr, dial...)
	if err != nil {
		return nil, nil, err
	}
	stops = append(stops, func() { conn.Close() })
	floorChunk := o.chunk
	if floorChunk == 0 {
		floorChunk = service.DefaultChunkSize
	}
	floor, err := startChild(bin.bench, append(profileEnv("grpc-floor"), floorEnv+"="+strconv.FormatInt(floorChunk, 10)))
	if err != nil {
		return nil, nil, err
	}
	stops = append(stops, floor.Stop)
	floorConn, err := grpc.NewClient(floor.GRPCAddr, dial...)
	if err != nil {
		return nil, nil, err
	}
	stops = append(stops, func() { floorConn.Close() })
	httpClient := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2 * conc, DisableCompression: true}}
	stops = append(stops, httpClient.CloseIdleConnections)
	grpcClient := buildlogv1.NewBuildLogServiceClient(conn)
	return []path{
		{name: "direct", fetch: httpFetch(httpClient, upstreamURL)},
		{name: "proxy", server: proxy, fetch: httpFetch(httpClient, "http://"+proxy.HTTPAddr)},
		{name: "rest", server: restFacade, fetch: httpFetch(httpClient, "http://"+restFacade.HTTPAddr)},
		{name: "grpc", server: grpcFacade, fetch: grpcFetch(grpcClient)},
		{name: "floor", server: floor, fetch: grpcFetch(buildlogv1.NewBuildLogServiceClient(floorConn)), synthetic: true},
	}, stop, nil
}

// parseBytes parses a byte count with an optional KiB, MiB or GiB suffix.
func parseBytes(s string) (int64, error) {
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"GiB", 30}, {"MiB", 20}, {"KiB", 10}, {"", 0}} {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			n, err := strconv.ParseInt(num, 10, 64)
			if err != nil || n < 0 {
				return 0, fmt.Errorf("bad size %q", s)
			}
			return n << u.shift, nil
		}
	}
	return 0, fmt.Errorf("bad size %q", s)
}

func formatBytes(b int64) string {
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"GiB", 30}, {"MiB", 20}, {"KiB", 10}} {
		if b >= 1<<u.shift && b%(1<<u.shift) == 0 {
			return strconv.FormatInt(b>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(b, 10)
}

// fmtDur rounds d to three significant digits, enough to compare.
func fmtDur(d time.Duration) string {
	for _, r := range []time.Duration{time.Second, 100 * time.Millisecond, 10 * time.Millisecond, time.Millisecond,
		100 * time.Microsecond, 10 * time.Microsecond, time.Microsecond, 100 * time.Nanosecond} {
		if d >= 100*r {
			return d.Round(r).String()
		}
	}
	return d.String()
}

// machine describes what the benchmark ran on.
func machine() string {
	model, n := "unknown CPU", 0
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok && model == "unknown CPU" {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
			}
			if strings.HasPrefix(line, "processor") {
				n++
			}
		}
	}
	return fmt.Sprintf("%d × %s (nproc %d), %s %s/%s", n, model, runtime.NumCPU(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
