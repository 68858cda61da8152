package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/grpc/keepalive"

	"github.com/buildlog/buildlog/server"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		removeBinary()
		os.Exit(code)
	}))
}

func env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := vars[k]
		return v, ok
	}
}

// defaultConfig returns the configuration without flags or environment,
// changed by each of edits.
func defaultConfig(edits ...func(*config)) config {
	c := config{server: server.DefaultConfig(), logFormat: "json", logLevel: slog.LevelInfo}
	c.server.Upstream = "https://cloudbuild-ext.cn-north-4.myhuaweicloud.com"
	for _, edit := range edits {
		edit(&c)
	}
	return c
}

func TestParseConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		want    config
		wantErr string // substring; empty: success
	}{
		{
			name: "defaults",
			want: defaultConfig(),
		},
		{
			name: "flags",
			args: []string{"--grpc-addr", "127.0.0.1:1", "--http-addr=127.0.0.1:2", "--region", "ap-southeast-3", "--chunk-size", "128KiB", "--shutdown-timeout", "5s",
				"--caller-idle-timeout", "0", "--cors-allowed-origins", "https://a.example, https://b.example"},
			want: defaultConfig(func(c *config) {
				c.server.GRPCAddr = "127.0.0.1:1"
				c.server.HTTPAddr = "127.0.0.1:2"
				c.server.Upstream = "https://cloudbuild-ext.ap-southeast-3.myhuaweicloud.com"
				c.server.ChunkSize = 128 << 10
				c.server.ShutdownTimeout = 5 * time.Second
				c.server.CallerIdleTimeout = 0
				c.server.CORSAllowedOrigins = []string{"https://a.example", "https://b.example"}
			}),
		},
		{
			name: "environment",
			env:  map[string]string{"BUILDLOG_GRPC_ADDR": ":1", "BUILDLOG_UPSTREAM": "http://127.0.0.1:15001", "BUILDLOG_CHUNK_SIZE": "2048"},
			want: defaultConfig(func(c *config) {
				c.server.GRPCAddr = ":1"
				c.server.Upstream = "http://127.0.0.1:15001"
				c.server.ChunkSize = 2048
			}),
		},
		{
			name: "flag beats environment",
			args: []string{"--grpc-addr", ":2"},
			env:  map[string]string{"BUILDLOG_GRPC_ADDR": ":1"},
			want: defaultConfig(func(c *config) { c.server.GRPCAddr = ":2" }),
		},
		{
			name: "--upstream beats BUILDLOG_REGION",
			args: []string{"--upstream", "http://127.0.0.1:1"},
			env:  map[string]string{"BUILDLOG_REGION": "cn-east-3"},
			want: defaultConfig(func(c *config) { c.server.Upstream = "http://127.0.0.1:1" }),
		},
		{
			name: "--region beats BUILDLOG_UPSTREAM",
			args: []string{"--region", "cn-east-3"},
			env:  map[string]string{"BUILDLOG_UPSTREAM": "http://127.0.0.1:1"},
			want: defaultConfig(func(c *config) { c.server.Upstream = "https://cloudbuild-ext.cn-east-3.myhuaweicloud.com" }),
		},
		{
			name: "--demo beats BUILDLOG_UPSTREAM",
			args: []string{"--demo"},
			env:  map[string]string{"BUILDLOG_UPSTREAM": "http://127.0.0.1:1"},
			want: defaultConfig(func(c *config) { c.demo = true; c.server.Upstream = "" }),
		},
		{name: "upstream and region both in the environment", env: map[string]string{"BUILDLOG_UPSTREAM": "http://x", "BUILDLOG_REGION": "cn-north-4"}, wantErr: "not both"},
		{
			name: "demo",
			env:  map[string]string{"BUILDLOG_DEMO": "true"},
			want: defaultConfig(func(c *config) { c.demo = true; c.server.Upstream = "" }),
		},
		{
			name: "resilience settings",
			args: []string{"--upstream-attempts", "5", "--upstream-max-resumes", "0", "--max-downloads", "64", "--upstream-connect-timeout", "2s", "--max-streams-per-connection", "8"},
			want: defaultConfig(func(c *config) {
				c.server.UpstreamRetry.Attempts, c.server.UpstreamRetry.MaxResumes = 5, 0
				c.server.MaxDownloads, c.server.UpstreamConnectTimeout, c.server.MaxStreamsPerConnection = 64, 2*time.Second, 8
			}),
		},
		{
			name: "operations settings",
			args: []string{"--admin-addr", "off", "--pprof", "--log-format", "text", "--log-level", "debug",
				"--keepalive-time", "30s", "--keepalive-timeout", "5s", "--keepalive-min-time", "15s", "--keepalive-permit-without-stream=false",
				"--max-connection-age", "10m", "--max-connection-age-grace", "2m"},
			want: defaultConfig(func(c *config) {
				c.server.AdminAddr, c.server.Pprof, c.logFormat, c.logLevel = "off", true, "text", slog.LevelDebug
				c.server.Keepalive = keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 5 * time.Second,
					MaxConnectionAge: 10 * time.Minute, MaxConnectionAgeGrace: 2 * time.Minute}
				c.server.KeepalivePolicy = keepalive.EnforcementPolicy{MinTime: 15 * time.Second}
			}),
		},
		{
			name: "operations settings from the environment",
			env:  map[string]string{"BUILDLOG_ADMIN_ADDR": "127.0.0.1:9999", "BUILDLOG_LOG_LEVEL": "WARN", "BUILDLOG_MAX_CONNECTION_AGE": "5m"},
			want: defaultConfig(func(c *config) {
				c.server.AdminAddr, c.logLevel, c.server.Keepalive.MaxConnectionAge = "127.0.0.1:9999", slog.LevelWarn, 5*time.Minute
			}),
		},
		{name: "bad environment value", env: map[string]string{"BUILDLOG_CHUNK_SIZE": "lots"}, wantErr: "BUILDLOG_CHUNK_SIZE"},
		{name: "unknown region", args: []string{"--region", "mars-1"}, wantErr: "unknown region"},
		{name: "upstream and region", args: []string{"--upstream", "https://x", "--region", "cn-north-4"}, wantErr: "not both"},
		{name: "demo and upstream", args: []string{"--demo", "--upstream", "https://x"}, wantErr: "--demo"},
		{name: "stray argument", args: []string{"serve"}, wantErr: "unexpected argument"},
		{name: "unknown flag", args: []string{"--port", "1"}, wantErr: "not defined"},
		{name: "bad log format", args: []string{"--log-format", "xml"}, wantErr: "--log-format"},
		{name: "bad log level", args: []string{"--log-level", "loud"}, wantErr: "log-level"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseConfig(tt.args, env(tt.env), io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseConfig() error = %v, want one mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseConfig() error = %v", err)
			}
			if diff := cmp.Diff(tt.want, *got, cmp.AllowUnexported(config{}, securityFlags{})); diff != "" {
				t.Errorf("parseConfig() (-want +got):\n%s", diff)
			}
		})
	}
}

// Settings out of range stop buildlogd at start, with a message naming
// the setting as its flag does: the checks are the server's own.
func TestRunRefusesBadSettings(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args    []string
		wantErr string
	}{
		{[]string{"--chunk-size", "10"}, "chunk-size"},
		{[]string{"--chunk-size", "3MiB"}, "chunk-size"},
		{[]string{"--shutdown-timeout", "0s"}, "shutdown-timeout"},
		{[]string{"--upstream-idle-timeout", "-1s"}, "upstream-idle-timeout"},
		{[]string{"--upstream-attempts", "0"}, "upstream-attempts"},
		{[]string{"--upstream-max-resumes", "1001"}, "upstream-max-resumes"},
		{[]string{"--max-downloads", "0"}, "max-downloads"},
		{[]string{"--max-streams-per-connection", "0"}, "max-streams-per-connection"},
		{[]string{"--caller-idle-timeout", "-1s"}, "caller-idle-timeout"},
		{[]string{"--keepalive-time", "0s"}, "keepalive-time"},
		{[]string{"--max-connection-age", "-1m"}, "max-connection-age"},
	}
	for _, tt := range tests {
		args := append([]string{"--demo", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--admin-addr", "off"}, tt.args...)
		if err := run(context.Background(), args, env(nil), io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("buildlogd %v: %v, want an error naming %s", tt.args, err, tt.wantErr)
		}
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	_, err := parseConfig([]string{"--help"}, env(nil), &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v, want flag.ErrHelp", err)
	}
	for _, name := range []string{"grpc-addr", "http-addr", "upstream", "region", "chunk-size", "demo", "BUILDLOG_"} {
		if !strings.Contains(out.String(), name) {
			t.Errorf("--help does not mention %s", name)
		}
	}
}

// TestRunDemo runs buildlogd --demo as a user would, follows the printed
// curl command and stops the server.
func TestRunDemo(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	stdout, w := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--demo", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"}, env(nil), w, io.Discard)
		w.Close()
	}()

	curl := regexp.MustCompile(`curl -sS -H 'X-Auth-Token: (\S+)' '(http://\S+task_name=stage1)'`)
	var match []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if match = curl.FindStringSubmatch(sc.Text()); match != nil {
			break
		}
	}
	go io.Copy(io.Discard, stdout)
	if match == nil {
		t.Fatal("the demo printed no curl command for the small record")
	}
	req, _ := http.NewRequest(http.MethodGet, match[2], nil)
	req.Header.Set("X-Auth-Token", match[1])
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || string(body) != demoLog {
		t.Errorf("demo curl: status %d, %d bytes, %v; want 200 and the demo log", resp.StatusCode, len(body), err)
	}

	cancel()
	if err := <-done; err != nil {
		t.Errorf("run() = %v after shutdown, want nil", err)
	}
}

func TestRunRefusesBadConfig(t *testing.T) {
	t.Parallel()
	err := run(context.Background(), []string{"--upstream", "ftp://example.com", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"}, env(nil), io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "scheme") {
		t.Errorf("run() = %v, want an error about the upstream scheme", err)
	}
}
