package service

import (
	"context"
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc/metadata"

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
			err := validate(req)
			var got []string
			var ire *invalidRequestError
			if errors.As(err, &ire) {
				for _, v := range ire.violations {
					got = append(got, v.GetField())
					if v.GetDescription() == "" {
						t.Errorf("violation of %s has no description", v.GetField())
					}
				}
			} else if err != nil {
				t.Fatalf("validate() = %v, want nil or *invalidRequestError", err)
			}
			if strings.Join(got, ",") != strings.Join(tt.wantFields, ",") {
				t.Errorf("violations = %v, want %v", got, tt.wantFields)
			}
		})
	}
}

func TestTokenFromContext(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		md         metadata.MD
		want       string
		wantReason string
	}{
		{"present", metadata.Pairs(TokenMetadataKey, "MIItoken"), "MIItoken", ""},
		{"large", metadata.Pairs(TokenMetadataKey, strings.Repeat("t", 100_000)), strings.Repeat("t", 100_000), ""},
		{"no metadata", nil, "", ReasonMissingToken},
		{"empty", metadata.Pairs(TokenMetadataKey, ""), "", ReasonMissingToken},
		{"two tokens", metadata.Pairs(TokenMetadataKey, "a", TokenMetadataKey, "b"), "", ReasonInvalidToken},
		{"too long", metadata.Pairs(TokenMetadataKey, strings.Repeat("t", 100_001)), "", ReasonInvalidToken},
		{"CR LF", metadata.Pairs(TokenMetadataKey, "abc\r\nX-Injected: 1"), "", ReasonInvalidToken},
		{"space", metadata.Pairs(TokenMetadataKey, "abc def"), "", ReasonInvalidToken},
		{"non-ASCII", metadata.Pairs(TokenMetadataKey, "abcé"), "", ReasonInvalidToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			if tt.md != nil {
				ctx = metadata.NewIncomingContext(ctx, tt.md)
			}
			got, err := tokenFromContext(ctx)
			var te *tokenError
			switch {
			case tt.wantReason == "" && err != nil:
				t.Fatalf("tokenFromContext() error = %v", err)
			case tt.wantReason != "" && (!errors.As(err, &te) || te.reason != tt.wantReason):
				t.Fatalf("tokenFromContext() error = %v, want reason %s", err, tt.wantReason)
			case got != tt.want:
				t.Errorf("tokenFromContext() = %.20q, want %.20q", got, tt.want)
			}
			if err != nil && len(tt.md.Get(TokenMetadataKey)) == 1 && len(tt.md.Get(TokenMetadataKey)[0]) > 3 &&
				strings.Contains(err.Error(), tt.md.Get(TokenMetadataKey)[0]) {
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
