// Command bench measures how fast buildlogd relays a log, against fetching
// it straight from the upstream, in one interleaved run on this machine.
//
//	go run ./bench [-size 1GiB] [-runs 5] [-chunks 64KiB]
//
// It serves a generated log from the simulated upstream in this process,
// builds buildlogd and runs it as a child process (so its peak RSS and CPU
// time are its own), then times, run after run: a direct GET from the
// upstream, the gRPC stream read by a Go client, and the REST mirror. Every
// download is checked for length and content (SHA-256 against the
// upstream's). It prints medians, ratios to the direct fetch, and the
// server's peak RSS and CPU seconds per GiB. Several -chunks values compare
// chunk sizes, one server per size.
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

const (
	token    = "bench-token"
	recordID = "be0c4000-0000-4000-8000-000000000001"
	task     = "stage1"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run() error {
	size := byteFlag(1 << 30)
	runs := flag.Int("runs", 5, "timed runs of each path")
	chunks := flag.String("chunks", "64KiB", "comma-separated chunk sizes to compare, one buildlogd each")
	flag.Var(&size, "size", "log size, in bytes or with a KiB/MiB/GiB suffix")
	flag.Parse()

	up, err := upstreamtest.Start("127.0.0.1:0")
	if err != nil {
		return err
	}
	defer up.Close()
	up.AddToken(token)
	up.AddLog(recordID, task, upstreamtest.Log{Size: int64(size)})
	want, err := digest(upstreamtest.Reader(int64(size), "INFO", task))
	if err != nil {
		return err
	}

	bin, err := buildServer()
	if err != nil {
		return err
	}
	defer os.RemoveAll(filepath.Dir(bin))

	fmt.Printf("buildlog relay benchmark: %s log, %d runs per path, medians; %s\n", byteFlag(size), *runs, machine())
	fmt.Printf("%-9s %-8s %10s %10s %8s %14s %12s\n", "chunk", "path", "median", "MiB/s", "ratio", "server CPU s/GiB", "server RSS")
	for _, c := range strings.Split(*chunks, ",") {
		var chunk byteFlag
		if err := chunk.Set(c); err != nil {
			return err
		}
		if err := measure(bin, up.URL, int64(size), int(chunk), *runs, want); err != nil {
			return err
		}
	}
	return nil
}

// measure runs one buildlogd with the chunk size and prints its rows.
func measure(bin, upstreamURL string, size int64, chunk, runs int, want [32]byte) error {
	srv, err := startServer(bin, upstreamURL, chunk)
	if err != nil {
		return err
	}
	defer srv.stop()

	conn, err := grpc.NewClient(srv.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := buildlogv1.NewBuildLogServiceClient(conn)
	httpClient := &http.Client{Transport: &http.Transport{}}
	defer httpClient.CloseIdleConnections()

	paths := []struct {
		name  string
		fetch func(h io.Writer) (int64, error)
	}{
		{"direct", func(h io.Writer) (int64, error) { return httpGet(httpClient, upstreamURL, h) }},
		{"grpc", func(h io.Writer) (int64, error) { return grpcGet(client, h) }},
		{"rest", func(h io.Writer) (int64, error) { return httpGet(httpClient, "http://"+srv.httpAddr, h) }},
	}
	times := make([][]time.Duration, len(paths))
	cpu := make([]time.Duration, len(paths))
	for r := range runs + 1 { // the first round checks content and warms up
		for i, p := range paths {
			h := sha256.New()
			var w io.Writer = io.Discard
			if r == 0 {
				w = h
			}
			cpuBefore := srv.cpu()
			start := time.Now()
			n, err := p.fetch(w)
			elapsed := time.Since(start)
			if err != nil {
				return fmt.Errorf("%s: %w", p.name, err)
			}
			if n != size {
				return fmt.Errorf("%s: got %d bytes, want %d", p.name, n, size)
			}
			if r == 0 {
				if got := [32]byte(h.Sum(nil)); got != want {
					return fmt.Errorf("%s: content differs from the upstream's", p.name)
				}
				continue
			}
			times[i] = append(times[i], elapsed)
			cpu[i] += srv.cpu() - cpuBefore
		}
	}
	base := median(times[0])
	for i, p := range paths {
		m := median(times[i])
		gib := float64(size) * float64(runs) / (1 << 30)
		serverCPU := "-"
		if p.name != "direct" {
			serverCPU = fmt.Sprintf("%.2f", cpu[i].Seconds()/gib)
		}
		fmt.Printf("%-9s %-8s %10s %10.0f %7.2fx %14s %12s\n", byteFlag(chunk), p.name, m.Round(time.Millisecond),
			float64(size)/(1<<20)/m.Seconds(), float64(m)/float64(base), serverCPU, byteFlag(srv.peakRSS()))
	}
	return nil
}

func httpGet(c *http.Client, base string, w io.Writer) (int64, error) {
	req, err := http.NewRequest(http.MethodGet, base+"/v4/"+recordID+"/task-log?task_name="+task, nil)
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
	return io.CopyBuffer(w, resp.Body, make([]byte, 256<<10))
}

func grpcGet(c buildlogv1.BuildLogServiceClient, w io.Writer) (int64, error) {
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-auth-token", token)
	stream, err := c.DownloadTaskLog(ctx, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: task})
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

// server is a buildlogd child process.
type server struct {
	cmd                *exec.Cmd
	grpcAddr, httpAddr string
}

func buildServer() (string, error) {
	dir, err := os.MkdirTemp("", "buildlog-bench")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "buildlogd")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/buildlogd")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build buildlogd (run from the repository root): %w", err)
	}
	return bin, nil
}

func startServer(bin, upstreamURL string, chunk int) (*server, error) {
	cmd := exec.Command(bin, "--upstream", upstreamURL, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--admin-addr", "off", "--chunk-size", strconv.Itoa(chunk))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &server{cmd: cmd}
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		var line struct{ Msg, GRPC, HTTP string }
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "serving" {
			s.grpcAddr, s.httpAddr = line.GRPC, line.HTTP
			break
		}
	}
	if s.grpcAddr == "" {
		s.stop()
		return nil, errors.New("buildlogd did not report its addresses")
	}
	go io.Copy(io.Discard, stderr)
	return s, nil
}

func (s *server) stop() {
	s.cmd.Process.Signal(os.Interrupt)
	s.cmd.Wait()
}

// peakRSS is the server's peak resident set (VmHWM), in bytes.
func (s *server) peakRSS() int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return kb << 10
		}
	}
	return 0
}

// cpu is the server's user+system CPU time so far.
func (s *server) cpu() time.Duration {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(fields) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ is 100 on Linux
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func digest(r io.Reader) ([32]byte, error) {
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return [32]byte{}, err
	}
	return [32]byte(h.Sum(nil)), nil
}

func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	n := 0
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		n = strings.Count(string(b), "processor\t:")
	}
	return fmt.Sprintf("%d × %s", n, model)
}

// byteFlag is a byte count that accepts KiB, MiB and GiB suffixes.
type byteFlag int64

func (b byteFlag) String() string {
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"GiB", 30}, {"MiB", 20}, {"KiB", 10}} {
		if b >= 1<<u.shift && b%(1<<u.shift) == 0 {
			return strconv.FormatInt(int64(b)>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(b), 10)
}

func (b *byteFlag) Set(s string) error {
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"GiB", 30}, {"MiB", 20}, {"KiB", 10}, {"", 0}} {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			n, err := strconv.ParseInt(num, 10, 64)
			if err != nil || n < 0 {
				return fmt.Errorf("bad size %q", s)
			}
			*b = byteFlag(n << u.shift)
			return nil
		}
	}
	return fmt.Errorf("bad size %q", s)
}
