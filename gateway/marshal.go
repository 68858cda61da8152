package gateway

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/api/httpbody"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
)

// logMarshaler renders the mirror's responses: log chunks (as HttpBody, see
// toHTTPBody) as raw bytes with no delimiter between them, and errors as the
// upstream's error document. Requests have no body; decoding is JSON, as
// grpc-gateway's default.
type logMarshaler struct{ runtime.JSONPb }

var (
	_ runtime.Marshaler = (*logMarshaler)(nil)
	_ runtime.Delimited = (*logMarshaler)(nil)
)

// ContentType returns the log's media type for chunks, JSON otherwise.
func (*logMarshaler) ContentType(v any) string {
	if body, ok := v.(*httpbody.HttpBody); ok {
		if ct := body.GetContentType(); ct != "" {
			return ct
		}
		return "application/octet-stream"
	}
	return "application/json"
}

// Marshal returns a chunk's bytes, or an error's document.
func (*logMarshaler) Marshal(v any) ([]byte, error) {
	switch m := v.(type) {
	case *httpbody.HttpBody:
		return m.GetData(), nil
	case *spb.Status:
		return json.Marshal(describe(m, http.Header{}))
	case map[string]proto.Message: // grpc-gateway's stream error chunk, {"error": status}
		if st, ok := m["error"].(*spb.Status); ok {
			return json.Marshal(describe(st, http.Header{}))
		}
	}
	return nil, fmt.Errorf("gateway: cannot marshal %T", v)
}

// NewEncoder is unused by the mirror but required by runtime.Marshaler.
func (m *logMarshaler) NewEncoder(w io.Writer) runtime.Encoder {
	return runtime.EncoderFunc(func(v any) error {
		b, err := m.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	})
}

// Delimiter returns nothing: the body is the log, byte for byte.
func (*logMarshaler) Delimiter() []byte { return nil }
