package main

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"time"

	"github.com/buildlog/buildlog/internal/benchproc"
	"github.com/buildlog/buildlog/server"
)

// proxyEnv, set to an upstream URL, makes this program serve the baseline
// instead of benchmarking: a reverse proxy to that URL on a free loopback
// port.
const proxyEnv = "BUILDLOG_BENCH_PROXY"

// profileEnv names the file a relay writes its CPU profile to.
const profileEnv = benchproc.ProfileEnv

// serveProxy serves httputil.ReverseProxy in front of target until
// interrupted. It is what a user could run instead of buildlogd's REST
// mirror: default settings, except that it keeps as many idle upstream
// connections as buildlogd does (server.DefaultConfig().MaxDownloads), so
// concurrency measures relaying rather than connection set-up.
func serveProxy(target string) error {
	u, err := url.Parse(target)
	if err != nil {
		return err
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConns = server.DefaultConfig().MaxDownloads
	transport.MaxIdleConnsPerHost = server.DefaultConfig().MaxDownloads
	proxy := &httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(u) },
		Transport: transport,
	}
	benchproc.ProfileOnSignal()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: proxy, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt)
		<-sig
		srv.Close()
	}()
	line, _ := json.Marshal(map[string]string{"msg": "serving", "http": ln.Addr().String()})
	os.Stderr.Write(append(line, '\n'))
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		return err
	}
	return nil
}
