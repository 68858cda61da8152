package liblog

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"google.golang.org/grpc/grpclog"
)

// grpcLogger routes grpc-go's and grpc-gateway's own logs (grpclog) into
// buildlogd's structured log, instead of plain text on stderr, through
// [Limit].
//
// Levels are shifted down one step: grpc-go's info lines are connection
// chatter (debug here), and both libraries report a peer's failures, such
// as "Failed to flush response to client: broken pipe" when a REST client
// leaves, at error level, though buildlogd has done nothing wrong: those
// are warnings here. buildlogd's own failures are logged by buildlogd.
type grpcLogger struct{ l *slog.Logger }

var _ grpclog.LoggerV2 = grpcLogger{}

// NewGRPCLogger returns the grpclog logger that writes to l, as [Install]
// sets it.
func NewGRPCLogger(l *slog.Logger) grpclog.LoggerV2 {
	return grpcLogger{Limit(l.With("logger", "grpc"))}
}

func (g grpcLogger) log(level slog.Level, msg string) {
	g.l.Log(context.Background(), level, capLine(msg))
}

func (g grpcLogger) Info(args ...any)   { g.log(slog.LevelDebug, fmt.Sprint(args...)) }
func (g grpcLogger) Infoln(args ...any) { g.log(slog.LevelDebug, fmt.Sprint(args...)) }
func (g grpcLogger) Infof(format string, args ...any) {
	g.log(slog.LevelDebug, fmt.Sprintf(format, args...))
}
func (g grpcLogger) Warning(args ...any)   { g.log(slog.LevelWarn, fmt.Sprint(args...)) }
func (g grpcLogger) Warningln(args ...any) { g.log(slog.LevelWarn, fmt.Sprint(args...)) }
func (g grpcLogger) Warningf(format string, args ...any) {
	g.log(slog.LevelWarn, fmt.Sprintf(format, args...))
}
func (g grpcLogger) Error(args ...any)   { g.log(slog.LevelWarn, fmt.Sprint(args...)) }
func (g grpcLogger) Errorln(args ...any) { g.log(slog.LevelWarn, fmt.Sprint(args...)) }
func (g grpcLogger) Errorf(format string, args ...any) {
	g.log(slog.LevelWarn, fmt.Sprintf(format, args...))
}

// Fatal logs and exits, as grpclog requires.
func (g grpcLogger) Fatal(args ...any) { g.fatal(fmt.Sprint(args...)) }

// Fatalln logs and exits, as grpclog requires.
func (g grpcLogger) Fatalln(args ...any) { g.fatal(fmt.Sprint(args...)) }

// Fatalf logs and exits, as grpclog requires.
func (g grpcLogger) Fatalf(format string, args ...any) { g.fatal(fmt.Sprintf(format, args...)) }

func (g grpcLogger) fatal(msg string) {
	g.log(slog.LevelError, msg)
	os.Exit(1)
}

// V reports whether grpc-go's verbose logs of level l are wanted: only at
// debug level, and only the least verbose of them.
func (g grpcLogger) V(l int) bool {
	return l <= 0 && g.l.Enabled(context.Background(), slog.LevelDebug)
}
