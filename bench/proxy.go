package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/buildlog/buildlog/server"
)

// proxyEnv, set to an upstream URL, makes this program serve the baseline
// instead of benchmarking: a reverse proxy to that URL on a free loopback
// port.
const proxyEnv = "BUILDLOG_BENCH_PROXY"

// profileEnv names the file a relay writes its CPU profile to, between
// SIGUSR1 and SIGUSR2: buildlogd built with the cpuprofile tag, and the
// proxy.
const profileEnv = "BUILDLOGD_CPUPROFILE"

// serveProxy serves httputil.ReverseProxy in front of target until
// interrupted. It is what a user could run instead of buildlogd's REST
// mirror: default settings, except that it keeps as many idle upstream
// connections as buildlogd does (server.DefaultMaxDownloads), so
// concurrency measures relaying rather than connection set-up.
func serveProxy(target string) error {
	u, err := url.Parse(target)
	if err != nil {
		return err
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConns = server.DefaultMaxDownloads
	transport.MaxIdleConnsPerHost = server.DefaultMaxDownloads
	proxy := &httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(u) },
		Transport: transport,
	}
	if name := os.Getenv(profileEnv); name != "" {
		profileOnSignal(name)
	}
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

// profileOnSignal profiles the CPU into the named file from SIGUSR1 to
// SIGUSR2, as buildlogd's cpuprofile hook does.
func profileOnSignal(name string) {
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGUSR1, syscall.SIGUSR2)
	go func() {
		var f *os.File
		for s := range sig {
			switch {
			case s == syscall.SIGUSR1 && f == nil:
				var err error
				if f, err = os.Create(name); err == nil {
					err = pprof.StartCPUProfile(f)
				}
				if err != nil {
					fmt.Fprintln(os.Stderr, "bench proxy: cpu profile:", err)
				}
			case s == syscall.SIGUSR2 && f != nil:
				pprof.StopCPUProfile()
				f.Close()
				f = nil
			}
		}
	}()
}
