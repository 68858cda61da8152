package server

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzBearer checks the Authorization parser on untrusted input: only
// "Bearer <listed token>" (scheme in any case) authenticates.
func FuzzBearer(f *testing.F) {
	const listed = "listed-token-123"
	path := filepath.Join(f.TempDir(), "callers")
	if err := os.WriteFile(path, []byte("# comment\n"+listed+"\n\n  other-token  \n"), 0o600); err != nil {
		f.Fatal(err)
	}
	a, err := newCallerAuth(false, path, slog.New(slog.DiscardHandler))
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{"Bearer " + listed, "bearer " + listed, "Bearer  " + listed + " ", "Basic " + listed, listed,
		"Bearer", "Bearer ", "Bearer # comment", "Bearer other-token", "Bearer listed-token-12", "Bearer\t" + listed, ""} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, v string) {
		got := a.bearer([]string{v})
		scheme, token, _ := strings.Cut(v, " ")
		token = strings.TrimSpace(token)
		want := strings.EqualFold(scheme, "Bearer") && (token == listed || token == "other-token")
		if got != want {
			t.Errorf("bearer(%q) = %v, want %v", v, got, want)
		}
		if a.bearer([]string{v, v}) {
			t.Errorf("two Authorization values %q authenticated", v)
		}
	})
}
