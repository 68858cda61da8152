package main

import (
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// Routes of the upstream API that followed downloads call.
const (
	routeTaskLog    = "task-log"    // GET /v4/{record_id}/task-log
	routeFullStages = "full-stages" // GET /v1/record/{record_id}/full-stages
)

// countedUpstream is the simulated upstream behind a handler that counts
// every request, and the body bytes of every answer, by record and route:
// the simulator itself keeps only its last 1,000 requests, and one total
// of body bytes.
type countedUpstream struct {
	*upstreamtest.Server
	URL string // where buildlogd reaches it, through the counter

	srv *http.Server
	mu  sync.Mutex
	by  map[routeKey]*tally
}

type routeKey struct{ record, route string }

// tally is what one record's route received and answered.
type tally struct{ requests, bytes atomic.Int64 }

// counts is a tally at one moment.
type counts struct{ requests, bytes int64 }

func startUpstream() (*countedUpstream, error) {
	sim, err := upstreamtest.Start("127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		sim.Close()
		return nil, err
	}
	u := &countedUpstream{Server: sim, URL: "http://" + ln.Addr().String(), by: map[routeKey]*tally{}}
	u.srv = &http.Server{Handler: u, ReadHeaderTimeout: 10 * time.Second}
	go u.srv.Serve(ln)
	return u, nil
}

func (u *countedUpstream) Close() {
	u.srv.Close()
	u.Server.Close()
}

// ServeHTTP counts the request and passes it on to the simulator.
func (u *countedUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	t := u.tally(parseRoute(r.URL.Path))
	t.requests.Add(1)
	u.Server.ServeHTTP(&countingWriter{ResponseWriter: w, n: &t.bytes}, r)
}

func (u *countedUpstream) tally(k routeKey) *tally {
	u.mu.Lock()
	defer u.mu.Unlock()
	t := u.by[k]
	if t == nil {
		t = new(tally)
		u.by[k] = t
	}
	return t
}

// snapshot returns what record's routes have counted so far.
func (u *countedUpstream) snapshot(record string) map[string]counts {
	u.mu.Lock()
	defer u.mu.Unlock()
	m := map[string]counts{}
	for k, t := range u.by {
		if k.record == record {
			m[k.route] = counts{t.requests.Load(), t.bytes.Load()}
		}
	}
	return m
}

// parseRoute names the record and route of an upstream API path; other
// paths count under an empty record.
func parseRoute(p string) routeKey {
	if rest, ok := strings.CutPrefix(p, "/v4/"); ok {
		if id, ok := strings.CutSuffix(rest, "/task-log"); ok {
			return routeKey{id, routeTaskLog}
		}
	}
	if rest, ok := strings.CutPrefix(p, "/v1/record/"); ok {
		if id, ok := strings.CutSuffix(rest, "/full-stages"); ok {
			return routeKey{id, routeFullStages}
		}
	}
	return routeKey{"", p}
}

// countingWriter counts the body bytes written through it. Unwrap lets
// the simulator's http.ResponseController flush through it.
type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	return n, err
}

func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }
