package objectstore

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/kybernate/kybernate/test/ci"
)

// Main is a test package's TestMain body with one server: it builds weed, starts a server in a
// temporary folder, calls run with it and stops it. When weed cannot be built, run gets a nil
// server and the reason its tests skip, except in CI, where that fails the package. The folder
// is removed after a pass and kept for inspection after a failure. Main returns the exit code.
func Main(run func(s *Server, skipReason string) int) int {
	root, err := RepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()
	if err := Build(ctx, root); err != nil {
		if ci.Enabled() {
			fmt.Fprintf(os.Stderr, "%v\nCI is set: failing instead of skipping\n", err)
			return 1
		}
		return run(nil, fmt.Sprintf("these tests need weed from hack/build-seaweedfs.sh, which failed: %v; in CI this is a failure", err))
	}
	dir, err := os.MkdirTemp("", "kybernate-seaweedfs-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	server, err := Start(ctx, root, dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := run(server, "")
	// A test may stop the server on purpose; stopping again is harmless.
	if err := server.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	if code == 0 {
		os.RemoveAll(dir)
	} else {
		fmt.Fprintf(os.Stderr, "seaweedfs folder kept for inspection: %s (log %s/weed.log)\n", dir, dir)
	}
	return code
}
