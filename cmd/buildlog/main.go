// Command buildlog downloads CodeArts Build action logs from a buildlogd
// server over gRPC.
//
//	buildlog download --addr HOST:PORT --record-id ID --task-name NAME \
//	    [--log-level debug] [--offset N] [--limit N] [--token T] [-o FILE] [-f]
//
// The token may come from BUILDLOG_TOKEN instead of --token. The log goes to
// stdout unless -o names a file; a file appears only once the whole log has
// arrived, so a failed download never leaves a truncated file behind. With
// -f (--follow) the command follows the log while its action runs,
// reconnecting as needed, until the action finished.
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

	"golang.org/x/term"
)

const usage = `Usage: buildlog <command> [flags]

buildlog downloads Huawei Cloud CodeArts Build action logs from a buildlogd
server (buildlog.v1.BuildLogService over gRPC), with your own IAM token.

Commands:
  download   download one build action log (buildlog download --help)
  help       show this help

Environment:
  BUILDLOG_TOKEN   the IAM token, when --token is not given

Exit status: 0 on success (with -f: once the action finished and its whole
log was written), 1 when the download failed (the message names
the gRPC code, the upstream's error code and request id), 2 for a command
line that cannot run.

Example:
  export BUILDLOG_TOKEN="$(cat my-iam-token)"
  buildlog download --addr localhost:9090 --record-id <36-character id> --task-name stage1 -o stage1.log
  buildlog download --addr localhost:9090 --record-id <36-character id> --task-name stage2 -f
`

// exitUsage is the exit status for a command line that could not be parsed.
const exitUsage = 2

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	env := environment{
		getenv:     os.LookupEnv,
		stdout:     os.Stdout,
		stderr:     os.Stderr,
		isTerminal: func() bool { return term.IsTerminal(int(os.Stderr.Fd())) },
	}
	os.Exit(run(ctx, os.Args[1:], env))
}

// environment is what the command uses of the process, so tests can replace
// it.
type environment struct {
	getenv     func(string) (string, bool)
	stdout     io.Writer
	stderr     io.Writer
	isTerminal func() bool // whether stderr is a terminal
}

// run runs the command line args and returns the exit status.
func run(ctx context.Context, args []string, env environment) int {
	if len(args) == 0 {
		fmt.Fprint(env.stderr, usage)
		return exitUsage
	}
	var err error
	switch args[0] {
	case "download":
		err = download(ctx, args[1:], env)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(env.stdout, usage)
		return 0
	default:
		fmt.Fprintf(env.stderr, "buildlog: unknown command %q\n\n%s", args[0], usage)
		return exitUsage
	}
	var ue *usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(env.stderr, "buildlog: %v (see buildlog %s --help)\n", ue.err, args[0])
		return exitUsage
	}
	fmt.Fprintln(env.stderr, "buildlog:", describe(err))
	return 1
}

// usageError is a command line the command cannot run.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
