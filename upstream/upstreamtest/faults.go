package upstreamtest

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"time"
)

// Fault replaces or disturbs the normal answer to matching requests. Faults
// are used in the order they were injected.
type Fault struct {
	// RecordID limits the fault to one record; empty matches every request.
	RecordID string
	// Route limits the fault to one route, [RouteTaskLog] or
	// [RouteFullStages]; empty matches every request.
	Route string
	// Token limits the fault to requests carrying this X-Auth-Token;
	// empty matches every request.
	Token string
	// Times is how many requests the fault applies to: 0 means once,
	// negative means every request from now on.
	Times int
	// Delay waits this long before answering (the wait ends early when the
	// client goes away).
	Delay time.Duration
	// Hold, when not nil, makes the answer wait until it is closed (or the
	// client goes away): a test releases it once the others are in place.
	Hold <-chan struct{}
	// Hangup closes the connection without any answer.
	Hangup bool
	// Status, when not zero, answers with this status, Header and Body
	// instead of the log.
	Status int
	Header http.Header
	Body   string
	// Cut closes the connection after CutAfter bytes of the log body, as a
	// reset or a crashed upstream does.
	Cut      bool
	CutAfter int64
	// Stall stops sending after StallAfter bytes of the body and keeps the
	// connection open until the client goes away.
	Stall      bool
	StallAfter int64
	// DripBytes, when positive, sends the body DripBytes at a time with a
	// pause of DripEvery between writes.
	DripBytes int
	DripEvery time.Duration
	// After, when not nil, is called once the faulty answer is over, before
	// the client can see its end: to change the server between a break and
	// the client's next request.
	After func()
}

// ErrorFault returns a fault answering with status and the upstream's JSON
// error document {"error_code": code, "error_msg": msg}.
func ErrorFault(status int, code, msg string) Fault {
	body, _ := json.Marshal(map[string]string{"error_code": code, "error_msg": msg})
	return Fault{Status: status, Body: string(body), Header: http.Header{"Content-Type": {"application/json"}}}
}

// Throttled returns the API gateway's throttling answer: 429 APIGW.0308 with
// a Retry-After header when retryAfter is positive.
func Throttled(retryAfter time.Duration) Fault {
	f := ErrorFault(http.StatusTooManyRequests, ThrottledCode, "The throttling threshold has been reached: policy user over ratelimit,limit:20,time:1 minute")
	if retryAfter > 0 {
		f.Header.Set("Retry-After", strconv.Itoa(int(retryAfter/time.Second)))
	}
	return f
}

// applyFault applies the parts of f that act before the answer, and answers
// itself when f replaces the answer. It reports whether the normal answer
// should follow.
func applyFault(w http.ResponseWriter, r *http.Request, f *Fault) bool {
	if f.Hold != nil {
		select {
		case <-f.Hold:
		case <-r.Context().Done():
			return false
		}
	}
	if f.Delay > 0 {
		t := time.NewTimer(f.Delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return false
		}
	}
	if f.Hangup {
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				_ = conn.Close()
				return false
			}
		}
		panic(http.ErrAbortHandler)
	}
	if f.Status != 0 {
		for k, vs := range f.Header {
			w.Header()[k] = vs
		}
		w.WriteHeader(f.Status)
		_, _ = io.WriteString(w, f.Body)
		return false
	}
	return true
}
