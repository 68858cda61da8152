package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/buildlog/buildlog/upstream/upstreamtest"
)

// TestPrintDemo checks the lines CI runs: the first command of each kind is
// the small record's, and the running record has its follow commands.
func TestPrintDemo(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	printDemo(&out, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9090}, &net.TCPAddr{Port: 8080}, nil)
	lines := strings.Split(out.String(), "\n")
	first := func(pattern string) string {
		re := regexp.MustCompile(pattern)
		for _, l := range lines {
			if re.MatchString(l) {
				return l
			}
		}
		return ""
	}
	tests := []struct {
		name, pattern, want string
	}{
		{"CI's curl", `^  curl .*task_name=stage1'$`, demoRecordSmall},
		{"CI's CLI", `^  go run ./cmd/buildlog download .* --task-name stage1$`, demoRecordSmall},
		{"sample record", `^  ` + demoRecordRunning + `  stage1 `, demoRecordRunning},
		{"follow with curl", `^  curl -sSN .*/v4/` + demoRecordRunning + `/task-log\?task_name=stage1&follow=true'$`, "localhost:8080"},
		{"follow with the CLI", `^  go run ./cmd/buildlog download --addr 127.0.0.1:9090 .* --record-id ` + demoRecordRunning + ` --task-name stage1 -f$`, demoToken},
	}
	for _, tt := range tests {
		if got := first(tt.pattern); !strings.Contains(got, tt.want) {
			t.Errorf("%s: first line matching %s is %q, want it to contain %s", tt.name, tt.pattern, got, tt.want)
		}
	}
}

// TestDemoUpstream checks that the demo's records answer full-stages and
// that the running record's log grows.
func TestDemoUpstream(t *testing.T) {
	t.Parallel()
	up, err := startDemoUpstream()
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	get := func(path string) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, up.URL+path, nil)
		req.Header.Set("X-Auth-Token", demoToken)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, body
	}
	stages := func(record string) map[int]int {
		t.Helper()
		status, body := get("/v1/record/" + record + "/full-stages")
		var doc struct {
			Result struct {
				BuildStages map[string]struct {
					StatusCode int `json:"status_code"`
					Sequence   int `json:"sequence"`
				} `json:"build_stages"`
			} `json:"result"`
		}
		if err := json.Unmarshal(body, &doc); status != http.StatusOK || err != nil {
			t.Fatalf("full-stages of %s: %d, %v (body %s)", record, status, err, body)
		}
		codes := map[int]int{} // sequence → status_code
		for _, st := range doc.Result.BuildStages {
			codes[st.Sequence] = st.StatusCode
		}
		return codes
	}
	if got := stages(demoRecordSmall); len(got) != 2 || got[1] != upstreamtest.StatusCodeSuccess || got[2] != upstreamtest.StatusCodeSuccess {
		t.Errorf("small record's stages (sequence → status_code) = %v, want 1 and 2 succeeded", got)
	}
	if got := stages(demoRecordRunning); len(got) != 1 || got[1] != upstreamtest.StatusCodeRunning {
		t.Errorf("running record's stages (sequence → status_code) = %v, want 1 running", got)
	}
	var log []byte
	for deadline := time.Now().Add(20 * time.Second); len(log) == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the running record's log did not grow")
		}
		_, log = get("/v4/" + demoRecordRunning + "/task-log?task_name=stage1")
	}
	if !bytes.HasSuffix(log, []byte("\n")) || !bytes.Equal(log, upstreamtest.Generate(int64(len(log)), "INFO", "stage1")) {
		t.Errorf("running log: %d bytes, want whole generated lines", len(log))
	}
}
