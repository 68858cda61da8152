package service

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/buildlog/buildlog/api"
	buildlogv1 "github.com/buildlog/buildlog/gen/buildlog/v1"
)

const validRecordID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"

func TestValidate(t *testing.T) {
	t.Parallel()
	valid := func() *buildlogv1.DownloadTaskLogRequest {
		return &buildlogv1.DownloadTaskLogRequest{RecordId: validRecordID, TaskName: "stage1"}
	}
	tests := []struct {
		name       string
		mutate     func(*buildlogv1.DownloadTaskLogRequest)
		wantFields []string
	}{
		{"valid", func(*buildlogv1.DownloadTaskLogRequest) {}, nil},
		{"valid with everything", func(r *buildlogv1.DownloadTaskLogRequest) {
			r.LogLevel, r.Offset, r.Limit, r.TaskName = buildlogv1.LogLevel_LOG_LEVEL_DEBUG, 10, 20, strings.Repeat("日", 1000)
		}, nil},
		{"hostile but valid task name", func(r *buildlogv1.DownloadTaskLogRequest) { r.TaskName = "a&b#c%d/e f\r\n" }, nil},
		{"missing record id", func(r *buildlogv1.DownloadTaskLogRequest) { r.RecordId = "" }, []string{"record_id"}},
		{"short record id", func(r *buildlogv1.DownloadTaskLogRequest) { r.RecordId = "abc" }, []string{"record_id"}},
		{"upper case record id", func(r *buildlogv1.DownloadTaskLogRequest) { r.RecordId = strings.ToUpper(validRecordID) }, []string{"record_id"}},
		{"path traversal record id", func(r *buildlogv1.DownloadTaskLogRequest) { r.RecordId = "../../../../../../../../etc/passwd-x" }, []string{"record_id"}},
		{"escaped slash record id", func(r *buildlogv1.DownloadTaskLogRequest) { r.RecordId = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b%2F4d" }, []string{"record_id"}},
		{"missing task name", func(r *buildlogv1.DownloadTaskLogRequest) { r.TaskName = "" }, []string{"task_name"}},
		{"task name too long", func(r *buildlogv1.DownloadTaskLogRequest) { r.TaskName = strings.Repeat("a", 1001) }, []string{"task_name"}},
		{"unknown log level", func(r *buildlogv1.DownloadTaskLogRequest) { r.LogLevel = 7 }, []string{"log_level"}},
		{"negative offset", func(r *buildlogv1.DownloadTaskLogRequest) { r.Offset = -1 }, []string{"offset"}},
		{"negative limit", func(r *buildlogv1.DownloadTaskLogRequest) { r.Limit = -1 }, []string{"limit"}},
		{"everything wrong", func(r *buildlogv1.DownloadTaskLogRequest) {
			*r = buildlogv1.DownloadTaskLogRequest{LogLevel: -1, Offset: -1, Limit: -1}
		}, []string{"record_id", "task_name", "log_level", "offset", "limit"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			req := valid()
			tt.mutate(req)
			err := validate(req, nil)
			var got []string
			var e *api.Error
			if errors.As(err, &e) && e.Code == codes.InvalidArgument && e.Reason == api.ReasonInvalidRequest {
				for _, v := range e.Violations {
					got = append(got, v.GetField())
					if v.GetDescription() == "" {
						t.Errorf("violation of %s has no description", v.GetField())
					}
				}
			} else if err != nil {
				t.Fatalf("validate() = %v, want nil or an INVALID_REQUEST *api.Error", err)
			}
			if strings.Join(got, ",") != strings.Join(tt.wantFields, ",") {
				t.Errorf("violations = %v, want %v", got, tt.wantFields)
			}
		})
	}
}

// A record id with a bad character is refused naming the character and
// its position; one of the wrong length, its length. Problems the
// transport found come first.
func TestValidateMessages(t *testing.T) {
	t.Parallel()
	tests := []struct {
		id, want string
	}{
		{"0A1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", `record_id: must be 36 characters of [0-9a-z-] (lower case): character 2 is 'A'`},
		{"0a1b2c3d/4e5f-4a6b-8c7d-9e0f1a2b3c4d", `character 9 is '/'`},
		{"0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4é", `character 36 is 'é'`},
		{"0a1b2c3d", "must be exactly 36 characters of [0-9a-z-], got 8"},
	}
	for _, tt := range tests {
		err := validate(&buildlogv1.DownloadTaskLogRequest{RecordId: tt.id, TaskName: "stage1"}, nil)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("record id %q: %v, want a message with %q", tt.id, err, tt.want)
		}
	}
	err := validate(&buildlogv1.DownloadTaskLogRequest{TaskName: "stage1"}, []Violation{{"offset", "must be a whole number of bytes, got \"abc\""}})
	var e *api.Error
	if !errors.As(err, &e) || len(e.Violations) != 2 || e.Violations[0].GetField() != "offset" || e.Violations[1].GetField() != "record_id" {
		t.Errorf("validate with a transport's violation = %v, want offset then record_id", err)
	}
}

func TestCallerToken(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		tokens     []string
		want       string
		wantReason string
	}{
		{"present", []string{"MIItoken"}, "MIItoken", ""},
		{"large", []string{strings.Repeat("t", 100_000)}, strings.Repeat("t", 100_000), ""},
		{"none", nil, "", api.ReasonMissingToken},
		{"empty", []string{""}, "", api.ReasonMissingToken},
		{"two tokens", []string{"a", "b"}, "", api.ReasonInvalidToken},
		{"too long", []string{strings.Repeat("t", 100_001)}, "", api.ReasonInvalidToken},
		{"CR LF", []string{"abc\r\nX-Injected: 1"}, "", api.ReasonInvalidToken},
		{"space", []string{"abc def"}, "", api.ReasonInvalidToken},
		{"non-ASCII", []string{"abcé"}, "", api.ReasonInvalidToken},
	}
	var s Service
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := s.callerToken(Caller{Tokens: tt.tokens})
			var e *api.Error
			switch {
			case tt.wantReason == "" && err != nil:
				t.Fatalf("callerToken() error = %v", err)
			case tt.wantReason != "" && (!errors.As(err, &e) || e.Reason != tt.wantReason || e.Code != codes.Unauthenticated):
				t.Fatalf("callerToken() error = %v, want UNAUTHENTICATED %s", err, tt.wantReason)
			case got != tt.want:
				t.Errorf("callerToken() = %.20q, want %.20q", got, tt.want)
			}
			if err != nil && len(tt.tokens) == 1 && len(tt.tokens[0]) > 3 && strings.Contains(err.Error(), tt.tokens[0]) {
				t.Errorf("error message %q contains the token", err)
			}
		})
	}
}

func TestFileName(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, in, want string }{
		{"plain", "stage1.log", "stage1.log"},
		{"directories dropped", "../../etc/passwd", "passwd"},
		{"windows separators", `C:\logs\build.log`, "build.log"},
		{"hidden file", ".bashrc", "_bashrc"},
		{"unsafe characters", "build log;rm -rf.txt", "build_log_rm_-rf.txt"},
		{"non-ASCII", "日志.log", "__.log"},
		{"empty uses fallback", "", "rec-stage_1.log"},
		{"dot-dot uses fallback", "..", "rec-stage_1.log"},
		{"capped", strings.Repeat("a", 300), strings.Repeat("a", 255)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := fileName(tt.in, "rec-stage 1.log"); got != tt.want {
				t.Errorf("fileName(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}
