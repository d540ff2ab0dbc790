// Package helmbin gives tests the helm binary that hack/build-helm.sh builds from the Go
// module proxy (pinned; cached in the cache folder's bin next to the control plane).
package helmbin

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Binary builds helm unless it is built already and returns its path. Outside CI a failed
// build skips the test, with the reason; in CI it fails it.
func Binary(t testing.TB, root string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(root, "hack", "build-helm.sh"))
	cmd.Dir = root
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := fmt.Sprintf("hack/build-helm.sh: %v\n%s", err, stderr.String())
		if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
			t.Fatal(msg)
		}
		t.Skip(msg + "\n(in CI this is a failure)")
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	return lines[len(lines)-1]
}
