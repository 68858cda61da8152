package service_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/buildlog/buildlog/api"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/service"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// Shared reads. Readers are put in place with the simulator's Hold (an
// answer waits until the test releases it) and by waiting for the
// requests to arrive, never by sleeping.

const sharedChunk = 4 << 10 // a 16 KiB window

func newSharedEnv(t *testing.T, reauthorize time.Duration, opts ...service.Option) *env {
	t.Helper()
	opts = append([]service.Option{service.WithChunkSize(sharedChunk), service.WithFollow(10*time.Millisecond, time.Minute), service.WithSharedReads(reauthorize)}, opts...)
	return newEnv(t, opts...)
}

// tokens adds n tokens to the simulator: one caller each.
func tokens(e *env, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-caller%d", token, i)
		e.up.AddToken(out[i])
	}
	return out
}

// waitFor waits until cond holds. The bound only keeps a broken build
// from hanging: nothing here takes a fraction of it.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for give := time.Now().Add(time.Minute); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(give) {
			t.Fatalf("gave up waiting for %s", what)
		}
	}
}

// requestsWith counts the upstream requests that carried tok.
func requestsWith(up *upstreamtest.Server, tok string) int {
	n := 0
	for _, r := range up.Requests() {
		if r.Header.Get("X-Auth-Token") == tok {
			n++
		}
	}
	return n
}

// result is one reader's download.
type result struct {
	data []byte
	err  error
}

func (e *env) readAll(ctx context.Context, t *testing.T, req *buildlogv1.DownloadTaskLogRequest) result {
	msgs, err := e.download(ctx, t, req)
	var data []byte
	for _, m := range msgs {
		data = append(data, m.Data...)
	}
	return result{data, err}
}

func TestSharedReadCostsTheUpstreamOneRead(t *testing.T) {
	t.Parallel()
	const size, readers = 1 << 20, 8
	e := newSharedEnv(t, time.Minute)
	toks := tokens(e, readers)
	e.up.AddLog(recordID, "stage1", upstreamtest.Log{Size: size})
	hold := make(chan struct{})
	e.up.Inject(upstreamtest.Fault{Hold: hold}) // the first answer waits for the others
	req := &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"}

	results := make([]result, readers)
	var wg sync.WaitGroup
	start := func(i int) {
		wg.Go(func() { results[i] = e.readAll(withToken(t.Context(), toks[i]), t, req) })
	}
	start(0)
	waitFor(t, "the first read", func() bool { return e.up.RequestCount() == 1 })
	for i := 1; i < readers; i++ {
		start(i)
	}
	// Each joiner proves its access with a request of its own.
	waitFor(t, "the joiners' proofs", func() bool { return e.up.RequestCount() == readers })
	close(hold)
	wg.Wait()

	want := upstreamtest.Generate(size, "INFO", "stage1")
	for i, r := range results {
		if r.err != nil || !bytes.Equal(r.data, want) {
			t.Fatalf("reader %d: %d bytes, %v; want the log, identical", i, len(r.data), r.err)
		}
		if n := requestsWith(e.up, toks[i]); n < 1 {
			t.Errorf("reader %d made no request of its own", i)
		}
	}
	st := e.svc.SharedStats()
	// (A reader that fell behind and rejoined counts again.)
	if st.Joins.Load() < readers-1 {
		t.Errorf("%d joins, want at least %d", st.Joins.Load(), readers-1)
	}
	// Readers that fell behind read on their own; the rest cost nothing.
	if sent, most := e.up.BytesSent(), int64(size)*(1+st.Detaches.Load())+readers; sent > most {
		t.Errorf("the upstream sent %d bytes for %d readers with %d detaches, want at most %d", sent, readers, st.Detaches.Load(), most)
	}
	if st.BytesSaved.Load() == 0 {
		t.Error("no bytes counted as saved")
	}
}

func TestSharedReadLeavesNobodyWaitingForTheSlowest(t *testing.T) {
	t.Parallel()
	const size = 1 << 20
	e := newSharedEnv(t, time.Minute)
	toks := tokens(e, 4)
	e.up.AddLog(recordID, "stage1", upstreamtest.Log{Size: size})
	hold := make(chan struct{})
	e.up.Inject(upstreamtest.Fault{Hold: hold})
	req := &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"}
	want := upstreamtest.Generate(size, "INFO", "stage1")

	// The slow reader takes one chunk, then nothing until the fast ones
	// are done: they would wait for ever if the shared read waited for it.
	fastDone := make(chan struct{})
	slow := make(chan result, 1)
	go func() {
		d, err := e.open(withToken(t.Context(), toks[0]), req)
		if err != nil {
			slow <- result{err: err}
			return
		}
		var data []byte
		for first := true; ; first = false {
			c, err := d.Next()
			if err == io.EOF {
				slow <- result{data, d.Close(nil)}
				return
			}
			if err != nil {
				slow <- result{data, d.Close(err)}
				return
			}
			data = append(data, c.Data...)
			c.Release()
			if first {
				<-fastDone
			}
		}
	}()
	waitFor(t, "the slow reader's read", func() bool { return e.up.RequestCount() == 1 })
	fast := make([]result, 3)
	var wg sync.WaitGroup
	for i := range fast {
		wg.Go(func() { fast[i] = e.readAll(withToken(t.Context(), toks[i+1]), t, req) })
	}
	waitFor(t, "the fast readers' proofs", func() bool { return e.up.RequestCount() == 4 })
	close(hold)
	wg.Wait()
	close(fastDone)
	for i, r := range fast {
		if r.err != nil || !bytes.Equal(r.data, want) {
			t.Fatalf("fast reader %d: %d bytes, %v", i, len(r.data), r.err)
		}
	}
	if r := <-slow; r.err != nil || !bytes.Equal(r.data, want) {
		t.Fatalf("slow reader: %d bytes, %v; want the log, identical", len(r.data), r.err)
	}
	if e.svc.SharedStats().Detaches.Load() == 0 {
		t.Error("no reader detached, yet the fast ones finished before the slow one read on")
	}
}

// refusal is what a caller is told, less what differs between two
// answers of the upstream (the request id's value).
func refusal(t *testing.T, err error) (codes.Code, string, map[string]string) {
	t.Helper()
	var e *api.Error
	if !errors.As(err, &e) {
		t.Fatalf("got %v, want an *api.Error", err)
	}
	md := map[string]string{}
	for k, v := range e.Metadata {
		md[k] = v
	}
	if md[api.MetadataRequestID] == "" {
		t.Errorf("refusal %v has no upstream request id", err)
	}
	delete(md, api.MetadataRequestID)
	return e.Code, e.Reason, md
}

// sameRefusal checks that err, under shared reads, is what the caller
// gets from a server without them.
func sameRefusal(t *testing.T, err error, tok string, req *buildlogv1.DownloadTaskLogRequest, setup func(*env)) {
	t.Helper()
	alone := newEnv(t, service.WithChunkSize(sharedChunk))
	setup(alone)
	_, want := alone.download(withToken(t.Context(), tok), t, req)
	gc, gr, gm := refusal(t, err)
	wc, wr, wm := refusal(t, want)
	if gc != wc || gr != wr || fmt.Sprint(gm) != fmt.Sprint(wm) {
		t.Errorf("shared: %s %s %v; alone: %s %s %v", gc, gr, gm, wc, wr, wm)
	}
}

func TestSharedReadRefusesABadTokenAsAlone(t *testing.T) {
	t.Parallel()
	const size = 1 << 20
	setup := func(e *env) { e.up.AddLog(recordID, "stage1", upstreamtest.Log{Size: size}) }
	e := newSharedEnv(t, time.Minute)
	setup(e)
	// The good caller's read stays in flight: it stalls half way.
	e.up.Inject(upstreamtest.Fault{Stall: true, StallAfter: size / 2})
	req := &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"}
	d, err := e.open(withToken(t.Context(), token), req)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(nil)
	c, err := d.Next()
	if err != nil {
		t.Fatal(err)
	}
	c.Release()

	const bad = "MIIEnot-a-valid-token"
	msgs, err := e.download(withToken(t.Context(), bad), t, req)
	if len(msgs) != 0 {
		t.Fatalf("the bad token received %d messages", len(msgs))
	}
	if code, reason, _ := refusal(t, err); code != codes.Unauthenticated || reason != api.ReasonUpstreamUnauthenticated {
		t.Fatalf("got %v, want UNAUTHENTICATED %s", err, api.ReasonUpstreamUnauthenticated)
	}
	var e1 *api.Error
	errors.As(err, &e1)
	if e1.Metadata[api.MetadataRequestID] == d.Metadata().GetRequestId() {
		t.Error("the refusal carries the other caller's request id")
	}
	if requestsWith(e.up, bad) != 1 {
		t.Errorf("the bad token's own request reached the upstream %d times, want once", requestsWith(e.up, bad))
	}
	sameRefusal(t, err, bad, req, setup)
}

func TestSharedReadForbiddenForOneCallerAllowedForAnother(t *testing.T) {
	t.Parallel()
	const size = 1 << 20
	const allowed, forbidden = token + "-allowed", token + "-forbidden"
	setup := func(e *env) {
		e.up.AddToken(allowed)
		e.up.AddToken(forbidden)
		e.up.Restrict(forbidden, "ffffffff-0000-4000-8000-000000000000") // another record
		e.up.AddLog(recordID, "stage1", upstreamtest.Log{Size: size})
	}
	req := &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"}
	want := upstreamtest.Generate(size, "INFO", "stage1")
	for _, order := range []struct {
		name          string
		first, second string
	}{
		{"allowed reads first, the forbidden joins", allowed, forbidden},
		{"forbidden reads first, the allowed joins", forbidden, allowed},
	} {
		t.Run(order.name, func(t *testing.T) {
			t.Parallel()
			e := newSharedEnv(t, time.Minute)
			setup(e)
			hold := make(chan struct{})
			e.up.Inject(upstreamtest.Fault{Hold: hold})
			results := make(map[string]result)
			var mu sync.Mutex
			var wg sync.WaitGroup
			run := func(tok string) {
				wg.Go(func() {
					r := e.readAll(withToken(t.Context(), tok), t, req)
					mu.Lock()
					results[tok] = r
					mu.Unlock()
				})
			}
			run(order.first)
			waitFor(t, "the first read", func() bool { return e.up.RequestCount() == 1 })
			run(order.second)
			if order.second == forbidden {
				// Its proof is refused at once; the held read goes on after.
				waitFor(t, "the forbidden caller's refusal", func() bool {
					mu.Lock()
					defer mu.Unlock()
					_, ok := results[forbidden]
					return ok
				})
			} else {
				waitFor(t, "the second caller to join", func() bool { return sharedPending(e) })
			}
			close(hold)
			wg.Wait()
			if r := results[allowed]; r.err != nil || !bytes.Equal(r.data, want) {
				t.Fatalf("allowed caller: %d bytes, %v; want the log", len(r.data), r.err)
			}
			r := results[forbidden]
			if len(r.data) != 0 {
				t.Fatalf("the forbidden caller received %d bytes", len(r.data))
			}
			if code, reason, md := refusal(t, r.err); code != codes.PermissionDenied || reason != api.ReasonUpstreamPermissionDenied || md[api.MetadataUpstreamErrorCode] != upstreamtest.ForbiddenCode {
				t.Fatalf("forbidden caller: %v, want PERMISSION_DENIED %s with %s", r.err, api.ReasonUpstreamPermissionDenied, upstreamtest.ForbiddenCode)
			}
			sameRefusal(t, r.err, forbidden, req, setup)
		})
	}
}

// sharedPending reports whether a download waits to ride another's read
// (it joined, the read's answer is not in).
func sharedPending(e *env) bool { return service.SharedWaiting(e.svc) > 0 }

func TestSharedFollowStopsARevokedToken(t *testing.T) {
	t.Parallel()
	e := newSharedEnv(t, 30*time.Millisecond)
	toks := tokens(e, 2)
	revoked, kept := toks[0], toks[1]
	a := e.up.AddAction(recordID, "stage1", upstreamtest.Action{Log: upstreamtest.Log{Size: 4 << 20}})
	a.Grow(1000)
	req := func() *buildlogv1.DownloadTaskLogRequest {
		return &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"}
	}

	var wg sync.WaitGroup
	var gotRevoked, gotKept followed
	revokedDone := make(chan struct{})
	wg.Go(func() {
		defer close(revokedDone)
		gotRevoked = e.follow(t, withToken(t.Context(), revoked), req(), time.Time{}, nil)
	})
	wg.Go(func() {
		gotKept = e.follow(t, withToken(t.Context(), kept), req(), time.Time{}, nil)
	})
	// The log grows while both follow; once the first token is revoked,
	// the log grows on until its follower is refused, then finishes.
	waitFor(t, "both followers polling", func() bool { return requestsWith(e.up, revoked) > 1 && requestsWith(e.up, kept) > 1 })
	e.up.RevokeToken(revoked)
	for grown := false; !grown; {
		select {
		case <-revokedDone:
			grown = true
		case <-time.After(5 * time.Millisecond):
			a.Grow(100)
		}
	}
	a.Finish()
	wg.Wait()

	wantError(t, gotRevoked.err, codes.Unauthenticated, api.ReasonUpstreamUnauthenticated)
	final := upstreamtest.Generate(4<<20, "INFO", "stage1")[:a.Size()]
	if gotKept.err != nil || !bytes.Equal(gotKept.data, final) {
		t.Fatalf("the other follower: %d bytes, %v; want the whole log", len(gotKept.data), gotKept.err)
	}
	if !bytes.Equal(gotRevoked.data, final[:len(gotRevoked.data)]) {
		t.Fatal("the revoked follower's bytes are not a prefix of the log")
	}
}

func TestSharedFollowersAndReadersRace(t *testing.T) {
	t.Parallel()
	e := newSharedEnv(t, 50*time.Millisecond)
	toks := tokens(e, 12)
	const final = 200_000
	e.up.AddAction(recordID, "stage1", upstreamtest.Action{Log: upstreamtest.Log{Size: final}, Step: 997, Every: 2 * time.Millisecond})
	e.up.AddLog(recordID, "stage2", upstreamtest.Log{Size: 300_000})
	var wg sync.WaitGroup
	followers := make([]followed, 8)
	for i := range followers {
		wg.Go(func() {
			followers[i] = e.follow(t, withToken(t.Context(), toks[i]), &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"}, time.Time{}, nil)
		})
	}
	readers := make([]result, 8)
	for i := range readers {
		wg.Go(func() {
			readers[i] = e.readAll(withToken(t.Context(), toks[8+i%4]), t, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage2", Offset: int64(i * 1000)})
		})
	}
	wg.Wait()
	want := upstreamtest.Generate(final, "INFO", "stage1")
	for i, f := range followers {
		if f.err != nil || !bytes.Equal(f.data, want) {
			t.Errorf("follower %d: %d bytes, %v", i, len(f.data), f.err)
		}
	}
	log2 := upstreamtest.Generate(300_000, "INFO", "stage2")
	for i, r := range readers {
		if r.err != nil || !bytes.Equal(r.data, log2[i*1000:]) {
			t.Errorf("reader %d: %d bytes, %v", i, len(r.data), r.err)
		}
	}
}
