package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/containerd/namespaces"

	"github.com/kybernate/kybernate/nodeagent/image"
)

// startDaemon starts a second private containerd (own root, state, socket and config, our shim
// and CRIU on its PATH) by hack/containerd.sh, stopped when the test ends. It returns its
// socket.
func startDaemon(t *testing.T, name string) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	// Next to the first daemon's folder: short enough for unix socket paths.
	dir := filepath.Join(filepath.Dir(shimDir), name)
	script := filepath.Join(root, "hack", "containerd.sh")
	env := append(os.Environ(), "KYBERNATE_CONTAINERD_DIR="+dir, "KYBERNATE_SHIM_DIR="+shimDir)
	up := exec.Command(script, "up")
	up.Env, up.Stderr = env, os.Stderr
	out, err := up.Output()
	if err != nil {
		t.Fatalf("hack/containerd.sh up (%s): %v", name, err)
	}
	t.Cleanup(func() {
		down := exec.Command(script, "down")
		down.Env, down.Stderr = env, os.Stderr
		if err := down.Run(); err != nil {
			t.Errorf("hack/containerd.sh down (%s): %v", name, err)
		}
	})
	return strings.TrimSpace(string(out))
}

// Migration between nodes, at the runtime level: two private containerd daemons act as two
// nodes and share a folder of images. A counter checkpointed under daemon A through the
// agent's Checkpoint RPC (the container stops there) is restored under daemon B by our shim
// from kybernate.io/restore-from and goes on at N+1.
func TestMigrateBetweenDaemons(t *testing.T) {
	a := newCheckpointEnv(t)
	sockB := startDaemon(t, "daemon-b")
	if sockB == socket {
		t.Fatalf("daemon B listens on daemon A's socket %s", sockB)
	}
	b := newEnvOn(t, sockB)
	shared := testImages(t)

	orig := a.mustRun("counter", ctrOpts{labels: podLabels("train", "counter"), env: []string{"COUNTER_INTERVAL=0.05"}})
	orig.counting(t, 5)
	dir := filepath.Join(shared, "train-1")
	if _, err := a.checkpoint("train", dir, false); err != nil {
		t.Fatalf("checkpoint under daemon A: %v", err)
	}
	orig.waitExit(t)
	last := orig.count(t)
	m, err := image.Verify(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("checkpointed under daemon A at %d: %d files", last, len(m.Files))

	restored := b.mustRun("counter-migrated", ctrOpts{labels: podLabels("train-m1", "counter"),
		annotations: restoreFrom(dir)})
	restored.counting(t, last+3)
	first, err := strconv.Atoi(restored.stdout.lines()[0])
	if err != nil {
		t.Fatal(err)
	}
	if first != last+1 {
		t.Errorf("counter restored under daemon B started at %d, want %d (it stopped at %d under daemon A)", first, last+1, last)
	}
	// Daemon A knows nothing of the restored container: it runs under B only.
	if _, err := a.client.LoadContainer(namespaces.WithNamespace(a.ctx, b.ns), "counter-migrated"); err == nil {
		t.Error("daemon A has the container restored under daemon B")
	}
	if _, err := b.client.LoadContainer(b.ctx, "counter-migrated"); err != nil {
		t.Errorf("daemon B does not have the restored container: %v", err)
	}
}
