// Package layers holds the test of the repository's import rules: which of
// its packages each may import, and what callers' packages must never pull
// in. The README's diagram shows the same rules.
package layers

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/buildlog/buildlog/"

// allowed lists, for each package, the repository's packages it may import
// directly. A package missing here fails the test: add it with its rule.
var allowed = map[string][]string{
	"gen/buildlog/v1":       {},
	"api":                   {"gen/buildlog/v1"},
	"upstream":              {},
	"upstream/upstreamtest": {"upstream"},
	"service":               {"api", "gen/buildlog/v1", "upstream"},
	"gateway":               {"api", "gen/buildlog/v1", "service"},
	"server":                {"api", "gateway", "gen/buildlog/v1", "internal/liblog", "service", "upstream"},
	"server/servertest":     {"api", "gen/buildlog/v1", "server", "upstream/upstreamtest"},
	"client":                {"api", "gen/buildlog/v1", "internal/chunkwire"},
	"cmd/buildlog":          {"api", "client", "gen/buildlog/v1"},
	"cmd/buildlogd":         {"internal/liblog", "server", "service", "upstream", "upstream/upstreamtest"},
	"internal/chunkwire":    {"gen/buildlog/v1"},
	"internal/liblog":       {},
	"internal/benchproc":    {},
	"internal/layers":       {},
	"internal/syncbuf":      {},
	"deploy/nginx":          {}, // a test only: nginx in front of two replicas
	"clients/testbed":       {"internal/benchproc", "upstream/upstreamtest"},
	"clients":               {}, // a test only: the Python and TypeScript suites
}

// transport lists what the download core must not import: it knows no
// transport. (It depends on grpc-go only through the generated package,
// whose service stubs sit beside the messages.)
var transport = []string{"google.golang.org/grpc", "google.golang.org/grpc/metadata", "google.golang.org/grpc/peer",
	"google.golang.org/grpc/credentials", "github.com/grpc-ecosystem/"}

// forbidden lists what a package must not depend on, even indirectly:
// callers' packages pull in nothing of the server, and the upstream
// client nothing of the service.
var forbidden = map[string][]string{
	"api":          {module + "service", module + "upstream"},
	"client":       {module + "service", module + "upstream", module + "server", module + "gateway", "github.com/huaweicloud/"},
	"cmd/buildlog": {module + "service", module + "upstream", module + "server", module + "gateway", "github.com/huaweicloud/", "github.com/grpc-ecosystem/"},
	"upstream":     {module + "service", module + "api", "google.golang.org/grpc"},
}

// list runs go list with a template over the repository's packages,
// benchmarks aside, and returns each package's list, by its path within the
// module.
func list(t *testing.T, args ...string) map[string][]string {
	t.Helper()
	out, err := exec.Command("go", append([]string{"list"}, args...)...).Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	pkgs := map[string][]string{}
	for line := range strings.Lines(strings.TrimSpace(string(out))) {
		path, imports, _ := strings.Cut(strings.TrimSpace(line), ":")
		if path = strings.TrimPrefix(path, module); !strings.HasPrefix(path, "bench") {
			pkgs[path] = strings.Fields(imports)
		}
	}
	return pkgs
}

// matches reports whether the import path p is rule, or under it when rule
// ends with "/".
func matches(p, rule string) bool {
	return p == rule || strings.HasSuffix(rule, "/") && strings.HasPrefix(p, rule)
}

func TestImportRules(t *testing.T) {
	t.Parallel()
	for pkg, imports := range list(t, "-f", "{{.ImportPath}}:{{join .Imports \" \"}}", module+"...") {
		rule, ok := allowed[pkg]
		if !ok {
			t.Errorf("package %s has no import rule: add it to allowed", pkg)
			continue
		}
		for _, imp := range imports {
			if in, ok := strings.CutPrefix(imp, module); ok && !slices.Contains(rule, in) {
				t.Errorf("%s imports %s, which its rule does not allow", pkg, in)
			}
			if pkg == "service" && slices.ContainsFunc(transport, func(r string) bool { return matches(imp, r) }) {
				t.Errorf("service imports %s: the download core knows no transport", imp)
			}
		}
	}
}

func TestForbiddenDependencies(t *testing.T) {
	t.Parallel()
	for pkg, bad := range forbidden {
		out, err := exec.Command("go", "list", "-deps", module+pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", pkg, err)
		}
		for dep := range strings.Lines(string(out)) {
			dep = strings.TrimSpace(dep)
			if slices.ContainsFunc(bad, func(r string) bool { return matches(dep, r) }) {
				t.Errorf("%s depends on %s", pkg, dep)
			}
		}
	}
}
