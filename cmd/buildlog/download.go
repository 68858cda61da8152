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
	conn, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(tc), client.WithChunkCodec())
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
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(ctx, md...))
	defer cancel()
	stream, err := buildlogv1.NewBuildLogServiceClient(conn).DownloadTaskLog(ctx, &buildlogv1.DownloadTaskLogRequest{
		RecordId: f.recordID,
		TaskName: f.taskName,
		LogLevel: buildlogv1.LogLevel(level),
		Offset:   f.offset,
		Limit:    f.limit,
	})
	if err != nil {
		return err
	}

	out, err := openOutput(f.output, env.stdout)
	if err != nil {
		return err
	}
	defer out.discard()
	w := io.Writer(out)
	progress := f.output != "" && env.isTerminal()
	var bar *progressbar.ProgressBar
	n, err := receive(stream, f.offset, f.limit, func(md *buildlogv1.LogMetadata) {
		if progress {
			total := int64(-1)
			if md.TotalSize != nil {
				total = expectedLength(md.GetTotalSize(), f.offset, f.limit)
			}
			bar = progressbar.NewOptions64(total,
				progressbar.OptionSetWriter(env.stderr),
				progressbar.OptionSetDescription(filepath.Base(f.output)),
				progressbar.OptionShowBytes(true),
				progressbar.OptionThrottle(100*time.Millisecond),
				progressbar.OptionOnCompletion(func() { fmt.Fprintln(env.stderr) }),
			)
			w = io.MultiWriter(out, bar)
		}
	}, func(p []byte) error {
		_, err := w.Write(p)
		return err
	})
	if err != nil {
		return withResumeHint(err, f, n)
	}
	if bar != nil {
		_ = bar.Finish()
	}
	if err := out.commit(); err != nil {
		return err
	}
	if f.output != "" {
		fmt.Fprintf(env.stderr, "wrote %d bytes to %s\n", n, f.output)
	}
	return nil
}

// receive reads the stream to its end, passing the metadata to onMetadata
// and each chunk's data to write, and checks that the chunks are contiguous
// and, when the log's size is known, complete. It returns the number of
// bytes received.
func receive(stream grpc.ServerStreamingClient[buildlogv1.DownloadTaskLogResponse], offset, limit int64,
	onMetadata func(*buildlogv1.LogMetadata), write func([]byte) error) (int64, error) {
	pos := offset
	var total *int64
	for first := true; ; first = false {
		msg, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return pos - offset, err
		}
		if first && msg.GetMetadata() != nil {
			total = msg.GetMetadata().TotalSize
			onMetadata(msg.GetMetadata())
		}
		if msg.GetOffset() != pos {
			return pos - offset, fmt.Errorf("the server sent bytes at offset %d where %d was expected; the download is incomplete", msg.GetOffset(), pos)
		}
		if err := write(msg.GetData()); err != nil {
			return pos - offset, fmt.Errorf("write the log: %w", err)
		}
		pos += int64(len(msg.GetData()))
	}
	if total != nil {
		if want := expectedLength(*total, offset, limit); pos-offset != want {
			return pos - offset, fmt.Errorf("the stream ended after %d of %d bytes; the download is incomplete", pos-offset, want)
		}
	}
	return pos - offset, nil
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
// (its error carries a resumeOffset), the same command with the offset
// (and limit) of the part not written; when the log changed under the
// download, to start over, since the bytes written belong to its old
// version. The offset is that of the bytes written, which the server's
// resumeOffset never exceeds. A failed -o download leaves no file to
// continue.
func withResumeHint(err error, f *downloadFlags, n int64) error {
	e, ok := api.FromError(err)
	if f.output != "" || !ok {
		return err
	}
	if _, resumable := e.Metadata[api.MetadataResumeOffset]; !resumable {
		return err
	}
	if e.Reason == api.ReasonLogChanged {
		return &hintError{err: err, hint: fmt.Sprintf("%d bytes written belong to the log's old version; discard them and download it again from the start", n)}
	}
	hint := fmt.Sprintf("%d bytes written; append the rest with --offset %d", n, f.offset+n)
	if f.limit > 0 {
		hint += fmt.Sprintf(" --limit %d", f.limit-n)
	}
	return &hintError{err: err, hint: hint}
}
