package service_test

import (
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/buildlog/buildlog/api"

	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
	"github.com/buildlog/buildlog/service"
	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// A follower whose status calls succeed (full-stages names neither task
// nor level) but whose log requests the upstream refuses is refused, as
// alone, though another follower's read of the log is in flight: a status
// call proves nothing of the log.
func TestSharedFollowStatusCallIsNoProof(t *testing.T) {
	t.Parallel()
	e := newSharedEnv(t, time.Minute)
	toks := tokens(e, 2)
	a, b := toks[0], toks[1]
	act := e.up.AddAction(recordID, "stage1", upstreamtest.Action{Log: upstreamtest.Log{Size: 1 << 20}})
	act.Grow(100_000)
	hold := make(chan struct{})
	e.up.Inject(upstreamtest.Fault{Route: upstreamtest.RouteTaskLog, Token: a, Hold: hold})
	deny := upstreamtest.ErrorFault(http.StatusForbidden, upstreamtest.ForbiddenCode, "You do not have permission to view this build record")
	deny.Route, deny.Token, deny.Times = upstreamtest.RouteTaskLog, b, -1
	e.up.Inject(deny)
	open := func(tok string) (*service.Download, error) {
		return e.svc.Open(withToken(t.Context(), tok), service.Request{
			Message: &buildlogv1.DownloadTaskLogRequest{RecordId: recordID, TaskName: "stage1", Follow: true},
			Caller:  service.Caller{Tokens: []string{tok}}, Transport: service.GRPC})
	}
	type opened struct {
		d   *service.Download
		err error
	}
	da := make(chan opened, 1)
	go func() {
		d, err := open(a)
		da <- opened{d, err}
	}()
	waitFor(t, "a's log request", func() bool { return requestsWith(e.up, a) == 2 })
	_, err := open(b) // while a's read is held
	wantError(t, err, codes.PermissionDenied, api.ReasonUpstreamPermissionDenied)
	close(hold)
	r := <-da
	if r.err != nil {
		t.Fatalf("a: %v", r.err)
	}
	defer r.d.Close(nil)
	c, err := r.d.Next()
	if err != nil || len(c.Data) == 0 {
		t.Fatalf("a's first chunk: %d bytes, %v", len(c.Data), err)
	}
	c.Release()
}
