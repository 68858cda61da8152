package upstreamtest

import "strings"

// Routes of the simulated API, as [Fault.Route] names them.
const (
	// RouteTaskLog is GET /v4/{record_id}/task-log: an action's log.
	RouteTaskLog = "task-log"
	// RouteFullStages is GET /v1/record/{record_id}/full-stages: the state
	// of each action of a record.
	RouteFullStages = "full-stages"
)

// parsePath returns the route and record id of a path of the simulated API,
// or ok false for any other path.
func parsePath(p string) (route, recordID string, ok bool) {
	for _, r := range []struct{ route, prefix, suffix string }{
		{RouteTaskLog, "/v4/", "/task-log"},
		{RouteFullStages, "/v1/record/", "/full-stages"},
	} {
		rest, found := strings.CutPrefix(p, r.prefix)
		if !found {
			continue
		}
		id, found := strings.CutSuffix(rest, r.suffix)
		if !found || id == "" || strings.Contains(id, "/") {
			return "", "", false
		}
		return r.route, id, true
	}
	return "", "", false
}

// validRecordID reports whether id has the upstream's record id pattern,
// ^[0-9a-z-]{36}$.
func validRecordID(id string) bool {
	return len(id) == 36 && strings.Trim(id, "0123456789abcdefghijklmnopqrstuvwxyz-") == ""
}
