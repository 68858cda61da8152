package gateway

import (
	"context"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/buildlog/buildlog/api"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/service"
)

// mirror serves the route of the upstream's log download.
type mirror struct {
	svc *service.Service
}

// serveLog answers one request for a log: it reads the request, opens the
// download, writes the headers the log's metadata gives and then its
// chunks as they arrive. A HEAD gets the headers alone.
func (m *mirror) serveLog(w http.ResponseWriter, r *http.Request, params map[string]string) {
	req := readRequest(r, params["record_id"])
	ctx, cancel := callContext(r)
	defer cancel()
	rc := http.NewResponseController(w)
	sreq := service.Request{
		Message:   req.msg,
		Invalid:   req.invalid,
		Caller:    restCaller(r),
		Transport: service.REST,
		Probe:     r.Method == http.MethodHead,
		Interrupt: func() { rc.SetWriteDeadline(time.Now()) },
	}
	d, err := m.svc.Open(ctx, sreq)
	if err == nil && req.byteRange != nil && d.Length() < 0 {
		// A 206 must name its last byte, which a log of unknown size does
		// not tell: the whole log is sent instead, as RFC 9110 allows.
		d.Abandon()
		sreq.Message.Offset, sreq.Message.Limit, req.byteRange = 0, 0, nil
		d, err = m.svc.Open(ctx, sreq)
	}
	if err == nil && req.byteRange != nil && d.Length() == 0 {
		err = d.Close(rangeNotSatisfiable(req.byteRange.first, d.Metadata().GetTotalSize()))
	}
	if err != nil {
		writeError(w, err, req.byteRange)
		return
	}
	status := setHeaders(w.Header(), d, req.byteRange)
	setActionHeaders(w.Header(), "", d.Action())
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		d.Close(nil)
		return
	}
	if d.Length() < 0 {
		rc.Flush() // the headers, before the first byte: the body is chunked
	}
	for {
		c, err := d.Next()
		if err == io.EOF {
			d.Close(nil)
			return
		}
		if err == nil && c.Action.GetFinished() {
			// The last chunk of a followed action: its final state, as
			// trailers where the body is chunked.
			setActionHeaders(w.Header(), http.TrailerPrefix, c.Action)
		}
		if err == nil && len(c.Data) == 0 {
			continue // a change of the action's state, in the stream only
		}
		if err == nil {
			_, err = w.Write(c.Data)
			c.Release()
			if err == nil {
				err = rc.Flush()
			}
		}
		if err != nil {
			d.Close(err)
			// net/http closes the connection without ending the body: no
			// final chunk, or fewer bytes than Content-Length; HTTP/2 resets
			// the stream. The client sees an incomplete transfer.
			panic(http.ErrAbortHandler)
		}
	}
}

// callContext is the context of a request's download: the request's, with
// the deadline of a Grpc-Timeout header when one is sent, as grpc-gateway
// reads it.
func callContext(r *http.Request) (context.Context, context.CancelFunc) {
	if d, ok := parseGRPCTimeout(r.Header.Get("Grpc-Timeout")); ok {
		return context.WithTimeout(r.Context(), d)
	}
	return r.Context(), func() {}
}

// parseGRPCTimeout parses a gRPC timeout: up to 8 digits and a unit, H, M,
// S, m (milliseconds), u or n.
func parseGRPCTimeout(v string) (time.Duration, bool) {
	units := map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second, 'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond}
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	unit, ok := units[v[len(v)-1]]
	n, err := strconv.ParseUint(v[:len(v)-1], 10, 32)
	if !ok || err != nil {
		return 0, false
	}
	return time.Duration(n) * unit, true
}

// restCaller is who makes the request: its X-Auth-Token and Authorization
// headers, and whether its client certificate was verified.
func restCaller(r *http.Request) service.Caller {
	return service.Caller{
		Tokens:        r.Header.Values("X-Auth-Token"),
		Authorization: r.Header.Values("Authorization"),
		CertVerified:  r.TLS != nil && len(r.TLS.VerifiedChains) > 0,
	}
}

// setHeaders sets the headers of a download's answer and returns its
// status: 206 for a Range, else 200.
func setHeaders(h http.Header, d *service.Download, br *byteRange) int {
	md := d.Metadata()
	h.Set("Content-Type", md.GetContentType())
	h.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": md.GetFileName()}))
	if id := md.GetRequestId(); id != "" {
		h.Set("X-Request-Id", id)
	}
	n := d.Length()
	if n < 0 {
		return http.StatusOK // chunked
	}
	h.Set("Accept-Ranges", "bytes")
	h.Set("Content-Length", strconv.FormatInt(n, 10))
	if br == nil {
		return http.StatusOK
	}
	h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", d.Offset(), d.Offset()+n-1, md.GetTotalSize()))
	return http.StatusPartialContent
}

// Headers of a followed log's answer: the action's state as the download
// started, and as trailers once it finished.
const (
	headerActionStatus   = "Buildlog-Action-Status"
	headerActionFinished = "Buildlog-Action-Finished"
)

// setActionHeaders sets the action's state a, when known, as headers
// named with prefix ("" or http.TrailerPrefix).
func setActionHeaders(h http.Header, prefix string, a *buildlogv1.ActionState) {
	if a == nil {
		return
	}
	h.Set(prefix+headerActionFinished, strconv.FormatBool(a.GetFinished()))
	if a.GetStatus() != "" {
		h.Set(prefix+headerActionStatus, a.GetStatus())
	}
}

// rangeNotSatisfiable is the error of a Range that starts at or past the
// end of the log.
func rangeNotSatisfiable(first, size int64) *api.Error {
	return &api.Error{Code: codes.OutOfRange, Reason: api.ReasonRangeNotSatisfiable,
		Message:  fmt.Sprintf("the range starts at byte %d; the log has %d bytes", first, size),
		Metadata: map[string]string{api.MetadataLogSize: strconv.FormatInt(size, 10)}}
}

// writeError answers with a download's error: the upstream's status and
// error document, or for a Range that starts at or past the end of the log
// 416 with its size, so that clients such as curl -C - see that the file
// they resume is complete.
func writeError(w http.ResponseWriter, err error, br *byteRange) {
	e, ok := api.FromError(err)
	if !ok {
		e = &api.Error{Code: codes.Internal, Message: "internal error"}
	}
	status := e.HTTPStatus()
	if size, ok := e.Metadata[api.MetadataLogSize]; ok && br != nil && e.Code == codes.OutOfRange {
		n, _ := strconv.ParseInt(size, 10, 64)
		e, status = rangeNotSatisfiable(br.first, n), http.StatusRequestedRangeNotSatisfiable
		w.Header().Set("Content-Range", "bytes */"+size)
	}
	e.WriteREST(w, status)
}
