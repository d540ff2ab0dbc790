package scaletozero

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The activator's manifests and the examples of docs/scale-to-zero.md are valid for the API
// server (server-side dry run), and the page shows the example files as they are.
func TestManifestsAndExampleApply(t *testing.T) {
	e := setup(t)
	e.c.Kubectl(t, "apply", "--dry-run=server", "-k", "manifests/activator")
	ns := &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kybernate-demo"}}
	if _, err := e.c.Client.CoreV1().Namespaces().Create(t.Context(), ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	e.c.Kubectl(t, "apply", "--dry-run=server", "-f", "docs/examples/scale-to-zero.yaml")
	e.c.Kubectl(t, "apply", "--dry-run=server", "-f", "docs/examples/scale-to-zero-disk.yaml")

	example, err := os.ReadFile(filepath.Join(e.c.Root, "docs", "examples", "scale-to-zero.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	page, err := os.ReadFile(filepath.Join(e.c.Root, "docs", "scale-to-zero.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(page), "```yaml\n")
	block, _, _ = strings.Cut(block, "```")
	if !ok || !strings.HasSuffix(string(example), block) {
		t.Errorf("the YAML of docs/scale-to-zero.md is not docs/examples/scale-to-zero.yaml (after its comments)")
	}
	// The YAML of "Sleeping on disk" is taken from docs/examples/scale-to-zero-disk.yaml.
	disk, err := os.ReadFile(filepath.Join(e.c.Root, "docs", "examples", "scale-to-zero-disk.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, _ := strings.Cut(string(page), "## Sleeping on disk")
	section, _, _ = strings.Cut(section, "\n## ")
	blocks := 0
	for rest := section; ; blocks++ {
		var ok bool
		if _, rest, ok = strings.Cut(rest, "```yaml\n"); !ok {
			break
		}
		block, after, _ := strings.Cut(rest, "```")
		if !strings.Contains(string(disk), block) {
			t.Errorf("a YAML block of \"Sleeping on disk\" is not in docs/examples/scale-to-zero-disk.yaml:\n%s", block)
		}
		rest = after
	}
	if blocks == 0 {
		t.Error("\"Sleeping on disk\" of docs/scale-to-zero.md shows no YAML")
	}
}
