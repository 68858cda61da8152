// Package tail follows a build action's log through buildlogd
// (follow=true), over gRPC and over the REST mirror, for the benchmarks:
// it reports every piece of the log as it arrives, with its offset and the
// time it came, and how the followed download ended.
package tail

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/buildlog/buildlog/api"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
)

// Target names the followed log and the credentials to ask with.
type Target struct {
	RecordID, TaskName, Token string
}

// Piece is a part of the log as it arrived: Len bytes at Offset, received
// at At. A piece of length 0 is a message without data (gRPC: one that
// carries only the action's state; REST: the response headers).
type Piece struct {
	Offset int64
	Len    int
	At     time.Time
}

// ErrNotFinished is returned when a followed download ended OK although
// the action was not reported finished: the server broke the follow
// contract.
var ErrNotFinished = errors.New("the followed download ended OK without the action finished")

// GRPC follows t's log from its start on c until the action finishes (nil)
// or the call ends otherwise (its error; ctx's cancellation included),
// calling got, on this goroutine, for every message received.
func GRPC(ctx context.Context, c buildlogv1.BuildLogServiceClient, t Target, got func(Piece)) error {
	ctx = metadata.AppendToOutgoingContext(ctx, api.TokenMetadataKey, t.Token)
	stream, err := c.DownloadTaskLog(ctx, &buildlogv1.DownloadTaskLogRequest{RecordId: t.RecordID, TaskName: t.TaskName, Follow: true})
	if err != nil {
		return err
	}
	finished := false
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			if !finished {
				return ErrNotFinished
			}
			return nil
		}
		if err != nil {
			return err
		}
		got(Piece{Offset: msg.GetOffset(), Len: len(msg.GetData()), At: time.Now()})
		if a := msg.GetAction(); a != nil {
			finished = a.GetFinished()
		}
	}
}

// REST follows t's log from its start through the REST mirror at httpAddr
// with hc, as GRPC does. Each HTTP/1.1 follower holds a connection of its
// own for as long as it follows.
func REST(ctx context.Context, hc *http.Client, httpAddr string, t Target, got func(Piece)) error {
	q := url.Values{"task_name": {t.TaskName}, "follow": {"true"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+"/v4/"+t.RecordID+"/task-log?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("X-Auth-Token", t.Token)
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	got(Piece{At: time.Now()})
	buf := make([]byte, 64<<10)
	var off int64
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			got(Piece{Offset: off, Len: n, At: time.Now()})
			off += int64(n)
		}
		if err == io.EOF {
			if fin, _ := strconv.ParseBool(resp.Trailer.Get("Buildlog-Action-Finished")); !fin {
				return ErrNotFinished
			}
			return nil
		}
		if err != nil {
			return err // such as io.ErrUnexpectedEOF: the follow was cut off
		}
	}
}
