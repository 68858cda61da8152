package upstream_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"sync/atomic"
	"testing"

	"github.com/buildlog/buildlog/upstream"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// proxyChildEnv marks the child process of TestProxyFromEnvironment.
const proxyChildEnv = "BUILDLOG_TEST_PROXY_CHILD"

// TestProxyFromEnvironment checks that the client honours HTTP_PROXY. Go
// reads the proxy variables once per process, so the check runs in a child
// process whose environment nothing has read yet.
func TestProxyFromEnvironment(t *testing.T) {
	t.Parallel()
	if os.Getenv(proxyChildEnv) != "" {
		t.Skip("in the child")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestProxyChild$", "-test.v")
	cmd.Env = append(os.Environ(), proxyChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

// TestProxyChild downloads from an upstream named codearts.example.invalid
// (no such host: only a proxy can reach it) with HTTP_PROXY pointing at a
// proxy that hands requests to the simulated upstream.
func TestProxyChild(t *testing.T) {
	if os.Getenv(proxyChildEnv) == "" {
		t.Skip("run by TestProxyFromEnvironment")
	}
	up := upstreamtest.NewServer()
	defer up.Close()
	up.AddToken(token)
	up.AddLog(recordID, "stage1", upstreamtest.Log{Content: []byte("via proxy\n")})
	var proxied atomic.Int64
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Host != "codearts.example.invalid" {
			http.Error(w, "unexpected target "+r.URL.Host, http.StatusBadGateway)
			return
		}
		proxied.Add(1)
		up.ServeHTTP(w, r)
	}))
	defer proxy.Close()
	t.Setenv("HTTP_PROXY", proxy.URL)
	t.Setenv("NO_PROXY", "")

	c, err := upstream.New("http://codearts.example.invalid")
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	log, err := c.DownloadTaskLog(context.Background(), upstream.Request{RecordID: recordID, TaskName: "stage1", Token: token})
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(log.Body)
	log.Body.Close()
	if err != nil || string(body) != "via proxy\n" || proxied.Load() != 1 {
		t.Fatalf("download = %q, %v with %d proxied requests; want the log through the proxy", body, err, proxied.Load())
	}
}
