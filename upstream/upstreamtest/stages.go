package upstreamtest

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Values of status_code in full-stages. The real API's codes are not
// documented; these are the simulator's own.
const (
	// StatusCodeSuccess is the code of an action finished with the status
	// word "success", in any case.
	StatusCodeSuccess = 0
	// StatusCodeRunning is the code of an action still running, whatever
	// its status word.
	StatusCodeRunning = 1
	// StatusCodeFailed is the code of an action finished with any other
	// status word ("failed", "aborted", …).
	StatusCodeFailed = 2
)

// StageTimeFormat is the layout of the times in full-stages, in UTC.
const StageTimeFormat = "2006-01-02 15:04:05"

// finishedLogAge is how long before the server started the logs of AddLog
// are reported to have started.
const finishedLogAge = time.Minute

// stagesResponse is the body of a full-stages answer, in the shape of the
// SDK's ShowBuildRecordFullStagesResponse.
type stagesResponse struct {
	Status string `json:"status"`
	Result struct {
		BuildStages map[string]stageRecord `json:"build_stages"`
	} `json:"result"`
}

// stageRecord is one stage of full-stages, with the JSON names and types of
// the SDK's BuildStageRecord. The fields whose meaning is unknown
// (schedule_time, queued_time, the durations) are left out, as the SDK's
// omitempty allows.
type stageRecord struct {
	ID            string `json:"id"`
	Status        string `json:"status"`
	StatusCode    int    `json:"status_code"`
	LogStatus     string `json:"log_status"`
	CreateTime    string `json:"create_time"`
	StartTime     string `json:"start_time"`
	FinishTime    string `json:"finish_time"`
	Sequence      int    `json:"sequence"`
	DisplayName   string `json:"display_name"`
	BuildRecordID string `json:"build_record_id"`
	ExecutionID   string `json:"execution_id"`
	NodeID        int    `json:"node_id"`
}

// serveStages answers GET /v1/record/{record_id}/full-stages: one stage per
// task of the record, actions of AddAction and logs of AddLog alike. The
// body faults of f (which may be nil) apply to the JSON.
func (s *Server) serveStages(w http.ResponseWriter, r *http.Request, recordID string, f *Fault) {
	requestID := w.Header().Get("X-Request-Id")
	if !validRecordID(recordID) {
		writeError(w, http.StatusBadRequest, InvalidParameterCode, "Invalid parameter: record_id", requestID)
		return
	}
	stages := s.stages(recordID)
	if len(stages) == 0 {
		writeError(w, http.StatusNotFound, NotFoundCode, "The build record does not exist", requestID)
		return
	}
	var resp stagesResponse
	resp.Status = "success"
	resp.Result.BuildStages = stages
	body, err := json.Marshal(resp)
	if err != nil {
		panic(err) // strings and ints always marshal
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	writeBody(w, r, bytes.NewReader(body), f)
}

// stages returns the stages of a record by key, empty when the record has
// no task.
func (s *Server) stages(recordID string) map[string]stageRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	stages := map[string]stageRecord{}
	for key := range s.logs {
		if key.recordID == recordID {
			st := actionState{
				created:  s.running.epoch.Add(-finishedLogAge),
				started:  s.running.epoch.Add(-finishedLogAge),
				finished: s.running.epoch,
				status:   "success",
			}
			addStage(stages, key, st, Action{})
		}
	}
	for key, a := range s.running.actions {
		if key.recordID == recordID {
			addStage(stages, key, a.state(), a.a)
		}
	}
	return stages
}

// addStage adds the stage of the task key, in state st, configured by a.
func addStage(stages map[string]stageRecord, key logKey, st actionState, a Action) {
	id := a.StageKey
	if id == "" {
		id = stageKey(key)
	}
	code := StatusCodeFailed
	switch {
	case st.running:
		code = StatusCodeRunning
	case strings.EqualFold(st.status, "success"):
		code = StatusCodeSuccess
	}
	seq := a.Sequence
	if seq == 0 {
		seq = taskSequence(key.taskName)
	}
	execution := sha256.Sum256([]byte("execution\x00" + key.recordID))
	stages[id] = stageRecord{
		ID:            id,
		Status:        st.status,
		StatusCode:    code,
		LogStatus:     st.status,
		CreateTime:    stageTime(st.created),
		StartTime:     stageTime(st.started),
		FinishTime:    stageTime(st.finished),
		Sequence:      seq,
		DisplayName:   key.taskName,
		BuildRecordID: key.recordID,
		ExecutionID:   hex.EncodeToString(execution[:16]),
		NodeID:        int(binary.BigEndian.Uint32(stageHash(key)[16:]) % 1_000_000),
	}
}

// stageKey returns the default key of a task's stage: a uuid-like id
// derived from record and task, stable, and unrelated to the task name.
func stageKey(key logKey) string {
	h := hex.EncodeToString(stageHash(key)[:16])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func stageHash(key logKey) []byte {
	h := sha256.Sum256([]byte("stage\x00" + key.recordID + "\x00" + key.taskName))
	return h[:]
}

// taskSequence returns N for a task name "stageN" (N ≥ 1 without leading
// zeros), and 0 for any other name.
func taskSequence(taskName string) int {
	digits, ok := strings.CutPrefix(taskName, "stage")
	n, err := strconv.Atoi(digits)
	if !ok || err != nil || n < 1 || strconv.Itoa(n) != digits {
		return 0
	}
	return n
}

// stageTime formats t for full-stages; the zero time is "".
func stageTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(StageTimeFormat)
}
