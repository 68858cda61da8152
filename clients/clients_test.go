// Package clients_test runs the test suites of the client libraries in
// other languages (clients/python with pytest, clients/typescript with
// Node's test runner) against the test bed, a real buildlogd in front of
// the simulated upstream (clients/testbed), so that `go test ./...` runs
// them too. A suite whose tools are missing is skipped, unless
// BUILDLOG_REQUIRE_CLIENTS is set, as in CI.
package clients_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// testbed builds the test bed and buildlogd once for both suites.
func testbed(t *testing.T) []string {
	t.Helper()
	dir := t.TempDir()
	bins := map[string]string{"testbed": "./clients/testbed", "buildlogd": "./cmd/buildlogd"}
	for name, pkg := range bins {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg)
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	return append(os.Environ(),
		"BUILDLOG_TESTBED="+filepath.Join(dir, "testbed"),
		"BUILDLOG_TESTBED_BUILDLOGD="+filepath.Join(dir, "buildlogd"))
}

// missing skips the test, or fails it in CI, for a tool that is not there.
func missing(t *testing.T, what string) {
	t.Helper()
	if os.Getenv("BUILDLOG_REQUIRE_CLIENTS") != "" {
		t.Fatal(what)
	}
	t.Skip(what + "; CI runs this suite")
}

func run(t *testing.T, env []string, dir string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir, cmd.Env = dir, env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v in %s: %v\n%s", name, args, dir, err, out)
	}
	t.Logf("%s", out)
}

func TestTypeScriptClient(t *testing.T) {
	if _, err := os.Stat("typescript/dist/index.js"); err != nil {
		missing(t, "clients/typescript is not installed (cd clients/typescript && npm ci)")
	}
	run(t, testbed(t), "typescript", "npm", "test", "--silent")
}

func TestPythonClient(t *testing.T) {
	if exec.Command("/usr/bin/python3", "-c", "import grpc, google.protobuf, pytest").Run() != nil {
		missing(t, "Debian's python3-grpcio, python3-protobuf and python3-pytest are not installed")
	}
	run(t, testbed(t), "python", "/usr/bin/python3", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests")
}
