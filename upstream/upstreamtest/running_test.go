package upstreamtest

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// answer is what a test keeps of a response.
type answer struct {
	status int
	header http.Header
	body   []byte
}

// fetch sends a request to s with the token "tok" unless token is given,
// and a Range header when rangeHdr is not empty.
func fetch(t *testing.T, s *Server, method, path, rangeHdr string, token ...string) answer {
	t.Helper()
	req, err := http.NewRequest(method, s.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok := "tok"
	if len(token) > 0 {
		tok = token[0]
	}
	if tok != "" {
		req.Header.Set("X-Auth-Token", tok)
	}
	if rangeHdr != "" {
		req.Header.Set("Range", rangeHdr)
	}
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read the body of %s: %v", path, err)
	}
	return answer{resp.StatusCode, resp.Header, body}
}

func logPath(task string) string { return "/v4/" + recordID + "/task-log?task_name=" + task }

const stagesPath = "/v1/record/" + recordID + "/full-stages?cascade=true"

// testStage has the JSON names and types of the SDK's BuildStageRecord.
type testStage struct {
	ID            string `json:"id"`
	Status        string `json:"status"`
	StatusCode    int32  `json:"status_code"`
	LogStatus     string `json:"log_status"`
	CreateTime    string `json:"create_time"`
	StartTime     string `json:"start_time"`
	FinishTime    string `json:"finish_time"`
	Sequence      int32  `json:"sequence"`
	DisplayName   string `json:"display_name"`
	BuildRecordID string `json:"build_record_id"`
	ExecutionID   string `json:"execution_id"`
	NodeID        int32  `json:"node_id"`
}

// stagesByName fetches full-stages and returns its stages by display name,
// each with its key checked against its id.
func stagesByName(t *testing.T, s *Server) map[string]testStage {
	t.Helper()
	a := fetch(t, s, http.MethodGet, stagesPath, "")
	if a.status != http.StatusOK || a.header.Get("Content-Type") != "application/json" {
		t.Fatalf("full-stages: status %d, Content-Type %q; want 200 JSON (body %s)", a.status, a.header.Get("Content-Type"), a.body)
	}
	var doc struct {
		Status string `json:"status"`
		Result struct {
			BuildStages map[string]testStage `json:"build_stages"`
		} `json:"result"`
	}
	if err := json.Unmarshal(a.body, &doc); err != nil || doc.Status != "success" {
		t.Fatalf("full-stages body %s: %v, status %q; want the SDK's shape and success", a.body, err, doc.Status)
	}
	out := map[string]testStage{}
	for key, st := range doc.Result.BuildStages {
		if st.ID != key {
			t.Errorf("stage %q has id %q, want its key", key, st.ID)
		}
		out[st.DisplayName] = st
	}
	return out
}

// waitFor polls cond until it holds, failing after a generous deadline so
// that a broken clock fails the test rather than hanging it.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
	}
}

func newTestServer(t *testing.T) *Server {
	s := NewServer()
	t.Cleanup(s.Close)
	s.AddToken("tok")
	return s
}

func TestGeneratedLogIsPrefixStable(t *testing.T) {
	t.Parallel()
	long := Generate(3*pageLines*100+5, "INFO", "stage1")
	for _, n := range []int64{0, 1, 99, 100, 101, pageLines * 100, 2*pageLines*100 + 7} {
		if got := Generate(n, "INFO", "stage1"); !bytes.Equal(got, long[:n]) {
			t.Errorf("Generate(%d) is not the prefix of a longer log", n)
		}
	}
}

func TestActionGrowsByGrow(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	a := s.AddAction(recordID, "stage1", Action{Log: Log{Size: 1000, ETag: `"v1"`, FileName: "stage1.log"}})
	full := Generate(1000, "INFO", "stage1")

	got := fetch(t, s, http.MethodGet, logPath("stage1"), "")
	if got.status != http.StatusOK || len(got.body) != 0 || got.header.Get("Content-Length") != "0" {
		t.Errorf("new action: status %d, %d bytes, Content-Length %q; want 200, empty", got.status, len(got.body), got.header.Get("Content-Length"))
	}
	if tag := got.header.Get("ETag"); tag != `"v1-0"` {
		t.Errorf("ETag = %s, want \"v1-0\"", tag)
	}
	a.Grow(300)
	got = fetch(t, s, http.MethodGet, logPath("stage1"), "")
	if !bytes.Equal(got.body, full[:300]) || got.header.Get("ETag") != `"v1-300"` || got.header.Get("Content-Disposition") == "" {
		t.Errorf("after Grow(300): %d bytes, ETag %s; want the log's first 300 bytes, \"v1-300\", a file name", len(got.body), got.header.Get("ETag"))
	}
	debug := fetch(t, s, http.MethodGet, logPath("stage1")+"&log_level=DEBUG", "")
	if !bytes.Equal(debug.body, Generate(300, "DEBUG", "stage1")) {
		t.Error("DEBUG level: not the DEBUG log's first 300 bytes")
	}
	a.Grow(10_000)
	if n := a.Size(); n != 1000 {
		t.Errorf("Size() after growing past the end = %d, want the final 1000", n)
	}
	if a.Finished() {
		t.Error("an action growing by Grow alone finished by itself, want it running until Finish")
	}
	a.Finish()
	a.Grow(1)
	if got := fetch(t, s, http.MethodGet, logPath("stage1"), ""); !bytes.Equal(got.body, full) || !a.Finished() {
		t.Errorf("finished: %d bytes, Finished() %v; want the whole log, true", len(got.body), a.Finished())
	}
}

func TestActionGrowsByItselfWithStablePrefix(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	const size = 20_000
	a := s.AddAction(recordID, "stage2", Action{Log: Log{Size: size}, Step: 700, Every: 10 * time.Millisecond})
	full := Generate(size, "INFO", "stage2")

	var prev []byte
	for len(prev) < size {
		waitFor(t, "the log to grow", func() bool { return a.Size() > int64(len(prev)) })
		got := fetch(t, s, http.MethodGet, logPath("stage2"), "")
		if len(got.body) < len(prev) || !bytes.Equal(got.body[:len(prev)], prev) {
			t.Fatalf("read %d bytes after %d: the earlier bytes changed or the log shrank", len(got.body), len(prev))
		}
		prev = got.body
	}
	if !bytes.Equal(prev, full) || !a.Finished() {
		t.Errorf("the grown log (%d bytes) differs from the finished log, or Finished() = %v", len(prev), a.Finished())
	}
	st := stagesByName(t, s)["stage2"]
	if st.Status != "success" || st.StatusCode != StatusCodeSuccess || st.FinishTime == "" {
		t.Errorf("finished by itself: %+v, want success with a finish_time", st)
	}
}

func TestActionRanges(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	s.AddAction(recordID, "stage1", Action{Log: Log{Size: 1000}}).Grow(100)
	s.AddAction(recordID, "stage2", Action{Log: Log{Size: 1000, IgnoreRange: true}}).Grow(100)
	s.AddAction(recordID, "stage3", Action{Log: Log{Size: 1000, OmitLength: true}}).Grow(100)
	content := []byte("0123456789abcdefghijklmnopqrstuvwxyz")
	s.AddAction(recordID, "stage4", Action{Log: Log{Content: content, ContentType: "text/plain"}}).Grow(10)
	log1 := Generate(100, "INFO", "stage1")

	tests := []struct {
		name       string
		task       string
		rangeHdr   string
		wantStatus int
		wantBody   []byte
		wantHeader map[string]string
	}{
		{"range in the snapshot", "stage1", "bytes=40-", 206, log1[40:],
			map[string]string{"Content-Range": "bytes 40-99/100", "Content-Length": "60"}},
		{"closed range past the end", "stage1", "bytes=90-200", 206, log1[90:],
			map[string]string{"Content-Range": "bytes 90-99/100"}},
		{"range at the current end", "stage1", "bytes=100-", 416, nil,
			map[string]string{"Content-Range": "bytes */100"}},
		{"range past the current end", "stage1", "bytes=500-", 416, nil,
			map[string]string{"Content-Range": "bytes */100"}},
		{"range ignored", "stage2", "bytes=40-", 200, Generate(100, "INFO", "stage2"),
			map[string]string{"Content-Length": "100", "Accept-Ranges": "", "Content-Range": ""}},
		{"no length", "stage3", "", 200, Generate(100, "INFO", "stage3"),
			map[string]string{"Content-Length": ""}},
		{"range without a length", "stage3", "bytes=40-", 206, Generate(100, "INFO", "stage3")[40:],
			map[string]string{"Content-Range": "bytes 40-99/*", "Content-Length": ""}},
		{"range at the end without a length", "stage3", "bytes=100-", 416, nil,
			map[string]string{"Content-Range": ""}},
		{"content", "stage4", "", 200, content[:10],
			map[string]string{"Content-Type": "text/plain", "Content-Length": "10"}},
		{"content range", "stage4", "bytes=5-", 206, content[5:10],
			map[string]string{"Content-Range": "bytes 5-9/10"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := fetch(t, s, http.MethodGet, logPath(tt.task), tt.rangeHdr)
			if got.status != tt.wantStatus {
				t.Errorf("status = %d, want %d (body %s)", got.status, tt.wantStatus, got.body)
			}
			if tt.wantStatus < 400 && !bytes.Equal(got.body, tt.wantBody) {
				t.Errorf("body = %q, want %q", got.body, tt.wantBody)
			}
			for k, v := range tt.wantHeader {
				if h := got.header.Get(k); h != v {
					t.Errorf("header %s = %q, want %q", k, h, v)
				}
			}
		})
	}
}

func TestActionTruncate(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	a := s.AddAction(recordID, "stage1", Action{Log: Log{Size: 1000, ETag: "v2"}})
	a.Grow(500)
	a.Truncate(200)
	got := fetch(t, s, http.MethodGet, logPath("stage1"), "")
	if !bytes.Equal(got.body, Generate(200, "INFO", "stage1")) || got.header.Get("ETag") != `"v2-200"` {
		t.Errorf("after Truncate(200): %d bytes, ETag %s; want the first 200 bytes, \"v2-200\"", len(got.body), got.header.Get("ETag"))
	}
	if got := fetch(t, s, http.MethodGet, logPath("stage1"), "bytes=300-"); got.status != 416 || got.header.Get("Content-Range") != "bytes */200" {
		t.Errorf("range past the truncated end: %d, Content-Range %q; want 416, bytes */200", got.status, got.header.Get("Content-Range"))
	}
	a.Truncate(900)
	if n := a.Size(); n != 200 {
		t.Errorf("Truncate to a longer size: Size() = %d, want 200 unchanged", n)
	}
	a.Grow(100)
	if got := fetch(t, s, http.MethodGet, logPath("stage1"), ""); !bytes.Equal(got.body, Generate(300, "INFO", "stage1")) {
		t.Error("regrown after Truncate: not the log's first 300 bytes")
	}
	a.Finish()
	a.Truncate(50)
	if n := a.Size(); n != 50 || !a.Finished() {
		t.Errorf("Truncate after Finish: Size() %d, Finished() %v; want 50, true", n, a.Finished())
	}
}

func TestFullStages(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	s.AddLog(recordID, "stage1", Log{Size: 10})
	grown := s.AddAction(recordID, "stage2", Action{Log: Log{Size: 100}})
	s.AddAction(recordID, "stage3", Action{Log: Log{Size: 100}, RunningStatus: "BUILDING", FinalStatus: "FAILED", NoFinishTime: true}).Finish()
	s.AddAction(recordID, "build", Action{Log: Log{Size: 100}, Sequence: 7, StageKey: "my-key", RunningStatus: "queued"})
	s.AddAction(recordID, "stage4", Action{Log: Log{Size: 100}, FinalStatus: "Success"}).Finish()

	uuidLike := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	stageTime := regexp.MustCompile(`^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$`)
	type want struct {
		status     string
		code       int32
		finished   bool
		sequence   int32
		derivedKey bool
	}
	wants := map[string]want{
		"stage1": {"success", StatusCodeSuccess, true, 1, true},
		"stage2": {"running", StatusCodeRunning, false, 2, true},
		"stage3": {"FAILED", StatusCodeFailed, false, 3, true},
		"build":  {"queued", StatusCodeRunning, false, 7, false},
		"stage4": {"Success", StatusCodeSuccess, true, 4, true},
	}
	first := stagesByName(t, s)
	if len(first) != len(wants) {
		t.Errorf("full-stages lists %d stages, want %d", len(first), len(wants))
	}
	for name, w := range wants {
		st := first[name]
		got := want{st.Status, st.StatusCode, st.FinishTime != "", st.Sequence, uuidLike.MatchString(st.ID)}
		if diff := cmp.Diff(w, got, cmp.AllowUnexported(want{})); diff != "" {
			t.Errorf("stage %s (-want +got):\n%s", name, diff)
		}
		if st.LogStatus != st.Status || st.BuildRecordID != recordID || st.ExecutionID == "" || !stageTime.MatchString(st.StartTime) || !stageTime.MatchString(st.CreateTime) {
			t.Errorf("stage %s: %+v; want log_status = status, the record id, an execution id and times", name, st)
		}
		if st.FinishTime != "" && !stageTime.MatchString(st.FinishTime) {
			t.Errorf("stage %s: finish_time %q, want %q", name, st.FinishTime, StageTimeFormat)
		}
	}
	if first["build"].ID != "my-key" {
		t.Errorf("StageKey: key %q, want my-key", first["build"].ID)
	}

	grown.Finish()
	second := stagesByName(t, s)
	if st := second["stage2"]; st.Status != "success" || st.StatusCode != StatusCodeSuccess || st.FinishTime == "" || st.ID != first["stage2"].ID {
		t.Errorf("after Finish: %+v; want success with a finish_time, under the same key", st)
	}

	s.AddLog(recordID, "build", Log{Size: 5}) // replaces the action
	if st := stagesByName(t, s)["build"]; st.Status != "success" || st.Sequence != 0 {
		t.Errorf("an action replaced by AddLog: %+v; want a finished log with sequence 0", st)
	}
	if r := s.Requests(); r[len(r)-1].Query["cascade"][0] != "true" {
		t.Errorf("last request recorded %v, want the full-stages query", r[len(r)-1].Query)
	}
}

func TestFullStagesErrors(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	s.AddLog(recordID, "stage1", Log{Size: 10})
	tests := []struct {
		name       string
		method     string
		path       string
		token      string
		wantStatus int
		wantCode   string
	}{
		{"no token", http.MethodGet, stagesPath, "", 401, AuthFailedCode},
		{"wrong token", http.MethodGet, stagesPath, "nope", 401, AuthFailedCode},
		{"unknown record", http.MethodGet, "/v1/record/ffffffff-4e5f-4a6b-8c7d-9e0f1a2b3c4d/full-stages", "tok", 404, NotFoundCode},
		{"bad record id", http.MethodGet, "/v1/record/NOT-A-RECORD/full-stages", "tok", 400, InvalidParameterCode},
		{"wrong method", http.MethodPost, stagesPath, "tok", 405, APINotFoundCode},
		{"unknown subpath", http.MethodGet, "/v1/record/" + recordID + "/info", "tok", 404, APINotFoundCode},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := fetch(t, s, tt.method, tt.path, "", tt.token)
			var doc struct {
				Code string `json:"error_code"`
			}
			_ = json.Unmarshal(got.body, &doc)
			if got.status != tt.wantStatus || doc.Code != tt.wantCode || got.header.Get("X-Request-Id") == "" {
				t.Errorf("status %d, error_code %q; want %d, %q and a request id (body %s)", got.status, doc.Code, tt.wantStatus, tt.wantCode, got.body)
			}
		})
	}
	if got := fetch(t, s, http.MethodHead, stagesPath, ""); got.status != 200 || got.header.Get("Content-Length") == "" {
		t.Errorf("HEAD: status %d, Content-Length %q; want 200 with a length", got.status, got.header.Get("Content-Length"))
	}
}

func TestFaultsByRoute(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	s.AddAction(recordID, "stage1", Action{Log: Log{Size: 10}}).Grow(10)
	s.Inject(Fault{Route: RouteFullStages, Status: 503, Times: 2})
	s.Inject(Fault{Route: RouteTaskLog, Status: 500})
	s.Inject(Fault{Route: RouteFullStages, Cut: true, CutAfter: 5})
	s.Inject(Fault{Status: 418, Times: 2})

	var got []int
	for _, p := range []string{logPath("stage1"), stagesPath, logPath("stage1"), stagesPath, stagesPath, logPath("stage1"), stagesPath} {
		req, _ := http.NewRequest(http.MethodGet, s.URL+p, nil)
		req.Header.Set("X-Auth-Token", "tok")
		client := &http.Client{Transport: &http.Transport{}}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		client.CloseIdleConnections()
		if err != nil {
			got = append(got, -1) // the body was cut
			continue
		}
		got = append(got, resp.StatusCode)
	}
	want := []int{500, 503, 418, 503, -1, 418, 200}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("statuses by route, -1 for a cut body (-want +got):\n%s", diff)
	}
}

func TestActionRestarts(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	a := s.AddAction(recordID, "stage1", Action{Log: Log{Size: 3000}, Step: 1000, Every: 10 * time.Millisecond, Restart: true, Pause: 30 * time.Millisecond})
	full := Generate(3000, "INFO", "stage1")
	for range 2 {
		waitFor(t, "the action to finish", a.Finished)
		// A log shorter than its final size again: the action started over.
		waitFor(t, "the action to restart", func() bool { return a.Size() < 3000 })
		if got := fetch(t, s, http.MethodGet, logPath("stage1"), ""); !bytes.HasPrefix(full, got.body) {
			t.Fatalf("restarted log (%d bytes) is not a prefix of the log", len(got.body))
		}
	}
	waitFor(t, "a restarted action reported as running", func() bool {
		st := stagesByName(t, s)["stage1"]
		return st.Status == "running" && st.FinishTime == ""
	})
}

// TestActionAdvance checks the clock arithmetic on a fixed timeline.
func TestActionAdvance(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 12, 2, 18, 40, 0, 0, time.UTC)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	type point struct {
		Size     int64
		Finished bool
	}
	tests := []struct {
		name string
		a    Action
		at   []time.Time
		want []point
	}{
		{"grows, then finishes at its size", Action{Log: Log{Size: 250}, Step: 100, Every: 10 * time.Millisecond},
			[]time.Time{ms(0), ms(9), ms(10), ms(25), ms(29), ms(30), ms(1000)},
			[]point{{0, false}, {0, false}, {100, false}, {200, false}, {200, false}, {250, true}, {250, true}}},
		{"restarts after the pause", Action{Log: Log{Size: 200}, Step: 100, Every: 10 * time.Millisecond, Restart: true, Pause: 5 * time.Millisecond},
			[]time.Time{ms(20), ms(24), ms(25), ms(35), ms(45), ms(50), ms(1000)},
			// Runs last 20 ms and pauses 5: a run starts every 25 ms.
			[]point{{200, true}, {200, true}, {0, false}, {100, false}, {200, true}, {0, false}, {0, false}}},
		{"an empty log finishes after one period", Action{Log: Log{}, Step: 100, Every: 10 * time.Millisecond},
			[]time.Time{ms(5), ms(10)},
			[]point{{0, false}, {0, true}}},
		{"no restart without Step and Every", Action{Log: Log{Size: 200}, Restart: true},
			[]time.Time{ms(10_000)},
			[]point{{0, false}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := newRunningAction(tt.a, t0)
			var got []point
			for _, at := range tt.at {
				r.advance(at)
				got = append(got, point{r.size, r.finished})
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}
