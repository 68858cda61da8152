// Package gateway serves the REST mirror of the upstream API,
// GET /v4/{record_id}/task-log?task_name=…&log_level=…, on grpc-gateway's
// router, in front of the download service: a request becomes a
// service.Request, the download's chunks the body, its failure the
// upstream's error shape.
//
// The mirror answers as the upstream does, so HTTP clients switch to it by
// changing the host: a 200 body is the log bytes only (no framing), errors
// are the upstream's JSON {"error_code": …, "error_msg": …} with the
// upstream's own HTTP status, a Range is answered with 206, and a failure
// after the first byte aborts the response instead of ending it cleanly.
package gateway

import (
	"context"
	"net/http"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"

	"github.com/buildlog/buildlog/api"
	"github.com/buildlog/buildlog/service"
)

// Route is the mirror's route, the HTTP rule of buildlog.v1's
// DownloadTaskLog in proto/buildlog/v1/buildlog_http.yaml (a test checks
// the two agree, through the OpenAPI document generated from it).
const Route = "/v4/{record_id}/task-log"

// New returns the REST mirror's handler: GET and HEAD of [Route], served
// by svc, and the OpenAPI document at [OpenAPIPath].
func New(svc *service.Service) (http.Handler, error) {
	mux := runtime.NewServeMux(
		runtime.WithRoutingErrorHandler(routingError),
		// An escaped "/" (or other reserved character) in the record id
		// stays escaped, part of the id for the service to refuse by name,
		// rather than a path separator that matches no route.
		runtime.WithUnescapingMode(runtime.UnescapingModeAllExceptReserved),
	)
	m := &mirror{svc: svc}
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		if err := mux.HandlePath(method, Route, m.serveLog); err != nil {
			return nil, err
		}
	}
	return withOpenAPI(mux), nil
}

// routingError answers a request no route matches with its own HTTP
// status (grpc-gateway's default turns 405 into 501), in the upstream's
// error shape.
func routingError(_ context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, _ *http.Request, status int) {
	e := &api.Error{Code: codes.NotFound, Message: http.StatusText(status)}
	switch status {
	case http.StatusMethodNotAllowed:
		e.Code = codes.Unimplemented
		w.Header().Set("Allow", "GET, HEAD")
	case http.StatusBadRequest:
		e.Code = codes.InvalidArgument
	}
	e.WriteREST(w, status)
}
