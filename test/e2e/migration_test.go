package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/namespaces"

	agentv1 "github.com/kybernate/kybernate/apis/agent/v1"
	"github.com/kybernate/kybernate/nodeagent/image"
	"github.com/kybernate/kybernate/nodeagent/storage"
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
	restored.resumedAt(t, last)
	// Daemon A knows nothing of the restored container: it runs under B only.
	if _, err := a.client.LoadContainer(namespaces.WithNamespace(a.ctx, b.ns), "counter-migrated"); err == nil {
		t.Error("daemon A has the container restored under daemon B")
	}
	if _, err := b.client.LoadContainer(b.ctx, "counter-migrated"); err != nil {
		t.Errorf("daemon B does not have the restored container: %v", err)
	}
}

// A spilled container migrates between nodes, at the runtime level: a counter spilled to the
// disk tier under daemon A (the agent's Spill: CRIU image, encrypted, the container stopped) is
// written out of the tier into the folder both daemons share as the agent's migration export
// does for a real node's spilled pod (tier.Manager.Export reads it with storage.Restore: every
// file checked against the manifest and decrypted), and restored under daemon B by our shim
// from kybernate.io/restore-from. It goes on at N+1 with the token it drew before the spill,
// and the stored image is kept until the original is deleted.
func TestMigrateSpilledContainerBetweenDaemons(t *testing.T) {
	a := newTierEnv(t)
	sockB := startDaemon(t, "daemon-b")
	b := newEnvOn(t, sockB)
	ctx, cancel := context.WithTimeout(a.ctx, 5*time.Minute)
	defer cancel()
	id := storage.ImageID{Namespace: "ml", Name: "train-uid-train"}

	orig := a.mustRun("counter", ctrOpts{labels: podLabels("train", "counter"), annotations: kybernatePod("train", "counter"),
		env: []string{"COUNTER_INTERVAL=0.05", "COUNTER_TOKEN=1"}})
	orig.counting(t, 5)
	token := orig.token(t)
	if _, err := a.agent.Spill(ctx, &agentv1.SpillRequest{Pod: &agentv1.PodRef{Namespace: "ml", Name: "train", Container: "counter"}, Tier: "Disk"}); err != nil {
		t.Fatalf("spill to disk under daemon A: %v", err)
	}
	orig.waitExit(t)
	last := orig.count(t)

	dir := filepath.Join(testImages(t), "train-1")
	if _, err := storage.Restore(ctx, a.disk, id, a.key, dir); err != nil {
		t.Fatalf("writing the spilled image out of the disk tier: %v", err)
	}
	m, err := image.Verify(dir)
	if err != nil {
		t.Fatal(err)
	}
	if m.Pod.UID != "uid-train" || m.Container.Name != "counter" {
		t.Errorf("exported image of pod %+v, container %+v; want ml/train's counter", m.Pod, m.Container)
	}

	restored := b.mustRun("counter-migrated", ctrOpts{labels: podLabels("train-m1", "counter"), annotations: restoreFrom(dir),
		env: []string{"COUNTER_INTERVAL=0.05", "COUNTER_TOKEN=1"}})
	restored.resumedAt(t, last)
	if got := restored.token(t); got != token {
		t.Errorf("restored counter's token %s, want %s: the process started afresh instead of being restored", got, token)
	}
	if ok, err := storage.Exists(ctx, a.disk, id); !ok || err != nil {
		t.Errorf("the stored image is gone after the export (%v): the original must keep it until it is deleted", err)
	}
}
