package server_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/buildlog/buildlog/api"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/internal/syncbuf"
	"github.com/buildlog/buildlog/server"
	"github.com/buildlog/buildlog/server/servertest"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// A header list larger than the longest token allows is refused while it
// is read, on both listeners, and never reaches the upstream.
func TestOversizedHeadersAreRefused(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: 100})
	huge := "MIIB" + strings.Repeat("Q", 2<<20)

	resp, _, _ := s.Get(t, logPath("stage1"), huge)
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("REST with a 2 MiB token: HTTP %d, want 431", resp.StatusCode)
	}
	ctx := metadata.AppendToOutgoingContext(context.Background(), api.TokenMetadataKey, huge)
	stream, err := s.Client.DownloadTaskLog(ctx, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"})
	if err == nil {
		_, err = stream.Recv()
	}
	if err == nil || !strings.Contains(status.Convert(err).Message(), "maximum size") {
		t.Errorf("gRPC with a 2 MiB token: %v, want the header list refused for its size", err)
	}

	// A client that ignores the advertised limit has its connection closed,
	// whether one field is too long or many fields add up to too much
	// (golang.org/x/net/http2 closes it rather than read on), and a new
	// connection is served.
	var many [][2]string
	for i := range 64 {
		many = append(many, [2]string{fmt.Sprintf("x-padding-%d", i), strings.Repeat("p", 4<<10)})
	}
	for name, extra := range map[string][][2]string{"one 2 MiB field": {{"x-padding", huge}}, "64 fields of 4 KiB": many} {
		if served, err := rawCall(s.GRPCAddr, extra); served || err == nil {
			t.Errorf("raw HTTP/2 call with %s: served %v, %v; want the connection closed", name, served, err)
		}
	}
	if n := s.Upstream.RequestCount(); n != 0 {
		t.Errorf("the upstream got %d requests, want none", n)
	}
	if _, err := s.Download(&buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"}); err != nil {
		t.Errorf("a download after the refused ones: %v", err)
	}
}

// rawCall opens an HTTP/2 connection to the gRPC server at addr and sends
// a call with a valid token and the extra fields, in HEADERS and
// CONTINUATION frames of 16 KiB, whatever limit the server advertised. It
// reports whether the server answered the call, and the error that ended
// the connection.
func rawCall(addr string, extra [][2]string) (served bool, err error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range append([][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", "/buildlog.v1.BuildLogService/DownloadTaskLog"},
		{":authority", addr}, {"content-type", "application/grpc"}, {"te", "trailers"}, {api.TokenMetadataKey, servertest.Token}}, extra...) {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	b := block.Bytes()
	fr := http2.NewFramer(conn, conn)
	conn.Write([]byte(http2.ClientPreface))
	fr.WriteSettings()
	first := b[:min(len(b), 16<<10)]
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: first, EndHeaders: len(first) == len(b), EndStream: true})
	for b = b[len(first):]; len(b) > 0; {
		n := min(len(b), 16<<10)
		fr.WriteContinuation(1, n == len(b), b[:n])
		b = b[n:]
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return false, err
		}
		switch f := f.(type) {
		case *http2.HeadersFrame:
			return true, nil
		case *http2.GoAwayFrame:
			return false, fmt.Errorf("GOAWAY %v", f.ErrCode)
		}
	}
}

// One connection cannot take every download slot: its calls beyond
// MaxStreamsPerConnection wait for one of its own to end, while another
// connection is served.
func TestOneConnectionCannotTakeEverySlot(t *testing.T) {
	t.Parallel()
	s := servertest.StartWith(t, func(c *server.Config) {
		c.MaxDownloads, c.MaxStreamsPerConnection, c.ChunkSize = 6, 3, 4<<10
	})
	s.Upstream.AddLog(recordID, "big", upstreamtest.Log{Size: 64 << 20})
	s.Upstream.AddLog(recordID, "small", upstreamtest.Log{Size: 100})
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), api.TokenMetadataKey, servertest.Token))
	defer cancel()
	for range 3 {
		stream, err := s.Client.DownloadTaskLog(ctx, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "big"})
		if err == nil {
			_, err = stream.Recv()
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	requests := s.Upstream.RequestCount()
	waiting, cancelWaiting := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelWaiting()
	stream, err := s.Client.DownloadTaskLog(waiting, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "small"})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.DeadlineExceeded || s.Upstream.RequestCount() != requests {
		t.Errorf("a fourth call on the connection: %v after %d upstream requests; want it to wait (DEADLINE_EXCEEDED), unstarted",
			err, s.Upstream.RequestCount()-requests)
	}

	other, err := grpc.NewClient(s.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	stream, err = buildlogv1.NewBuildLogServiceClient(other).DownloadTaskLog(ctx, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "small"})
	if err == nil {
		_, err = stream.Recv()
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("a call on another connection: %v, want it served", err)
	}
}

// rapidReset opens streams on one HTTP/2 connection to addr and resets each
// at once (or gives each a deadline of 5 ms), up to n of them, until the
// server closes the connection. It
// returns the error code of the server's GOAWAY (0xffffffff without one)
// and how many streams it opened.
func rapidReset(t *testing.T, addr string, n int, grpcCall, deadline bool) (http2.ErrCode, int) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Minute))
	fr := http2.NewFramer(conn, conn)
	goAway := make(chan http2.ErrCode, 1)
	go func() {
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				goAway <- 0xffffffff
				return
			}
			if ga, ok := f.(*http2.GoAwayFrame); ok {
				goAway <- ga.ErrCode
				return
			}
		}
	}()
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	request := []byte{0, 0, 0, 0, 0}
	msg, _ := proto.Marshal(&buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"})
	request[4] = byte(len(msg))
	request = append(request, msg...)
	conn.Write([]byte(http2.ClientPreface))
	fr.WriteSettings()
	// Streams are opened in batches, then reset: each batch's calls have
	// started, some of them with their upstream requests.
	const batch = 50
	opened := 0
	for opened < n {
		var err error
		for i := range batch {
			id := uint32(2*(opened+i) + 1)
			block.Reset()
			fields := [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", logPath("stage1")}, {":authority", addr}, {"x-auth-token", token}}
			if grpcCall {
				fields = [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", "/buildlog.v1.BuildLogService/DownloadTaskLog"},
					{":authority", addr}, {"content-type", "application/grpc"}, {"te", "trailers"}, {"x-auth-token", token}}
			}
			if deadline {
				fields = append(fields, [2]string{"grpc-timeout", "5m"}) // 5 ms
			}
			for _, f := range fields {
				enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
			}
			if err = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block.Bytes(), EndHeaders: true, EndStream: !grpcCall}); err == nil && grpcCall {
				err = fr.WriteData(id, true, request)
			}
		}
		for i := 0; i < batch && err == nil && !deadline; i++ {
			err = fr.WriteRSTStream(uint32(2*(opened+i)+1), http2.ErrCodeCancel)
		}
		if err != nil {
			break
		}
		opened += batch
	}
	return <-goAway, opened
}

// A client that opens streams and cancels them at once is cut off, on
// both listeners: its connection closed with GOAWAY ENHANCE_YOUR_CALM and
// one log line, after few of its streams reached the upstream.
func TestRapidResetIsCutOff(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name           string
		grpc, deadline bool
	}{{"gRPC", true, false}, {"REST", false, false}, {"gRPC, 5 ms deadlines", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			logs := &syncbuf.Buffer{}
			s := servertest.StartWith(t, func(c *server.Config) {
				c.Logger = slog.New(slog.NewJSONHandler(logs, nil))
			})
			s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: 64 << 10})
			if tc.deadline {
				// No byte comes before the deadline, however loaded the machine.
				s.Upstream.Inject(upstreamtest.Fault{Delay: time.Second, Times: -1})
			}
			addr := s.GRPCAddr
			if !tc.grpc {
				addr = strings.TrimPrefix(s.RESTURL, "http://")
			}
			const streams = 20_000
			code, opened := rapidReset(t, addr, streams, tc.grpc, tc.deadline)
			if code != http2.ErrCodeEnhanceYourCalm {
				t.Errorf("after %d reset streams: GOAWAY %v, want ENHANCE_YOUR_CALM", opened, code)
			}
			t.Logf("%d streams opened and reset; %d reached the upstream", opened, s.Upstream.RequestCount())
			// Of the streams the client meant to reset, under 1% reach the
			// upstream: those of its first batches, before it is cut off.
			if n := s.Upstream.RequestCount(); n*100 >= streams {
				t.Errorf("%d upstream requests for %d reset streams sent (%d before the connection closed), want under 1%%", n, streams, opened)
			}
			if n := strings.Count(logs.String(), "closing connection"); n != 1 {
				t.Errorf("%d log lines about closing the connection, want 1", n)
			}
			// Other connections are served.
			if tc.grpc {
				if _, err := s.Download(&buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1"}); err != nil {
					t.Errorf("a download on another connection: %v", err)
				}
			} else if resp, _, err := s.Get(t, logPath("stage1"), token); err != nil || resp.StatusCode != http.StatusOK {
				t.Errorf("a download on another connection: %v, %v", resp.Status, err)
			}
		})
	}
}

// Readers that stop reading are ended after the caller idle timeout and
// free their download slots; a gRPC reader that reads on learns where to
// resume, a REST reader sees its transfer aborted. Waiting for the
// upstream does not count.
func TestIdleCallersFreeTheirSlots(t *testing.T) {
	t.Parallel()
	s := servertest.StartWith(t, func(c *server.Config) {
		c.MaxDownloads, c.CallerIdleTimeout = 8, 300*time.Millisecond
	})
	s.Upstream.AddLog(recordID, "big", upstreamtest.Log{Size: 256 << 20})
	s.Upstream.AddLog(recordID, "small", upstreamtest.Log{Size: 100})
	// A small window, so that a reader that stops holds up the server's
	// sends quickly.
	conn, err := grpc.NewClient(s.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(context.Background(), api.TokenMetadataKey, servertest.Token)
	var streams []grpc.ServerStreamingClient[buildlogv1.DownloadTaskLogResponse]
	for range 4 {
		stream, err := buildlogv1.NewBuildLogServiceClient(conn).DownloadTaskLog(ctx, &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "big"})
		if err == nil {
			_, err = stream.Recv()
		}
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, stream)
	}
	var bodies []io.ReadCloser
	for range 4 {
		req, _ := http.NewRequest(http.MethodGet, s.RESTURL+logPath("big"), nil)
		req.Header.Set("X-Auth-Token", servertest.Token)
		resp, err := (&http.Client{Transport: &http.Transport{}}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Read(make([]byte, 1000))
		bodies = append(bodies, resp.Body)
	}

	// Every slot is taken until the idle readers are ended.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		_, families := scrape(t, s)
		grpcActive, _ := metricValue(families, "buildlog_active_streams", map[string]string{"path": "grpc"})
		restActive, _ := metricValue(families, "buildlog_active_streams", map[string]string{"path": "rest"})
		if grpcActive+restActive == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v gRPC and %v REST downloads still active, want the idle readers ended", grpcActive, restActive)
		}
	}
	if _, err := s.Download(&buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "small"}); err != nil {
		t.Fatalf("a new download: %v, want it served once the idle readers are ended", err)
	}
	for i, stream := range streams {
		var received int64 = 64 << 10 // about the first message
		var err error
		for err == nil {
			var msg *buildlogv1.DownloadTaskLogResponse
			if msg, err = stream.Recv(); err == nil {
				received = msg.GetOffset() + int64(len(msg.GetData()))
			}
		}
		e, _ := api.FromError(err)
		if e.Code != codes.Unavailable || e.Reason != api.ReasonCallerIdle || e.Metadata[api.MetadataResumeOffset] != strconv.FormatInt(received, 10) {
			t.Errorf("gRPC reader %d, after %d bytes: %v %v, want UNAVAILABLE %s with resumeOffset %d", i, received, e.Code, e.Metadata, api.ReasonCallerIdle, received)
		}
	}
	for i, body := range bodies {
		if n, err := io.Copy(io.Discard, body); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("REST reader %d: read %d more bytes, then %v; want the transfer aborted", i, n, err)
		}
		body.Close()
	}

	// An upstream slower than the caller idle timeout is waited for.
	s.Upstream.Inject(upstreamtest.Fault{DripBytes: 20, DripEvery: 200 * time.Millisecond})
	if data, err := s.Download(&buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "small"}); err != nil || len(data) != 100 {
		t.Errorf("a download from a slow upstream: %d bytes, %v; want all 100", len(data), err)
	}
}

// A caller idle timeout that fires as its download ends never reaches the
// transport after the handler has returned (it crashed the process on
// HTTP/2, and broke the next request of an HTTP/1.1 connection).
func TestIdleTimeoutRacingTheEndOfADownload(t *testing.T) {
	t.Parallel()
	s := servertest.StartWith(t, func(c *server.Config) { c.CallerIdleTimeout = 50 * time.Microsecond })
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: 40 << 10})
	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true)
	clients := []*http.Client{{Transport: &http.Transport{Protocols: &h2c}}, {Transport: &http.Transport{}}}
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Go(func() {
			defer c.CloseIdleConnections()
			for range 500 {
				req, _ := http.NewRequest(http.MethodGet, s.RESTURL+logPath("stage1"), nil)
				req.Header.Set("X-Auth-Token", servertest.Token)
				if resp, err := c.Do(req); err == nil {
					io.Copy(io.Discard, resp.Body) // complete, or cut by the timeout
					resp.Body.Close()
				}
			}
		})
	}
	wg.Wait()
	if resp, _, err := s.Get(t, "/openapi.json", ""); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("the server after the race: %v, %v", resp.Status, err)
	}
}

// A REST client giving its requests a deadline too short to deliver a byte
// (Grpc-Timeout, as grpc-gateway reads it) is cut off as one resetting them
// is: one log line, its connection closed after a bounded number of
// upstream requests, however many it sends.
func TestShortRESTDeadlinesAreCutOff(t *testing.T) {
	t.Parallel()
	logs := &syncbuf.Buffer{}
	s := servertest.StartWith(t, func(c *server.Config) { c.Logger = slog.New(slog.NewJSONHandler(logs, nil)) })
	s.Upstream.AddLog(recordID, "stage1", upstreamtest.Log{Size: 64 << 10})
	s.Upstream.Inject(upstreamtest.Fault{Delay: 50 * time.Millisecond, Times: -1})
	// One connection, the client's every request on it.
	conn, err := net.Dial("tcp", strings.TrimPrefix(s.RESTURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	//lint:ignore SA1019 x/net/http2's ClientConn alone keeps every request on one connection.
	cc, err := (&http2.Transport{}).NewClientConn(conn)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	const requests, workers = 3000, 50
	var wg sync.WaitGroup
	var failed atomic.Int32
	for w := range workers {
		wg.Go(func() {
			for i := w; i < requests && failed.Load() == 0; i += workers {
				req, _ := http.NewRequest(http.MethodGet, s.RESTURL+logPath("stage1"), nil)
				req.Header.Set("X-Auth-Token", token)
				req.Header.Set("Grpc-Timeout", "5m") // 5 ms
				resp, err := cc.RoundTrip(req)
				if err != nil {
					failed.Add(1) // the connection is closed
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
	if failed.Load() == 0 {
		t.Error("every request was served: the connection was not closed")
	}
	if n := strings.Count(logs.String(), "closing connection"); n != 1 {
		t.Errorf("%d log lines about closing the connection, want 1", n)
	}
	if n := s.Upstream.RequestCount(); n > 2*server.DefaultConfig().MaxStreamsPerConnection {
		t.Errorf("%d upstream requests, want at most two waves of a connection's streams", n)
	}
}
