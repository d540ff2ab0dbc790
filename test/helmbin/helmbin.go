// Package helmbin gives tests the helm binary that hack/build-helm.sh builds from the Go
// module proxy (pinned; cached in the cache folder's bin next to the control plane).
package helmbin

import (
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kybernate/kybernate/test/ci"
)

// Binary builds helm unless it is built already and returns its path. A failed build skips the
// test with the reason outside CI and fails it in CI (ci.Skip).
func Binary(t testing.TB, root string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(root, "hack", "build-helm.sh"))
	cmd.Dir = root
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		ci.Skip(t, fmt.Sprintf("helm could not be built: hack/build-helm.sh: %v\n%s", err, stderr.String()))
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	return lines[len(lines)-1]
}
