package tier

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
	dir := filepath.Join(t.TempDir(), "ml", "train-migration")
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		t.Fatal(err)
	}
	res, err := f.mgr.Export(t.Context(), f.pod, dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := image.Verify(dir)
	if err != nil {
		t.Fatal(err)
	}
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
