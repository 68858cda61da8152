// Package liblog routes what the libraries under buildlogd log on their
// own (grpc-go and grpc-gateway through grpclog, net/http servers through
// their ErrorLog, net/http's client through the standard log package) into
// buildlogd's structured log, and keeps a peer from flooding it: each kind
// of line is let through in a burst, then once per interval, with the
// number of lines held back (see [Limit]).
package liblog

import (
	"context"
	"log"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/grpclog"
)

// Install routes grpclog and the standard log package to logger, process
// wide: call it once, from main, before gRPC starts.
func Install(logger *slog.Logger) {
	grpclog.SetLoggerV2(NewGRPCLogger(logger))
	log.SetFlags(0)
	log.SetOutput(stdWriter{Limit(logger.With("logger", "stdlib"))})
}

// ErrorLog returns a net/http server's ErrorLog that writes to logger at
// warn level: a client's failures (a TLS handshake error, a broken
// connection) are not buildlogd's.
func ErrorLog(logger *slog.Logger) *log.Logger {
	return slog.NewLogLogger(Limit(logger.With("logger", "http")).Handler(), slog.LevelWarn)
}

// maxLine caps a library's log message.
const maxLine = 1 << 10

// stdWriter logs the standard log package's lines at warn level, without
// the strings they quote: net/http's client quotes what an upstream sent
// on an idle connection ("Unsolicited response received on idle HTTP
// channel starting with …"), up to 64 KiB of build-log bytes.
type stdWriter struct{ l *slog.Logger }

func (w stdWriter) Write(p []byte) (int, error) {
	w.l.Warn(capLine(withoutQuoted(strings.TrimSpace(string(p)))))
	return len(p), nil
}

// withoutQuoted replaces each Go-quoted string in s with its length.
func withoutQuoted(s string) string {
	var b strings.Builder
	for {
		i := strings.IndexByte(s, '"')
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:i])
		q, err := strconv.QuotedPrefix(s[i:])
		if err != nil {
			b.WriteString(s[i:])
			return b.String()
		}
		text, _ := strconv.Unquote(q)
		b.WriteString("<" + strconv.Itoa(len(text)) + " bytes>")
		s = s[i+len(q):]
	}
}

func capLine(s string) string {
	if len(s) <= maxLine {
		return s
	}
	return strings.ToValidUTF8(s[:maxLine], "") + "…"
}

// Burst and interval of [Limit].
const (
	limitBurst    = 10
	limitInterval = 10 * time.Second
	// maxKinds bounds the kinds of line tracked; lines of further kinds
	// share one budget.
	maxKinds = 128
)

// Limit returns a logger that lets through, of each kind of line (its
// message without digits, so that one kind spans every address and port),
// 10 at once and then one every 10 seconds. A line let through after some
// were held back carries "suppressed", their number; while lines are held
// back, the last of them is written once its turn comes even when no other
// line of the kind follows, so the count is never lost.
func Limit(logger *slog.Logger) *slog.Logger {
	return slog.New(newLimitHandler(logger.Handler(), limitBurst, limitInterval))
}

func newLimitHandler(h slog.Handler, burst int, interval time.Duration) *limitHandler {
	return &limitHandler{Handler: h, l: &limiter{burst: float64(burst), interval: interval, kinds: map[string]*kind{}}}
}

type limitHandler struct {
	slog.Handler
	l *limiter
}

type limiter struct {
	burst    float64
	interval time.Duration

	mu    sync.Mutex
	kinds map[string]*kind
}

// kind is the budget of one kind of line, a token bucket, and what it held
// back since its last line written.
type kind struct {
	tokens     float64
	last       time.Time
	suppressed int
	held       slog.Record  // the last line held back
	heldBy     slog.Handler // the handler it came to, with its attributes
	due        *time.Timer  // writes held when a token is due; nil when not set
}

func (h *limitHandler) Handle(ctx context.Context, r slog.Record) error {
	key := kindOf(r.Message)
	l := h.l
	l.mu.Lock()
	k := l.kind(key)
	if !l.spend(k, time.Now()) {
		k.suppressed++
		k.held, k.heldBy = r.Clone(), h.Handler
		if k.due == nil {
			k.due = time.AfterFunc(time.Duration((1-k.tokens)*float64(l.interval)), func() { l.writeHeld(k) })
		}
		l.mu.Unlock()
		return nil
	}
	n := k.suppressed
	k.suppressed, k.held, k.heldBy = 0, slog.Record{}, nil
	if k.due != nil {
		k.due.Stop()
		k.due = nil
	}
	l.mu.Unlock()
	return handle(ctx, h.Handler, r, n)
}

// writeHeld writes the last line held back of k, when its turn has come
// and no other line of the kind took it.
func (l *limiter) writeHeld(k *kind) {
	l.mu.Lock()
	k.due = nil
	if k.suppressed == 0 || !l.spend(k, time.Now()) {
		l.mu.Unlock()
		return
	}
	r, h, n := k.held, k.heldBy, k.suppressed-1
	k.suppressed, k.held, k.heldBy = 0, slog.Record{}, nil
	l.mu.Unlock()
	handle(context.Background(), h, r, n)
}

// handle writes r to h, noting the n lines held back before it.
func handle(ctx context.Context, h slog.Handler, r slog.Record, n int) error {
	if n > 0 {
		r = r.Clone()
		r.AddAttrs(slog.Int("suppressed", n))
	}
	return h.Handle(ctx, r)
}

// kind returns the budget of key, new ones full. The caller holds mu.
func (l *limiter) kind(key string) *kind {
	if k, ok := l.kinds[key]; ok {
		return k
	}
	if len(l.kinds) >= maxKinds {
		key = ""
		if k, ok := l.kinds[key]; ok {
			return k
		}
	}
	k := &kind{tokens: l.burst, last: time.Now()}
	l.kinds[key] = k
	return k
}

// spend refills k's bucket up to now and takes a token from it, if there is
// one. The caller holds mu.
func (l *limiter) spend(k *kind, now time.Time) bool {
	k.tokens = min(l.burst, k.tokens+float64(now.Sub(k.last))/float64(l.interval))
	k.last = now
	if k.tokens < 1 {
		return false
	}
	k.tokens--
	return true
}

func (h *limitHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &limitHandler{Handler: h.Handler.WithAttrs(attrs), l: h.l}
}

func (h *limitHandler) WithGroup(name string) slog.Handler {
	return &limitHandler{Handler: h.Handler.WithGroup(name), l: h.l}
}

// kindOf is a line's message without its digits.
func kindOf(msg string) string {
	return strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' {
			return -1
		}
		return r
	}, msg)
}
