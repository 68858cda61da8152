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

// Rapid reset. A client may open HTTP/2 streams and cancel them at once,
// faster than any work could be refused, to make the server start calls
// (and upstream requests) for nothing. Each client connection gets a
// guard, which counts the downloads its client cancelled before they
// delivered a byte; a client doing that faster than early cancels allow is
// cut off: its connection closed with GOAWAY ENHANCE_YOUR_CALM, and its
// further calls refused before they reach the service. The access log
// gets one line for the connection, not one per call.
const (
	earlyCancelBurst = 16 // early cancels allowed at once
	earlyCancelRate  = 8  // ... and per second after
	// restPenalty holds each request of a REST connection that was cut
	// off: net/http, with MaxStreamsPerConnection handlers held and four
	// times as many waiting, then closes the connection itself with
	// GOAWAY ENHANCE_YOUR_CALM ("too_many_early_resets").
	restPenalty = time.Second
)

// connGuard watches one client connection.
type connGuard struct {
	logger    *slog.Logger
	transport service.Transport
	remote    string
	cutOff    func() // closes the connection, with GOAWAY where it can

	mu      sync.Mutex
	tokens  float64
	last    time.Time
	cancels int  // early cancels counted
	tripped bool // the connection is cut off
}

func newConnGuard(logger *slog.Logger, t service.Transport, remote net.Addr, cutOff func()) *connGuard {
	return &connGuard{logger: logger, transport: t, remote: remote.String(), cutOff: cutOff, tokens: earlyCancelBurst, last: time.Now()}
}

// canceledEarly counts a download the client cancelled before it
// delivered a byte, and cuts the connection off when there were too many.
func (g *connGuard) canceledEarly() {
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
	closed  bool
}

// goAwayFrame is GOAWAY ENHANCE_YOUR_CALM with the last stream id left at
// its largest value: the client must retry none of its calls.
var goAwayFrame = func() []byte {
	debug := "too_many_early_resets"
	f := make([]byte, 9+8+len(debug))
	f[2], f[3] = byte(8+len(debug)), 0x7 // length, type GOAWAY
	binary.BigEndian.PutUint32(f[9:], 1<<31-1)
	binary.BigEndian.PutUint32(f[13:], 0xb) // ENHANCE_YOUR_CALM
	copy(f[17:], debug)
	return f
}()

// goAway writes the GOAWAY and closes the connection, at once when no
// frame is half written, else once it is (or after a second at most).
func (c *goAwayConn) goAway() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.headLen == 0 && c.left == 0 {
		c.closeLocked()
		return
	}
	c.pending = true
	time.AfterFunc(time.Second, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.closed = true
		c.Conn.Close()
	})
}

func (c *goAwayConn) closeLocked() {
	if !c.closed {
		c.Conn.Write(goAwayFrame)
		c.closed = true
		c.Conn.Close()
	}
}

func (c *goAwayConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	n := 0
	for n < len(p) {
		switch {
		case c.left > 0:
			k := min(c.left, len(p)-n)
			c.left -= k
			n += k
		default:
			k := copy(c.head[c.headLen:], p[n:])
			c.headLen += k
			n += k
			if c.headLen == len(c.head) {
				c.left, c.headLen = int(c.head[0])<<16|int(c.head[1])<<8|int(c.head[2]), 0
			}
		}
		if c.pending && c.left == 0 && c.headLen == 0 {
			w, err := c.Conn.Write(p[:n])
			if err == nil {
				c.closeLocked()
			}
			return w, err
		}
	}
	return c.Conn.Write(p)
}

// REST: the server's ConnContext gives each connection a guard; a request
// on a connection cut off is held, so that net/http closes it.

// restConnContext is the REST server's ConnContext.
func (s *Server) restConnContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, guardKey{}, newConnGuard(s.cfg.Logger, service.REST, c.RemoteAddr(), func() {}))
}

// holdIfCutOff holds a request of a connection cut off, and reports
// whether it did.
func holdIfCutOff(w http.ResponseWriter, r *http.Request) bool {
	if g := guardFrom(r.Context()); g == nil || !g.isTripped() {
		return false
	}
	time.Sleep(restPenalty)
	w.Header().Set("Connection", "close")
	connectionClosing.WriteREST(w, connectionClosing.HTTPStatus())
	return true
}
