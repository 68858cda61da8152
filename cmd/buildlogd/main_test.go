package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
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
	c := config{
		grpcAddr: ":9090", httpAddr: ":8080", endpoint: "https://cloudbuild-ext.cn-north-4.myhuaweicloud.com",
		chunkSize: 256 << 10, shutdownTimeout: 30 * time.Second,
		headerTimeout: 30 * time.Second, idleTimeout: time.Minute, connectTimeout: 10 * time.Second,
		attempts: 3, maxResumes: 8, maxDownloads: 512, maxConnStreams: 100,
	}
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
			args: []string{"--grpc-addr", "127.0.0.1:1", "--http-addr=127.0.0.1:2", "--region", "ap-southeast-3", "--chunk-size", "128KiB", "--shutdown-timeout", "5s"},
			want: defaultConfig(func(c *config) {
				c.grpcAddr = "127.0.0.1:1"
				c.httpAddr = "127.0.0.1:2"
				c.endpoint = "https://cloudbuild-ext.ap-southeast-3.myhuaweicloud.com"
				c.chunkSize = 128 << 10
				c.shutdownTimeout = 5 * time.Second
			}),
		},
		{
			name: "environment",
			env:  map[string]string{"BUILDLOG_GRPC_ADDR": ":1", "BUILDLOG_UPSTREAM": "http://127.0.0.1:15001", "BUILDLOG_CHUNK_SIZE": "2048"},
			want: defaultConfig(func(c *config) { c.grpcAddr = ":1"; c.endpoint = "http://127.0.0.1:15001"; c.chunkSize = 2048 }),
		},
		{
			name: "flag beats environment",
			args: []string{"--grpc-addr", ":2"},
			env:  map[string]string{"BUILDLOG_GRPC_ADDR": ":1"},
			want: defaultConfig(func(c *config) { c.grpcAddr = ":2" }),
		},
		{
			name: "--upstream beats BUILDLOG_REGION",
			args: []string{"--upstream", "http://127.0.0.1:1"},
			env:  map[string]string{"BUILDLOG_REGION": "cn-east-3"},
			want: defaultConfig(func(c *config) { c.endpoint = "http://127.0.0.1:1" }),
		},
		{
			name: "--region beats BUILDLOG_UPSTREAM",
			args: []string{"--region", "cn-east-3"},
			env:  map[string]string{"BUILDLOG_UPSTREAM": "http://127.0.0.1:1"},
			want: defaultConfig(func(c *config) { c.endpoint = "https://cloudbuild-ext.cn-east-3.myhuaweicloud.com" }),
		},
		{
			name: "--demo beats BUILDLOG_UPSTREAM",
			args: []string{"--demo"},
			env:  map[string]string{"BUILDLOG_UPSTREAM": "http://127.0.0.1:1"},
			want: defaultConfig(func(c *config) { c.demo = true; c.endpoint = "" }),
		},
		{name: "upstream and region both in the environment", env: map[string]string{"BUILDLOG_UPSTREAM": "http://x", "BUILDLOG_REGION": "cn-north-4"}, wantErr: "not both"},
		{
			name: "demo",
			env:  map[string]string{"BUILDLOG_DEMO": "true"},
			want: defaultConfig(func(c *config) { c.demo = true; c.endpoint = "" }),
		},
		{name: "bad environment value", env: map[string]string{"BUILDLOG_CHUNK_SIZE": "lots"}, wantErr: "BUILDLOG_CHUNK_SIZE"},
		{name: "chunk too small", args: []string{"--chunk-size", "10"}, wantErr: "--chunk-size"},
		{name: "chunk too large", args: []string{"--chunk-size", "3MiB"}, wantErr: "--chunk-size"},
		{name: "unknown region", args: []string{"--region", "mars-1"}, wantErr: "unknown region"},
		{name: "upstream and region", args: []string{"--upstream", "https://x", "--region", "cn-north-4"}, wantErr: "not both"},
		{name: "demo and upstream", args: []string{"--demo", "--upstream", "https://x"}, wantErr: "--demo"},
		{name: "stray argument", args: []string{"serve"}, wantErr: "unexpected argument"},
		{name: "unknown flag", args: []string{"--port", "1"}, wantErr: "not defined"},
		{name: "zero shutdown timeout", args: []string{"--shutdown-timeout", "0s"}, wantErr: "--shutdown-timeout"},
		{name: "negative idle timeout", env: map[string]string{"BUILDLOG_UPSTREAM_IDLE_TIMEOUT": "-1s"}, wantErr: "--upstream-idle-timeout"},
		{
			name: "resilience settings",
			args: []string{"--upstream-attempts", "5", "--upstream-max-resumes", "0", "--max-downloads", "64", "--upstream-connect-timeout", "2s"},
			want: defaultConfig(func(c *config) { c.attempts, c.maxResumes, c.maxDownloads, c.connectTimeout = 5, 0, 64, 2*time.Second }),
		},
		{name: "zero attempts", args: []string{"--upstream-attempts", "0"}, wantErr: "--upstream-attempts"},
		{name: "no downloads", env: map[string]string{"BUILDLOG_MAX_DOWNLOADS": "0"}, wantErr: "--max-downloads"},
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
			got.obs = obsConfig{} // TestObsFlags checks these
			if *got != tt.want {
				t.Errorf("parseConfig() = %+v\nwant %+v", *got, tt.want)
			}
		})
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
