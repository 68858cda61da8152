package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/buildlog/buildlog/api"
	"github.com/buildlog/buildlog/client"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
)

const downloadHelp = `Usage: buildlog download --addr HOST:PORT --record-id ID --task-name NAME [flags]

Downloads one build action log from a buildlogd server and writes it to
stdout, or to a file with -o. The file is written under a temporary name and
renamed when the whole log has arrived; after a failure nothing is left
behind and the exit status is 1.

With --follow (-f) the log is followed while its action runs, as tail -f
does: the command writes what the action has logged so far, then each new
part as it is written, and ends once the action finished and its whole log
was written, printing the action's final status on stderr
("buildlog: action finished: success"). It reconnects by itself, from where
the bytes written end, when the server ends the call early (its follow time
limit, a restart or shutdown, an upstream failure), saying so on stderr; it
gives up after 10 calls in a row that brought nothing new. With -o the file
appears only once the action finished; to watch a log live, follow it to
stdout (| tee FILE). The exit status is 0 once the log is complete, 1
otherwise, Ctrl-C included.

With -o and stderr on a terminal, a progress bar shows the bytes received
(and the total, when the server announced the log's size).

On stdout, a download that breaks off says how many bytes were written and
how to append the rest with --offset. Errors are one line naming the gRPC
code, the message, the upstream error code and request id; the exit status
is 1 (2 for a command line that cannot run).

The IAM token comes from --token or, better (command lines are visible to
other users of the machine), from the BUILDLOG_TOKEN environment variable.
A buildlogd holding credentials of its own lets authenticated callers omit
the token: with a client certificate (--tls-cert, --tls-key) or a bearer
token in BUILDLOG_BEARER.

Examples:
  buildlog download --addr localhost:9090 --record-id ID --task-name stage1 > stage1.log
  buildlog download --addr localhost:9090 --record-id ID --task-name stage2 --log-level debug -o stage2.log
  buildlog download --addr localhost:9090 --record-id ID --task-name stage1 --offset 51000 >> stage1.log
  buildlog download --addr localhost:9090 --record-id ID --task-name stage3 -f | tee stage3.log
  buildlog download --addr localhost:9090 --record-id ID --task-name stage3 --follow -o stage3.log

Flags:
`

type downloadFlags struct {
	addr     string
	recordID string
	taskName string
	logLevel string
	offset   int64
	limit    int64
	token    string
	output   string
	follow   bool
	security securityFlags // see tls.go
}

func parseDownloadFlags(args []string, env environment) (*downloadFlags, error) {
	var f downloadFlags
	fs := flag.NewFlagSet("download", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), downloadHelp)
		fs.PrintDefaults()
	}
	fs.StringVar(&f.addr, "addr", "", "buildlogd gRPC address, `HOST:PORT` (required)")
	fs.StringVar(&f.recordID, "record-id", "", "build record `ID`, 36 characters of [0-9a-z-] (required)")
	fs.StringVar(&f.taskName, "task-name", "", "build action, such as `stage1` (required)")
	fs.StringVar(&f.logLevel, "log-level", "info", "log detail `level`: info or debug")
	fs.Int64Var(&f.offset, "offset", 0, "start at this byte `offset` of the log")
	fs.Int64Var(&f.limit, "limit", 0, "return at most this many `bytes` (0: to the end)")
	fs.StringVar(&f.token, "token", "", "IAM `token` (default $BUILDLOG_TOKEN)")
	fs.StringVar(&f.output, "o", "", "write the log to `FILE` instead of stdout")
	fs.BoolVar(&f.follow, "follow", false, "follow the log until its action finished, reconnecting as needed")
	fs.BoolVar(&f.follow, "f", false, "short for --follow")
	f.security.register(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, &usageError{err}
	}
	if fs.NArg() > 0 {
		return nil, &usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	if f.token == "" {
		f.token, _ = env.getenv("BUILDLOG_TOKEN")
	}
	if err := f.security.load(env.getenv); err != nil {
		return nil, &usageError{err}
	}
	required := []struct{ name, value string }{{"--addr", f.addr}, {"--record-id", f.recordID}, {"--task-name", f.taskName}}
	if !f.security.authenticated() {
		required = append(required, struct{ name, value string }{"--token or BUILDLOG_TOKEN", f.token})
	}
	var missing []string
	for _, req := range required {
		if req.value == "" {
			missing = append(missing, req.name)
		}
	}
	if len(missing) > 0 {
		return nil, &usageError{fmt.Errorf("missing %s", strings.Join(missing, ", "))}
	}
	if f.offset < 0 || f.limit < 0 {
		return nil, &usageError{fmt.Errorf("--offset and --limit must not be negative, got %d and %d", f.offset, f.limit)}
	}
	return &f, nil
}

// reconnectParams shorten grpc-go's connection backoff (1 s growing to
// 120 s) to at most 5 s, so that a follow rides out a buildlogd restart
// within its retry budget (about 25 s).
var reconnectParams = grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
	MinConnectTimeout: 20 * time.Second,
}

func download(ctx context.Context, args []string, env environment) error {
	f, err := parseDownloadFlags(args, env)
	if err != nil {
		return err
	}
	level, ok := buildlogv1.LogLevel_value["LOG_LEVEL_"+strings.ToUpper(f.logLevel)]
	if !ok {
		return &usageError{fmt.Errorf("--log-level must be info or debug, got %q", f.logLevel)}
	}

	tc, err := f.security.credentials()
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(tc), client.WithChunkCodec(), grpc.WithConnectParams(reconnectParams))
	if err != nil {
		return fmt.Errorf("connect to %s: %w", f.addr, err)
	}
	defer conn.Close()
	var md []string
	if f.token != "" {
		md = append(md, api.TokenMetadataKey, f.token)
	}
	if f.security.bearer != "" {
		md = append(md, "authorization", "Bearer "+f.security.bearer)
	}
	ctx = metadata.AppendToOutgoingContext(ctx, md...)

	out, err := openOutput(f.output, env.stdout)
	if err != nil {
		return err
	}
	defer out.discard()
	w := &progressWriter{w: out}
	opts := []client.Option{client.OnMetadata(func(md *buildlogv1.LogMetadata) {
		if f.output != "" && env.isTerminal() && w.bar == nil {
			w.bar = newProgressBar(env, f, md)
		}
	})}
	req := &buildlogv1.DownloadTaskLogRequest{
		RecordId: f.recordID,
		TaskName: f.taskName,
		LogLevel: buildlogv1.LogLevel(level),
		Offset:   f.offset,
		Limit:    f.limit,
	}
	c := buildlogv1.NewBuildLogServiceClient(conn)
	var res *client.Result
	if f.follow {
		opts = append(opts, client.OnReconnect(func(r client.Reconnect) {
			fmt.Fprintf(env.stderr, "buildlog: %s; reconnecting from offset %d in %s\n", describe(r.Err), r.Offset, r.Delay.Round(time.Millisecond))
		}))
		res, err = client.Follow(ctx, c, req, w, opts...)
	} else {
		// A download without --follow is one call: after a failure, the
		// command says how to append the rest.
		res, err = client.Download(ctx, c, req, w, append(opts, client.WithMaxRetries(0))...)
	}
	if err != nil {
		return withResumeHint(err, f, res.Written)
	}
	if w.bar != nil {
		_ = w.bar.Finish()
	}
	if err := out.commit(); err != nil {
		return err
	}
	if f.follow {
		fmt.Fprintln(env.stderr, "buildlog:", actionSummary(res.Action))
	}
	if f.output != "" {
		fmt.Fprintf(env.stderr, "wrote %d bytes to %s\n", res.Written, f.output)
	}
	return nil
}

// actionSummary tells how a follow that completed left its action.
func actionSummary(a *buildlogv1.ActionState) string {
	switch {
	case a.GetFinished() && a.GetStatus() != "":
		return "action finished: " + a.GetStatus()
	case a.GetFinished():
		return "action finished"
	case a.GetStatus() != "":
		return "--limit reached; the action is still running: " + a.GetStatus()
	}
	return "--limit reached; the action is still running"
}

// progressWriter writes to w, and to bar once there is one.
type progressWriter struct {
	w   io.Writer
	bar *progressbar.ProgressBar
}

func (p *progressWriter) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	if p.bar != nil {
		_ = p.bar.Add(n)
	}
	return n, err
}

// newProgressBar is the progress bar of a download to a file: of the
// range's size when the log's size is known, else of bytes only.
func newProgressBar(env environment, f *downloadFlags, md *buildlogv1.LogMetadata) *progressbar.ProgressBar {
	total := int64(-1)
	if md.TotalSize != nil {
		total = expectedLength(md.GetTotalSize(), f.offset, f.limit)
	}
	return progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(env.stderr),
		progressbar.OptionSetDescription(filepath.Base(f.output)),
		progressbar.OptionShowBytes(true),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(env.stderr) }),
	)
}

// expectedLength is how many bytes a range of a log of size total holds.
func expectedLength(total, offset, limit int64) int64 {
	n := max(total-offset, 0)
	if limit > 0 {
		n = min(n, limit)
	}
	return n
}

// output is where the log goes: stdout, or a temporary file renamed to its
// final name only by commit.
type output struct {
	io.Writer
	file  *os.File // nil for stdout
	final string
	done  bool
}

func openOutput(name string, stdout io.Writer) (*output, error) {
	if name == "" || name == "-" {
		return &output{Writer: stdout}, nil
	}
	f, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".*.part")
	if err != nil {
		return nil, fmt.Errorf("create output file: %w", err)
	}
	// CreateTemp makes the file private; give the log the usual mode.
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("create output file: %w", err)
	}
	return &output{Writer: f, file: f, final: name}, nil
}

func (o *output) commit() error {
	if o.file == nil {
		return nil
	}
	if err := o.file.Close(); err != nil {
		return fmt.Errorf("write %s: %w", o.final, err)
	}
	if err := os.Rename(o.file.Name(), o.final); err != nil {
		return fmt.Errorf("write %s: %w", o.final, err)
	}
	o.done = true
	return nil
}

// discard removes the temporary file unless commit succeeded.
func (o *output) discard() {
	if o.file != nil && !o.done {
		o.file.Close()
		os.Remove(o.file.Name())
	}
}

// describe renders an error as one line for humans: the gRPC code and
// message, and what the details add (upstream error code, request id, when
// to retry, where to resume).
func describe(err error) string {
	e, ok := api.FromError(err)
	if !ok {
		return err.Error()
	}
	var notes []string
	if c := e.Metadata[api.MetadataUpstreamErrorCode]; c != "" {
		notes = append(notes, "upstream error "+c)
	}
	if id := e.Metadata[api.MetadataRequestID]; id != "" {
		notes = append(notes, "request id "+id)
	}
	if e.RetryDelay > 0 {
		notes = append(notes, "retry after "+e.RetryDelay.String())
	}
	var hint *hintError
	if errors.As(err, &hint) {
		notes = append(notes, hint.hint)
	}
	line := code.Code(e.Code).String() + ": " + e.Message
	if len(notes) > 0 {
		line += " (" + strings.Join(notes, ", ") + ")"
	}
	return line
}

// hintError adds advice for the user to an error.
type hintError struct {
	err  error
	hint string
}

func (e *hintError) Error() string { return e.err.Error() + " (" + e.hint + ")" }
func (e *hintError) Unwrap() error { return e.err }

// GRPCStatus lets status.FromError see through the hint.
func (e *hintError) GRPCStatus() *status.Status { return status.Convert(e.err) }

// withResumeHint tells what to do after a download that broke off, having
// written n bytes to stdout: when the server says the rest can be fetched
// (its error carries a resumeOffset; following, when the client would
// have called again, or the user interrupted it), the same command with
// the offset (and limit) of the part not written; when the log changed under the
// download, to start over, since the bytes written belong to its old
// version. The offset is that of the bytes written, which the server's
// resumeOffset never exceeds. A failed -o download leaves no file to
// continue.
func withResumeHint(err error, f *downloadFlags, n int64) error {
	e, ok := api.FromError(err)
	if f.output != "" || !ok {
		return err
	}
	_, resumable := e.Metadata[api.MetadataResumeOffset]
	if resumable && e.Reason == api.ReasonLogChanged {
		return &hintError{err: err, hint: fmt.Sprintf("%d bytes written belong to the log's old version; discard them and download it again from the start", n)}
	}
	if f.follow {
		// Every ending of a followed call has a resumeOffset, a missing
		// log's too: what can go on is what the client would have retried,
		// and a follow the user interrupted.
		resumable = client.Retryable(err) || e.Code == codes.Canceled
	}
	if !resumable {
		return err
	}
	hint := fmt.Sprintf("%d bytes written; append the rest with --offset %d", n, f.offset+n)
	if f.limit > 0 {
		hint += fmt.Sprintf(" --limit %d", f.limit-n)
	}
	if f.follow {
		hint += " --follow"
	}
	return &hintError{err: err, hint: hint}
}
