// Package nginx_test runs deploy/nginx/buildlog.conf in a real nginx in
// front of two buildlogd replicas: every call for one log, gRPC or REST,
// reaches one replica, where the callers share one upstream read.
package nginx_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/buildlog/buildlog/api"
	"github.com/buildlog/buildlog/client"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/server"
	"github.com/buildlog/buildlog/server/servertest"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// proxy is nginx with buildlog.conf in front of two replicas; it listens
// on Unix sockets, so no port is fixed.
type proxy struct {
	up       *upstreamtest.Server
	replicas [2]*servertest.Stack
	grpc     buildlogv1.BuildLogServiceClient
	rest     *http.Client
}

func startProxy(t *testing.T) *proxy {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		if os.Getenv("BUILDLOG_REQUIRE_NGINX") != "" {
			t.Fatal("nginx is not installed (apt-get install nginx-light)")
		}
		t.Skip("nginx is not installed (apt-get install nginx-light); CI runs this test")
	}
	p := &proxy{}
	p.replicas[0] = servertest.StartWith(t, func(c *server.Config) { c.ChunkSize, c.SharedReads = 16<<10, true })
	p.up = p.replicas[0].Upstream
	p.replicas[1] = servertest.StartWith(t, func(c *server.Config) { c.ChunkSize, c.SharedReads, c.Upstream = 16<<10, true, p.up.URL })

	dir, err := os.MkdirTemp("", "buildlog-nginx")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil { // nginx's workers may run as another user
		t.Fatal(err)
	}
	grpcSock, restSock := filepath.Join(dir, "grpc.sock"), filepath.Join(dir, "rest.sock")
	include, err := os.ReadFile("buildlog.conf")
	if err != nil {
		t.Fatal(err)
	}
	conf := strings.NewReplacer(
		"{{REPLICA1_GRPC}}", p.replicas[0].GRPCAddr, "{{REPLICA2_GRPC}}", p.replicas[1].GRPCAddr,
		"{{REPLICA1_REST}}", strings.TrimPrefix(p.replicas[0].RESTURL, "http://"),
		"{{REPLICA2_REST}}", strings.TrimPrefix(p.replicas[1].RESTURL, "http://"),
		"{{GRPC_LISTEN}}", "unix:"+grpcSock, "{{REST_LISTEN}}", "unix:"+restSock,
	).Replace(string(include))
	main := fmt.Sprintf(`daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
events {}
http {
    access_log off;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    include %[1]s/buildlog.conf;
}
`, dir)
	for name, text := range map[string]string{"nginx.conf": main, "buildlog.conf": conf} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(bin, "-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", filepath.Join(dir, "nginx.conf"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	})
	for _, sock := range []string{grpcSock, restSock} {
		for give := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
			if c, err := net.Dial("unix", sock); err == nil {
				c.Close()
				break
			}
			if time.Now().After(give) {
				log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
				t.Fatalf("nginx did not listen on %s: %s\n%s", sock, out.String(), log)
			}
		}
	}
	conn, err := grpc.NewClient("unix://"+grpcSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	p.grpc = buildlogv1.NewBuildLogServiceClient(conn)
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", restSock)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	p.rest = &http.Client{Transport: tr}
	return p
}

// metric reads a counter of one replica: the sum of its series.
func metric(t *testing.T, s *servertest.Stack, name string) int64 {
	t.Helper()
	resp, err := http.Get(s.AdminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sum int64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, name); ok && (strings.HasPrefix(rest, " ") || strings.HasPrefix(rest, "{")) {
			f := strings.Fields(rest)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += int64(v)
		}
	}
	return sum
}

// readGRPC downloads a log with the client package, which sends the
// routing key.
func (p *proxy) readGRPC(record, task string) ([]byte, error) {
	var buf bytes.Buffer
	ctx := metadata.AppendToOutgoingContext(context.Background(), api.TokenMetadataKey, servertest.Token)
	_, err := client.Download(ctx, p.grpc, &buildlogv1.DownloadTaskLogRequest{RecordId: record, TaskName: task}, &buf)
	return buf.Bytes(), err
}

// readREST downloads a log as curl would: no routing header.
func (p *proxy) readREST(record, task string) ([]byte, error) {
	req, _ := http.NewRequest(http.MethodGet, "http://nginx/v4/"+record+"/task-log?task_name="+task, nil)
	req.Header.Set("X-Auth-Token", servertest.Token)
	resp, err := p.rest.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %s: %s", resp.Status, body)
	}
	return body, err
}

// Each transport has its own ring: nginx hashes a server's address, and
// a replica's gRPC and REST ports differ (README: Routing).
func TestConsistentHashingBringsAllCallsForALogToOneReplica(t *testing.T) {
	p := startProxy(t)
	const size, readers = 2 << 20, 4 // per transport
	paths := []string{"grpc", "rest"}
	spread := map[string][2]int{}
	for i := range 6 {
		record := fmt.Sprintf("%08x-0000-4000-8000-000000000000", i+1)
		p.up.AddLog(record, "stage1", upstreamtest.Log{Size: size})
		want := upstreamtest.Generate(size, "INFO", "stage1")
		// Every upstream answer for the log waits until every caller has
		// made its request (a read, or a proof of its own): they all join
		// the read of their replica.
		hold := make(chan struct{})
		p.up.Inject(upstreamtest.Fault{Hold: hold, RecordID: record, Times: -1})
		relayed := func(r int, path string) int64 {
			return metric(t, p.replicas[r], `buildlog_relayed_bytes_total{path="`+path+`"}`)
		}
		joins := func() int64 {
			return metric(t, p.replicas[0], "buildlog_shared_joins_total") + metric(t, p.replicas[1], "buildlog_shared_joins_total")
		}
		before := map[string][2]int64{}
		for _, path := range paths {
			before[path] = [2]int64{relayed(0, path), relayed(1, path)}
		}
		joined, sent, requests := joins(), p.up.BytesSent(), p.up.RequestCount()

		var wg sync.WaitGroup
		errs := make(chan error, 2*readers)
		for k := range 2 * readers {
			wg.Go(func() {
				read := p.readGRPC
				if k%2 == 1 {
					read = p.readREST
				}
				got, err := read(record, "stage1")
				if err == nil && !bytes.Equal(got, want) {
					err = fmt.Errorf("%d bytes differing from the log's %d", len(got), len(want))
				}
				if err != nil {
					errs <- fmt.Errorf("reader %d: %w", k, err)
				}
			})
		}
		for give := time.Now().Add(time.Minute); p.up.RequestCount()-requests < 2*readers; time.Sleep(time.Millisecond) {
			if time.Now().After(give) {
				t.Fatalf("record %d: %d upstream requests, want %d", i, p.up.RequestCount()-requests, 2*readers)
			}
		}
		close(hold)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("record %d: %v", i, err)
		}
		used := map[int]bool{}
		for _, path := range paths {
			got := [2]int64{relayed(0, path) - before[path][0], relayed(1, path) - before[path][1]}
			if got[0] != 0 && got[1] != 0 || got[0]+got[1] != readers*size {
				t.Fatalf("record %d, %s: the replicas relayed %d and %d bytes, want all %d on one: the proxy did not route by the log", i, path, got[0], got[1], readers*size)
			}
			r := 0
			if got[1] != 0 {
				r = 1
			}
			used[r] = true
			sp := spread[path]
			sp[r]++
			spread[path] = sp
		}
		// On each replica used, one caller reads and the others join (a
		// reader that fell behind and rejoined counts again).
		if j := joins() - joined; j < int64(2*readers-len(used)) {
			t.Errorf("record %d: %d joins on %d replicas, want at least %d", i, j, len(used), 2*readers-len(used))
		}
		detached := metric(t, p.replicas[0], "buildlog_shared_detaches_total") + metric(t, p.replicas[1], "buildlog_shared_detaches_total")
		if s := p.up.BytesSent() - sent; s > size*(int64(len(used))+detached)+2*readers {
			t.Errorf("record %d: the upstream sent %d bytes for %d readers of %d bytes on %d replicas", i, s, 2*readers, size, len(used))
		}
	}
	t.Logf("logs per replica, by transport: %v", spread)
}
