package upstream

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
)

// maxStagesBody bounds the full-stages answer read: a record's stages are
// a few hundred bytes each.
const maxStagesBody = 8 << 20

// Action is what the upstream says of the build action a log belongs to:
// its stage in GET /v1/record/{record_id}/full-stages.
type Action struct {
	// Listed is false when the record lists no stage for the action (yet):
	// then nothing else is known, and the action counts as running.
	Listed bool
	// Status and FinishTime are the stage's status and finish_time, as the
	// upstream wrote them (sanitised); empty when absent.
	Status, FinishTime string
	// Finished is set when the action has ended: it has a finish time, or
	// a status word that ends an action (see [Finished]).
	Finished bool
	// RequestID is the answer's X-Request-Id.
	RequestID string
}

// StagesURL returns the URL of the record's stages,
// /v1/record/{record_id}/full-stages.
func (c *Client) StagesURL(recordID string) *url.URL {
	u := *c.base
	u.Path = c.base.Path + "/v1/record/" + recordID + "/full-stages"
	u.RawPath = c.base.EscapedPath() + "/v1/record/" + url.PathEscape(recordID) + "/full-stages"
	return &u
}

// ActionStatus asks the upstream for the state of req's action (its
// record and task name; the range is ignored), with req's token or the
// server's credentials as for the log, and retries as for the log. The
// action is the stage whose sequence is the N of a task name "stageN"
// (the stages map's keys are ids, not names); for another task name, the
// stage keyed or displayed by that name.
//
// Errors: an *[Error] for a non-200 answer (a 404 for an unknown record)
// or a 200 whose document says "fail", a *[ProtocolError] for an answer
// that is not a stages document, and the transport's errors.
func (c *Client) ActionStatus(ctx context.Context, req Request) (*Action, error) {
	return withRetry(ctx, c, func() (*Action, error) { return c.actionStatus(ctx, req) })
}

func (c *Client) actionStatus(ctx context.Context, req Request) (*Action, error) {
	header := http.Header{"Accept": {"application/json"}}
	resp, secret, err := c.send(ctx, c.StagesURL(req.RecordID), header, req.Token, false)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxStagesBody+1))
	if err != nil {
		return nil, fmt.Errorf("read the record's stages: %w", err)
	}
	var doc stagesDocument
	if len(raw) > maxStagesBody {
		return nil, &ProtocolError{Problem: fmt.Sprintf("the record's stages are over %d bytes long", maxStagesBody)}
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, &ProtocolError{Problem: "the record's stages are not a JSON document of the expected shape"}
	}
	id := requestID(resp, secret)
	if strings.EqualFold(scalar(doc.Status), "fail") || (doc.Result == nil && len(doc.Error) > 0 && string(doc.Error) != "null") {
		// The error's fields, nested or at the top ({"error_code", …}).
		code, msg, bodyID := parseErrorBody(doc.Error)
		if code == "" && msg == "" {
			code, msg, bodyID = parseErrorBody(raw)
		}
		return nil, &Error{StatusCode: resp.StatusCode, Code: sanitize(code, secret, maxCodeBytes),
			Message: sanitize(msg, secret, maxMessageBytes), RequestID: cmp.Or(id, sanitize(bodyID, secret, maxRequestIDBytes))}
	}
	a := &Action{RequestID: id}
	if doc.Result == nil {
		return a, nil
	}
	stage, ok := findStage(doc.Result.BuildStages, req.TaskName)
	if !ok {
		return a, nil
	}
	a.Listed = true
	a.Status = sanitize(scalar(stage.Status), secret, maxMessageBytes)
	if ft := sanitize(scalar(stage.FinishTime), secret, maxMessageBytes); !unsetTime(ft) {
		a.FinishTime = ft
	}
	a.Finished = a.FinishTime != "" || Finished(a.Status)
	return a, nil
}

// stagesDocument is the full-stages answer:
// {"status": "success"|"fail", "error": {…}, "result": {"build_stages": {KEY: stage}}}.
// Fields are read as raw JSON, so that one of an unexpected type (a number
// for a string) does not lose the rest.
type stagesDocument struct {
	Status json.RawMessage `json:"status"`
	Error  json.RawMessage `json:"error"`
	Result *struct {
		BuildStages map[string]stageRecord `json:"build_stages"`
	} `json:"result"`
}

type stageRecord struct {
	Status      json.RawMessage `json:"status"`
	FinishTime  json.RawMessage `json:"finish_time"`
	Sequence    json.RawMessage `json:"sequence"`
	DisplayName json.RawMessage `json:"display_name"`
}

// findStage returns the stage of taskName: by sequence for "stageN", else
// by key or display name. Keys are tried in order, so that the answer does
// not depend on the map's.
func findStage(stages map[string]stageRecord, taskName string) (stageRecord, bool) {
	keys := make([]string, 0, len(stages))
	for k := range stages {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if n, ok := stageSequence(taskName); ok {
		for _, k := range keys {
			if seq, err := strconv.Atoi(strings.TrimSpace(scalar(stages[k].Sequence))); err == nil && seq == n {
				return stages[k], true
			}
		}
		return stageRecord{}, false
	}
	for _, k := range keys {
		if k == taskName || scalar(stages[k].DisplayName) == taskName {
			return stages[k], true
		}
	}
	return stageRecord{}, false
}

// stageSequence returns N of a task name "stageN".
func stageSequence(taskName string) (int, bool) {
	digits, ok := strings.CutPrefix(taskName, "stage")
	if !ok || digits == "" || digits[0] == '0' && len(digits) > 1 {
		return 0, false
	}
	n, err := strconv.Atoi(digits)
	return n, err == nil && n > 0
}

// unsetTime reports whether a finish_time means "none": empty, or a
// placeholder some APIs write for it.
func unsetTime(t string) bool {
	switch strings.ToLower(strings.TrimSpace(t)) {
	case "", "null", "none", "0", "-", "0000-00-00 00:00:00":
		return true
	}
	return false
}

// terminalWords are the status words that end an action, folded to lower
// case without separators: the known ones (success, failed, error, aborted,
// canceled, timeout) and their usual spellings.
var terminalWords = map[string]bool{
	"success": true, "succeeded": true, "successful": true, "succeed": true, "passed": true,
	"completed": true, "complete": true, "finished": true, "done": true,
	"fail": true, "failed": true, "failure": true, "error": true, "errored": true,
	"abort": true, "aborted": true, "cancel": true, "canceled": true, "cancelled": true,
	"timeout": true, "timedout": true, "expired": true,
	"stop": true, "stopped": true, "killed": true, "terminated": true, "interrupted": true,
	"skip": true, "skipped": true, "ignored": true, "rejected": true,
}

// Finished reports whether status is a word that ends an action, in any
// case and with any separators ("SUCCESS", "Timed_Out"). Words it does not
// know count as running.
func Finished(status string) bool {
	var b strings.Builder
	for _, r := range strings.ToLower(status) {
		if r >= 'a' && r <= 'z' {
			b.WriteRune(r)
		}
	}
	return terminalWords[b.String()]
}
