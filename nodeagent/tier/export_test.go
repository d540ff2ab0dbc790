package tier

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/controller"
	"github.com/kybernate/kybernate/nodeagent/image"
	"github.com/kybernate/kybernate/nodeagent/sim"
	"github.com/kybernate/kybernate/nodeagent/storage"
)

// A spilled pod's image is written from the object store into a migration's image folder,
// verified and described as the spill's checkpoint described it; the pod stays in its tier with
// its stored image. A tampered object is refused naming the file and no folder appears.
func TestExportFromObjectStore(t *testing.T) {
	f := newFixture(t, "5Gi")
	f.spillAndUpload()
	dir, res, m := export(t, f.mgr, f.pod)
	if m.Pod.UID != "uid-train" || m.VRAMBytes != 10*gib || len(m.GPUs) != 1 {
		t.Errorf("exported image metadata %+v", m)
	}
	if !res.Image.Simulated || res.Image.GPUModel == "" || res.Image.VRAMBytes != 10*gib || !strings.HasPrefix(res.Image.Digest, "sha256:") {
		t.Errorf("exported image %+v, want it simulated, with its GPU model and 10Gi", res.Image)
	}
	if _, err := os.Stat(filepath.Join(dir, sim.RecordFile)); err != nil {
		t.Errorf("the simulated record is not in the image: %v", err)
	}
	if got := f.tierOf(); got != kv1.TierObjectStore {
		t.Errorf("pod in %s after the export, want ObjectStore", got)
	}
	id := storage.ImageID{Namespace: "ml", Name: "train-uid-train"}
	if ok, err := storage.Exists(t.Context(), f.objects, id); !ok || err != nil {
		t.Errorf("the stored image is gone after the export: %v", err)
	}

	// Tampered: refused naming the file, nothing written, nothing deleted.
	keys, err := f.objects.List(t.Context(), "ml/train-uid-train/files/")
	if err != nil || len(keys) == 0 {
		t.Fatalf("objects: %v, %v", keys, err)
	}
	path := filepath.Join(f.dir, "object-store", keys[0])
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 1
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	dir2 := dir + "-2"
	_, err = f.mgr.Export(t.Context(), f.pod, dir2)
	var ie *controller.ImageError
	if err == nil || !errors.As(err, &ie) || ie.Cause != string(ContainerImageCorrupt) || !strings.Contains(err.Error(), filepath.Base(keys[0])) {
		t.Fatalf("export of a tampered image: %v, want ImageCorrupt naming %s", err, filepath.Base(keys[0]))
	}
	if _, err := os.Stat(dir2); !os.IsNotExist(err) {
		t.Errorf("a folder of the refused image appeared: %v", err)
	}
	if ok, _ := storage.Exists(t.Context(), f.objects, id); !ok {
		t.Error("the tampered image was deleted")
	}
}

// export has mgr export pod into a migration's image folder (in its namespace's folder, not
// there before) and verifies what it wrote.
func export(t *testing.T, mgr *Manager, pod *v1.Pod) (string, controller.ImageResult, image.Metadata) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ml", "train-migration")
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		t.Fatal(err)
	}
	res, err := mgr.Export(t.Context(), pod, dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := image.Verify(dir)
	if err != nil {
		t.Fatal(err)
	}
	return dir, res, m
}

// A real node's spilled container is exported as its CRIU image, verified and described, for
// the replacement's shim to restore from; the pod stays spilled with its stored image, and the
// kubelet's creates of its container stay refused.
func TestExportSpilledContainer(t *testing.T) {
	f := newRealFixture(t)
	f.spill()
	_, res, m := export(t, f.mgr, f.pod)
	if m.Pod.UID != "uid-train" || m.Container.Name != "trainer" || len(m.GPUs) != 0 {
		t.Errorf("exported image metadata %+v, want the pod's container without GPUs", m)
	}
	if res.Image.Simulated || res.Image.GPUModel != "" || res.Image.Files != int32(len(m.Files)) || !strings.HasPrefix(res.Image.Digest, "sha256:") {
		t.Errorf("exported image %+v", res.Image)
	}
	if tier, held := f.mgr.Holds(f.pod.UID); !held || tier != kv1.TierDisk {
		t.Errorf("after the export the pod is held in %q (%v), want Disk", tier, held)
	}
	if ok, err := storageExists(t, f.c); !ok || err != nil {
		t.Errorf("the stored image is gone after the export (%v)", err)
	}
	res2 := f.fetch()
	f.waitForTimers()
	f.clk.Step(createHold)
	if r := <-res2; ContainerCauseOf(r.err) != ContainerNotYet {
		t.Errorf("create after the export: %+v, %v; want it refused (%s)", r.out, r.err, ContainerNotYet)
	}
}

// A spilled container with GPU memory is exported with the model of the GPU its image names;
// when the node does not know that GPU's model the export is refused and no folder is left.
func TestExportSpilledContainerWithGPUs(t *testing.T) {
	f := newRealGPUFixture(t)
	f.spill()
	dir, res, m := export(t, f.mgr, f.pod)
	if len(m.GPUs) != 1 || m.GPUs[0] != f.gpus[0].String() {
		t.Errorf("exported image names GPUs %v, want %s", m.GPUs, f.gpus[0])
	}
	if res.Image.GPUModel != "NVIDIA H200 (simulated)" {
		t.Errorf("exported image %+v, want the model of %s", res.Image, f.gpus[0])
	}

	clear(f.models)
	dir2 := dir + "-2"
	_, err := f.mgr.Export(t.Context(), f.pod, dir2)
	var ie *controller.ImageError
	if !errors.As(err, &ie) || ie.Cause != "ImageUnverified" || !strings.Contains(err.Error(), f.gpus[0].String()) {
		t.Fatalf("export with the GPU's model unknown: %v, want ImageUnverified naming the GPU", err)
	}
	if _, err := os.Stat(dir2); !os.IsNotExist(err) {
		t.Errorf("the refused export left its folder: %v", err)
	}
	if tier, held := f.mgr.Holds(f.pod.UID); !held || tier != kv1.TierDisk {
		t.Errorf("after the refused export the pod is held in %q (%v), want Disk", tier, held)
	}
}
