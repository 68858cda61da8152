// Command buildlogd serves buildlog.v1.BuildLogService over gRPC and a REST
// mirror of the CodeArts Build "download build action log" API, relaying
// logs from the upstream API with each caller's own IAM token.
//
// Every flag can also be set in the environment as BUILDLOG_<FLAG>, such as
// BUILDLOG_GRPC_ADDR=:9090; a flag on the command line wins. With --demo it
// runs a simulated upstream in-process and needs no cloud account.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/buildlog/buildlog/internal/liblog"
	"github.com/buildlog/buildlog/server"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The libraries' loggers are process-wide and must be set before gRPC
	// starts, so they are set here rather than in run, which tests call
	// concurrently.
	if cfg, err := parseConfig(os.Args[1:], os.LookupEnv, io.Discard); err == nil {
		liblog.Install(cfg.newLogger(os.Stderr))
	}
	if err := run(ctx, os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "buildlogd:", err)
		os.Exit(1)
	}
}

// run parses the configuration and serves until ctx is done.
func run(ctx context.Context, args []string, getenv func(string) (string, bool), stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args, getenv, stderr)
	if err != nil {
		return err
	}
	logger := cfg.newLogger(stderr)
	tp, stopTracing, err := newTracerProvider(ctx, getenv)
	if err != nil {
		return err
	}
	defer func() {
		// Flush the last spans; the process is exiting, so a dead collector
		// must not hold it up for long.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := stopTracing(ctx); err != nil {
			logger.Warn("flush traces", "error", err.Error())
		}
	}()
	scfg := cfg.server
	scfg.Logger, scfg.TracerProvider = logger, tp
	if cfg.demo {
		demo, err := startDemoUpstream()
		if err != nil {
			return err
		}
		defer demo.Close()
		scfg.Upstream = demo.URL
	}
	if err := cfg.security.apply(&scfg); err != nil {
		return err
	}
	srv, err := server.New(scfg)
	if err != nil {
		return err
	}
	if cfg.demo {
		printDemo(stdout, srv.GRPCAddr(), srv.HTTPAddr(), srv.AdminAddr())
	}
	return srv.Serve(ctx)
}
