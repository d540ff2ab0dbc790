package sim

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	testingclock "k8s.io/utils/clock/testing"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/nodeagent/controller"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/image"
)

// simImages is a machine with its engine and images, at instant rates.
func simImages(t *testing.T, node, model string, clk clock.Clock) (*Machine, *Images) {
	t.Helper()
	m, err := NewMachine(node, model, 1, clk)
	if err != nil {
		t.Fatal(err)
	}
	m.SetHostMemory(1 << 40)
	e := engine.New(m.Driver(), m, m, m, m, engine.Config{LockTimeout: time.Second, StepTimeout: time.Minute, RestoreRetries: 1}, clk)
	return m, &Images{Machine: m, Engine: e, Clock: clk}
}

// suspendedPod runs a pod on m's GPU for progress, then suspends it.
func suspendedPod(t *testing.T, m *Machine, im *Images, clk *testingclock.FakeClock, progress time.Duration, annotations ...string) *v1.Pod {
	t.Helper()
	pod := gpuPod("train", m.GPUs(), "10Gi", annotations...)
	pod.Spec.NodeName = m.Node()
	pod.Spec.Containers = []v1.Container{{Name: "main", Image: "img"}}
	if _, errs := m.SyncPods([]*v1.Pod{pod}); len(errs) > 0 {
		t.Fatal(errs)
	}
	clk.Step(progress)
	m.Tick()
	if _, err := im.Engine.Suspend(t.Context(), ref("train"), 0); err != nil {
		t.Fatal(err)
	}
	return pod
}

// replacementOn is the replacement of pod on machine b, restoring from dir.
func replacementOn(b *Machine, pod *v1.Pod, dir string) *v1.Pod {
	r := pod.DeepCopy()
	r.Name, r.UID, r.Spec.NodeName = "train-m1", types.UID("uid-train-m1"), b.Node()
	r.Annotations[kv1.AnnotationGPUs] = b.GPUs()[0].String()
	r.Annotations[kv1.AnnotationRestoreFrom] = dir
	r.Annotations[kv1.AnnotationState] = string(kv1.PodRestoring)
	return r
}

func TestImagesCheckpointRestore(t *testing.T) {
	clk := testingclock.NewFakeClock(epoch)
	a, imA := simImages(t, "node-a", "NVIDIA-H100-80GB-HBM3", clk)
	b, imB := simImages(t, "node-b", "NVIDIA-H100-80GB-HBM3", clk)
	pod := suspendedPod(t, a, imA, clk, 7*time.Second)
	dir := filepath.Join(t.TempDir(), "train-1")

	res, err := imA.Checkpoint(t.Context(), pod, dir)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Image.Simulated || !strings.HasPrefix(res.Image.Digest, "sha256:") || res.Image.VRAMBytes != 10*gib ||
		res.Image.GPUModel != "NVIDIA H100 80GB HBM3" || res.Image.DriverVersion != DriverVersion {
		t.Errorf("image %+v", res.Image)
	}
	if _, err := image.Verify(dir); err != nil {
		t.Fatal(err)
	}
	// The original stays suspended on its node.
	if procs := a.ProcessesOf(pod.UID); len(procs) != 1 || procs[0].State != cuda.ProcessStateCheckpointed {
		t.Errorf("original's processes after the checkpoint: %+v, want one, checkpointed", procs)
	}

	r := replacementOn(b, pod, dir)
	// Until it is restored the replacement gets no processes of its own.
	if _, errs := b.SyncPods([]*v1.Pod{r}); len(errs) > 0 || len(b.ProcessesOf(r.UID)) != 0 {
		t.Fatalf("replacement has processes before its restore (errs %v)", errs)
	}
	if _, err := imB.Restore(t.Context(), r, dir, []string{b.GPUs()[0].String()}); err != nil {
		t.Fatal(err)
	}
	if _, errs := b.SyncPods([]*v1.Pod{r}); len(errs) > 0 || len(b.ProcessesOf(r.UID)) != 1 {
		t.Fatalf("the restored processes did not survive a sync (errs %v)", errs)
	}
	clk.Step(3 * time.Second)
	b.Tick()
	if got := b.Progress()[ref("train-m1")]; got != 10*time.Second {
		t.Errorf("replacement's progress %s, want 10s: 7s from the image and 3s on node-b", got)
	}
}

func TestImagesFaults(t *testing.T) {
	tests := []struct {
		name       string
		fault      string
		otherModel bool
		// failAt is the step that fails: Checkpoint or Restore.
		failAt string
		cause  string
	}{
		{name: "dump", fault: FaultDump, failAt: "Checkpoint", cause: "DumpFailed"},
		{name: "corrupt image", fault: FaultCorruptImage, failAt: "Restore", cause: "ImageCorrupt"},
		{name: "restore", fault: FaultRestoreImage, failAt: "Restore", cause: "RestoreFailed"},
		{name: "other model", otherModel: true, failAt: "Restore", cause: "Incompatible"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := testingclock.NewFakeClock(epoch)
			a, imA := simImages(t, "node-a", "NVIDIA-H100-80GB-HBM3", clk)
			modelB := "NVIDIA-H100-80GB-HBM3"
			if tt.otherModel {
				modelB = "NVIDIA-H200-141GB-HBM3"
			}
			b, imB := simImages(t, "node-b", modelB, clk)
			var ann []string
			if tt.fault != "" {
				ann = []string{AnnotationFail, tt.fault}
			}
			pod := suspendedPod(t, a, imA, clk, time.Second, ann...)
			dir := filepath.Join(t.TempDir(), "train-1")
			_, err := imA.Checkpoint(t.Context(), pod, dir)
			if tt.failAt != "Checkpoint" {
				if err != nil {
					t.Fatal(err)
				}
				_, err = imB.Restore(t.Context(), replacementOn(b, pod, dir), dir, []string{b.GPUs()[0].String()})
			}
			var ie *controller.ImageError
			if !errors.As(err, &ie) || ie.Cause != tt.cause {
				t.Fatalf("%s: error %v, want an ImageError with cause %s", tt.failAt, err, tt.cause)
			}
			if tt.failAt == "Checkpoint" {
				if _, err := image.Read(dir); !errors.Is(err, image.ErrMissing) || !ie.RolledBack {
					t.Errorf("failed checkpoint left %v (rolled back: %v), want no image", err, ie.RolledBack)
				}
			}
			if procs := a.ProcessesOf(pod.UID); len(procs) != 1 || procs[0].State != cuda.ProcessStateCheckpointed {
				t.Errorf("original's processes: %+v, want it still suspended", procs)
			}
		})
	}
}
