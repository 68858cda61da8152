package main

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// recordID names the log of the given size on every upstream.
func recordID(size int64) string { return fmt.Sprintf("be0c4000-0000-4000-8000-%012x", size) }

// logPath is the upstream API path of the log of the given size.
func logPath(size int64) string {
	return "/v4/" + recordID(size) + "/task-log?task_name=" + task
}

// content returns the text of the log of the given size, as both upstreams
// serve it.
func content(size int64) io.Reader { return upstreamtest.Reader(size, "INFO", task) }

var digests sync.Map // of size → [32]byte

// digest is the SHA-256 of the log of the given size.
func digest(size int64) [32]byte {
	if d, ok := digests.Load(size); ok {
		return d.([32]byte)
	}
	h := sha256.New()
	io.Copy(h, content(size))
	d := [32]byte(h.Sum(nil))
	digests.Store(size, d)
	return d
}

// upstream is a log server on loopback.
type upstream struct {
	url   string
	close func()
}

func startUpstream(kind string, sizes []int64) (*upstream, error) {
	if kind == "sim" {
		sim, err := upstreamtest.Start("127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		sim.AddToken(token)
		for _, size := range sizes {
			sim.AddLog(recordID(size), task, upstreamtest.Log{Size: size})
		}
		return &upstream{url: sim.URL, close: sim.Close}, nil
	}
	return startFileServer(sizes)
}

// startFileServer serves each log from a file on disk with
// http.ServeContent, as a static web server would: Content-Length, Range,
// Last-Modified, no token check.
func startFileServer(sizes []int64) (*upstream, error) {
	dir, err := os.MkdirTemp("", "buildlog-bench-logs")
	if err != nil {
		return nil, err
	}
	files := map[string]string{}
	for _, size := range sizes {
		name := filepath.Join(dir, recordID(size)+".log")
		if err := writeFile(name, content(size)); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		files["/v4/"+recordID(size)+"/task-log"] = name
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name, ok := files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		f, err := os.Open(name)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		http.ServeContent(w, r, filepath.Base(name), fi.ModTime(), f)
	})}
	go srv.Serve(ln)
	return &upstream{url: "http://" + ln.Addr().String(), close: func() {
		srv.Close()
		os.RemoveAll(dir)
	}}, nil
}

func writeFile(name string, r io.Reader) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
