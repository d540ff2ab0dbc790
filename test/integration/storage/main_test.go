// Package storage tests the node agent's image store (nodeagent/storage) against a real
// S3-compatible server: SeaweedFS, built from the Go module proxy and started by the hack/
// scripts for the package's tests. Outside CI a weed that cannot be built skips the tests
// with the reason; with CI=true it fails them.
package storage

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

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
	root, err := objectstore.RepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()
	if err := objectstore.Build(ctx, root); err != nil {
		if ci.Enabled() {
			fmt.Fprintf(os.Stderr, "%v\nCI is set: failing instead of skipping\n", err)
			return 1
		}
		skipReason = fmt.Sprintf("these tests need weed from hack/build-seaweedfs.sh, which failed: %v; in CI this is a failure", err)
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "kybernate-seaweedfs-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	server, err = objectstore.Start(ctx, root, dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	if err := server.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	if code == 0 {
		os.RemoveAll(dir)
	} else {
		fmt.Fprintf(os.Stderr, "seaweedfs folder kept for inspection: %s\n", dir)
	}
	return code
}

// need returns the server, or skips the test outside CI when it could not be built.
func need(t *testing.T) *objectstore.Server {
	t.Helper()
	if server == nil {
		ci.Skip(t, skipReason)
	}
	return server
}
