package controller

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/image"
)

// recordingImages is an Images that records what it was asked and writes an empty folder for
// checkpoints.
type recordingImages struct {
	restored []string
}

func (r *recordingImages) Checkpoint(_ context.Context, _ *v1.Pod, dir string) (ImageResult, error) {
	return ImageResult{}, os.Mkdir(dir, image.DirMode)
}

func (r *recordingImages) Restore(_ context.Context, _ *v1.Pod, dir string, _ []string) (engine.Result, error) {
	r.restored = append(r.restored, dir)
	return engine.Result{}, nil
}

type oneStore struct{ im Images }

func (s oneStore) Images(n string) (Images, bool) { return s.im, n == node }

// imageTree is a checkpoint folder with an image of namespace ml, one of namespace other, one
// outside, and links from ml's folder to the last two.
func imageTree(t *testing.T) (root, outside string) {
	t.Helper()
	base := t.TempDir()
	root, outside = filepath.Join(base, "images"), filepath.Join(base, "elsewhere", "img")
	for _, d := range []string{filepath.Join(root, "ml", "train-1"), filepath.Join(root, "other", "train-1"), outside} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{"ml/to-other": "../other/train-1", "ml/to-outside": outside} {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	return root, outside
}

// A GPUCheckpoint Restore of a pod whose kybernate.io/restore-from names anything but an image
// of its own namespace under the checkpoint folder is refused before the image is touched: the
// object ends Failed (Invalid) and the pod gets a RestoreRefused Event naming the reason.
func TestRestoreRefusesForeignImages(t *testing.T) {
	root, outside := imageTree(t)
	tests := []struct {
		name, dir, wantReason string
	}{
		{name: "own image", dir: filepath.Join(root, "ml", "train-1")},
		{name: "absolute path elsewhere", dir: outside, wantReason: image.RefusedOutside},
		{name: "dot dot", dir: root + "/ml/../other/train-1", wantReason: image.RefusedInvalidPath},
		{name: "dot dot out of the folder", dir: root + "/ml/../../elsewhere/img", wantReason: image.RefusedInvalidPath},
		{name: "other namespace", dir: filepath.Join(root, "other", "train-1"), wantReason: image.RefusedOtherNamespace},
		{name: "symlink to another namespace", dir: filepath.Join(root, "ml", "to-other"), wantReason: image.RefusedSymlink},
		{name: "symlink out of the folder", dir: filepath.Join(root, "ml", "to-outside"), wantReason: image.RefusedSymlink},
		{name: "relative", dir: "ml/train-1", wantReason: image.RefusedInvalidPath},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := gpuPod("train", node, gpu0, kv1.AnnotationRestoreFrom, tt.dir, kv1.AnnotationState, string(kv1.PodRestoring))
			ck := checkpoint("r", "train", kv1.ActionRestore)
			ck.Spec.Image = tt.dir
			h := newHarness(t, 100*gib, []*v1.Pod{pod}, ck)
			imgs := &recordingImages{}
			h.c.op.SetImages(oneStore{imgs}, root)
			if err := h.c.Reconcile(t.Context(), "ml/r"); err != nil {
				t.Fatalf("Reconcile: %v", err)
			}
			got := h.get(t, "r")
			events := strings.Join(h.events(), "\n")
			if tt.wantReason == "" {
				if got.Status.Phase != kv1.PhaseSucceeded || len(imgs.restored) != 1 {
					t.Fatalf("phase %s (%s), restores %v; want Succeeded after one restore", got.Status.Phase, got.Status.Message, imgs.restored)
				}
				if strings.Contains(events, EventRestoreRefused) {
					t.Errorf("events %s", events)
				}
				return
			}
			if got.Status.Phase != kv1.PhaseFailed || !strings.Contains(got.Status.Message, tt.wantReason) {
				t.Errorf("phase %s, message %q; want Failed naming %s", got.Status.Phase, got.Status.Message, tt.wantReason)
			}
			if len(imgs.restored) != 0 {
				t.Errorf("restored from %v", imgs.restored)
			}
			if !strings.Contains(events, "Warning "+EventRestoreRefused) || !strings.Contains(events, tt.wantReason) {
				t.Errorf("events:\n%s\nwant a Warning %s naming %s", events, EventRestoreRefused, tt.wantReason)
			}
		})
	}
}

// The guard reports a pod with a refused kybernate.io/restore-from once, as soon as it is seen
// on a served node; a pod of another node, or with an acceptable path, gets nothing.
func TestRestoreFromGuard(t *testing.T) {
	root, outside := imageTree(t)
	h := newHarness(t, 100*gib, nil)
	h.c.op.SetImages(oneStore{&recordingImages{}}, root)
	g := NewRestoreFromGuard(h.c.op)
	bad := gpuPod("bad", node, gpu0, kv1.AnnotationRestoreFrom, outside)
	g.Check(bad)
	g.Check(bad.DeepCopy()) // an update: no second Event
	g.Check(gpuPod("elsewhere", "node-b", gpu0, kv1.AnnotationRestoreFrom, outside))
	g.Check(gpuPod("good", node, gpu0, kv1.AnnotationRestoreFrom, filepath.Join(root, "ml", "train-1")))
	g.Check(gpuPod("plain", node, gpu0))
	events := h.events()
	if len(events) != 1 || !strings.Contains(events[0], "Warning "+EventRestoreRefused) || !strings.Contains(events[0], image.RefusedOutside) {
		t.Fatalf("events %q; want one RestoreRefused for pod bad", events)
	}
	// A new path on the same pod is reported again.
	bad.Annotations[kv1.AnnotationRestoreFrom] = filepath.Join(root, "other", "train-1")
	g.Check(bad)
	if events := h.events(); len(events) != 1 || !strings.Contains(events[0], image.RefusedOtherNamespace) {
		t.Errorf("events after the path changed %q", events)
	}
}

// A checkpoint writes into the namespace's folder, created private (0700), also when an older
// agent left it open.
func TestCheckpointNamespaceFolderIsPrivate(t *testing.T) {
	root := filepath.Join(t.TempDir(), "images")
	if err := os.MkdirAll(filepath.Join(root, "ml"), 0o755); err != nil {
		t.Fatal(err)
	}
	pod := gpuPod("train", node, gpu0, kv1.AnnotationState, string(kv1.PodSuspended))
	ck := checkpoint("c", "train", kv1.ActionCheckpoint)
	h := newHarness(t, 100*gib, []*v1.Pod{pod}, ck)
	h.c.op.SetImages(oneStore{&recordingImages{}}, root)
	if err := h.c.Reconcile(t.Context(), "ml/c"); err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
	if got := h.get(t, "c"); got.Status.ImageLocation != filepath.Join(root, "ml", "train-ck-c") {
		t.Errorf("image location %q (%s: %s)", got.Status.ImageLocation, got.Status.Phase, got.Status.Message)
	}
	for _, p := range []string{filepath.Join(root, "ml"), filepath.Join(root, "ml", "train-ck-c")} {
		if st, err := os.Stat(p); err != nil || st.Mode().Perm() != image.DirMode {
			t.Errorf("%s: %v %v; want %v", p, st.Mode(), err, image.DirMode)
		}
	}
}
