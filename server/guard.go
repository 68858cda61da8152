package server

import (
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/buildlog/buildlog/api"
	"github.com/buildlog/buildlog/service"
)

// Rapid reset. A client may open HTTP/2 streams and cancel them at once
// (or give them a deadline as short), faster than any work could be
// refused, to make the server start calls (and upstream requests) for
// nothing. Each client connection gets a guard, which counts the downloads
// its client ended that way, without a byte and within earlyWindow; a
// client doing that faster than early cancels allow is cut off: its
// connection sent GOAWAY ENHANCE_YOUR_CALM and closed soon after, and its
// further calls refused before they reach the service. The access log gets
// one line for the connection, not one per call.
const (
	earlyCancelBurst = 16 // early cancels allowed at once
	earlyCancelRate  = 8  // ... and per second after
	// restPenalty holds each request of a REST connection that was cut
	// off, until it closes: net/http, with MaxStreamsPerConnection
	// handlers held and four times as many waiting, closes it sooner, with
	// GOAWAY ENHANCE_YOUR_CALM ("too_many_early_resets").
	restPenalty = time.Second
)

// earlyWindow is how soon after it started a download must end, without
// a byte, to count as cancelled early: calls given up on after a slow
// upstream are not rapid resets.
const earlyWindow = time.Second

// connGuard watches one client connection.
type connGuard struct {
	logger    *slog.Logger
	transport service.Transport
	remote    string
	cutOff    func()    // closes the connection, with GOAWAY where it can
	opened    time.Time // when the connection was accepted

	mu      sync.Mutex
	tokens  float64
	last    time.Time
	cancels int  // early cancels counted
	tripped bool // the connection is cut off
}

func newConnGuard(logger *slog.Logger, t service.Transport, remote net.Addr, cutOff func()) *connGuard {
	return &connGuard{logger: logger, transport: t, remote: remote.String(), cutOff: cutOff, tokens: earlyCancelBurst, last: time.Now(), opened: time.Now()}
}

// ended counts a download of the connection that ended, cancelled early
// (or past a deadline the client set as short), and cuts the connection
// off when there were too many.
func (g *connGuard) ended(e *service.Ended) {
	if e.Err == nil || e.Bytes > 0 || e.Duration > earlyWindow || (e.Err.Code != codes.Canceled && e.Err.Code != codes.DeadlineExceeded) {
		return
	}
	g.mu.Lock()
	now := time.Now()
	g.tokens = min(earlyCancelBurst, g.tokens+now.Sub(g.last).Seconds()*earlyCancelRate)
	g.last = now
	g.tokens--
	g.cancels++
	trip := g.tokens < 0 && !g.tripped
	g.tripped = g.tripped || trip
	cancels := g.cancels
	g.mu.Unlock()
	if trip {
		g.logger.Warn("closing connection: its client cancels calls before they start, faster than a client needs (HTTP/2 rapid reset)",
			"path", string(g.transport), "remote", g.remote, "cancelled_calls", cancels)
		g.cutOff()
	}
}

func (g *connGuard) isTripped() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.tripped
}

// guardKey is the context key of a call's connection guard.
type guardKey struct{}

func guardFrom(ctx context.Context) *connGuard {
	g, _ := ctx.Value(guardKey{}).(*connGuard)
	return g
}

// connectionClosing is what a call on a connection cut off gets.
var connectionClosing = &api.Error{Code: codes.Unavailable, Reason: api.ReasonConnectionClosing,
	Message: "this connection is being closed: its calls were cancelled before they started faster than a client needs; reconnect"}

// gRPC: the transport credentials give each connection a guard, through
// its AuthInfo, and a way to close it with GOAWAY; the tap handle refuses
// calls on a connection cut off.

// guardedCreds wraps the gRPC server's transport credentials.
type guardedCreds struct {
	credentials.TransportCredentials
	logger *slog.Logger
}

// guardedAuthInfo is a connection's AuthInfo with its guard.
type guardedAuthInfo struct {
	credentials.AuthInfo
	guard *connGuard
}

func (c guardedCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		return nil, nil, err
	}
	gc := &goAwayConn{Conn: conn}
	return gc, guardedAuthInfo{AuthInfo: info, guard: newConnGuard(c.logger, service.GRPC, raw.RemoteAddr(), gc.goAway)}, nil
}

func (c guardedCreds) Clone() credentials.TransportCredentials {
	return guardedCreds{TransportCredentials: c.TransportCredentials.Clone(), logger: c.logger}
}

// tapCall is the gRPC server's InTapHandle, run for each new stream
// before its handler: it refuses calls on a connection cut off, and gives
// the others their connection's guard.
func tapCall(ctx context.Context, _ *tap.Info) (context.Context, error) {
	if p, ok := peer.FromContext(ctx); ok {
		if ga, ok := p.AuthInfo.(guardedAuthInfo); ok {
			if ga.guard.isTripped() {
				return nil, status.Error(connectionClosing.Code, connectionClosing.Message)
			}
			ctx = context.WithValue(ctx, guardKey{}, ga.guard)
		}
	}
	return ctx, nil
}

// goAwayConn is a server's HTTP/2 connection that can be closed with a
// GOAWAY of its own: it follows the frames the server writes, so as to
// put the GOAWAY between two of them.
type goAwayConn struct {
	net.Conn

	mu      sync.Mutex
	head    [9]byte // the frame header being written, when incomplete
	headLen int
	left    int  // bytes of the current frame's payload still to write
	pending bool // write the GOAWAY at the next frame boundary
}

// goAwayFrame is GOAWAY ENHANCE_YOUR_CALM with the last stream id left at
// its largest value: the calls under way may end, and the client must
// retry none of them.
var goAwayFrame = func() []byte {
	debug := "too_many_early_resets"
	f := make([]byte, 9+8+len(debug))
	f[2], f[3] = byte(8+len(debug)), 0x7 // length, type GOAWAY
	binary.BigEndian.PutUint32(f[9:], 1<<31-1)
	binary.BigEndian.PutUint32(f[13:], 0xb) // ENHANCE_YOUR_CALM
	copy(f[17:], debug)
	return f
}()

// goAwayGrace is how long the calls under way on a connection cut off may
// go on before it closes; meanwhile its new calls are refused.
const goAwayGrace = 2 * time.Second

// goAway writes the GOAWAY (at once when no frame is half written, else
// as soon as it is) and closes the connection after goAwayGrace.
func (c *goAwayConn) goAway() {
	c.mu.Lock()
	if c.headLen == 0 && c.left == 0 {
		c.Conn.Write(goAwayFrame)
	} else {
		c.pending = true
	}
	c.mu.Unlock()
	time.AfterFunc(goAwayGrace, func() { c.Conn.Close() })
}

func (c *goAwayConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	written := 0
	for n := 0; n < len(p); {
		if c.left > 0 {
			k := min(c.left, len(p)-n)
			c.left -= k
			n += k
		} else {
			k := copy(c.head[c.headLen:], p[n:])
			c.headLen += k
			n += k
			if c.headLen == len(c.head) {
				c.left, c.headLen = int(c.head[0])<<16|int(c.head[1])<<8|int(c.head[2]), 0
			}
		}
		if c.pending && c.left == 0 && c.headLen == 0 {
			w, err := c.Conn.Write(p[written:n])
			if written += w; err != nil {
				return written, err
			}
			c.Conn.Write(goAwayFrame)
			c.pending = false
		}
	}
	w, err := c.Conn.Write(p[written:])
	return written + w, err
}

// REST: the server's ConnContext gives each connection a guard; a request
// on a connection cut off is held, so that net/http closes it.

// restConnContext is the REST server's ConnContext. A connection cut off
// is closed after goAwayGrace; before that, a client that resets its
// streams faster than they are held has net/http close it first, with
// GOAWAY ENHANCE_YOUR_CALM.
func (s *Server) restConnContext(ctx context.Context, c net.Conn) context.Context {
	cutOff := func() { time.AfterFunc(goAwayGrace, func() { c.Close() }) }
	return context.WithValue(ctx, guardKey{}, newConnGuard(s.cfg.Logger, service.REST, c.RemoteAddr(), cutOff))
}

// holdIfCutOff holds a request of a connection cut off, and reports
// whether it did.
func holdIfCutOff(w http.ResponseWriter, r *http.Request) bool {
	if g := guardFrom(r.Context()); g == nil || !g.isTripped() {
		return false
	}
	time.Sleep(restPenalty)
	connectionClosing.WriteREST(w, connectionClosing.HTTPStatus())
	return true
}
