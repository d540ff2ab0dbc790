// Package storage tests the node agent's image store (nodeagent/storage) against a real
// S3-compatible server: SeaweedFS, built from the Go module proxy and started by the hack/
// scripts for the package's tests. Outside CI a weed that cannot be built skips the tests
// with the reason; with CI=true it fails them.
package storage

import (
	"os"
	"testing"

	"github.com/kybernate/kybernate/test/ci"
	"github.com/kybernate/kybernate/test/objectstore"
)

var (
	server     *objectstore.Server
	skipReason string
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helperMain())
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	return objectstore.Main(func(s *objectstore.Server, skip string) int {
		server, skipReason = s, skip
		return m.Run()
	})
}

// need returns the server, or skips the test outside CI when it could not be built.
func need(t *testing.T) *objectstore.Server {
	t.Helper()
	if server == nil {
		ci.Skip(t, skipReason)
	}
	return server
}
