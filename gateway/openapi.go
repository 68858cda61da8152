package gateway

import (
	_ "embed"
	"net/http"
)

// openAPI is the REST mirror's OpenAPI 2.0 document, generated from the
// proto and proto/buildlog/v1/buildlog_openapi.yaml (buf.gen.yaml).
//
//go:embed openapiv2/buildlog/v1/buildlog.swagger.json
var openAPI []byte

// OpenAPIPath is where the REST mirror serves its OpenAPI document.
const OpenAPIPath = "/openapi.json"

// withOpenAPI serves the OpenAPI document at OpenAPIPath and passes every
// other request to next.
func withOpenAPI(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != OpenAPIPath {
			next.ServeHTTP(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "public, max-age=3600")
		w.Write(openAPI)
	})
}
