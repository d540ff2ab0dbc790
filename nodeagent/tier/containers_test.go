package tier

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/utils/clock"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/checkpoint"
	"github.com/kybernate/kybernate/nodeagent/image"
	"github.com/kybernate/kybernate/nodeagent/storage"
)

// fakeRuntime is containerd with one container of pod ml/train; it records calls.
type fakeRuntime struct {
	calls   []string
	failing string
	// gpus is the container's kybernate.io/gpus; empty: none.
	gpus string
}

func (f *fakeRuntime) call(name string) error {
	f.calls = append(f.calls, name)
	if f.failing == name {
		return errors.New(name + " exploded")
	}
	return nil
}

func (f *fakeRuntime) FindContainer(_ context.Context, pod image.Pod, name string) (checkpoint.Container, error) {
	if pod.Name != "train" {
		return checkpoint.Container{}, errors.New("no such pod")
	}
	ctr := checkpoint.Container{ID: "c1", Name: "trainer", Image: "img", Runtime: "io.containerd.kybernate.v1",
		Pod: image.Pod{Namespace: "ml", Name: "train", UID: "uid-train"}}
	if f.gpus != "" {
		ctr.Annotations = map[string]string{kv1.AnnotationGPUs: f.gpus}
	}
	return ctr, nil
}
func (f *fakeRuntime) Pause(context.Context, string) error         { return f.call("Pause") }
func (f *fakeRuntime) Resume(context.Context, string) error        { return f.call("Resume") }
func (f *fakeRuntime) Stop(context.Context, string) error          { return f.call("Stop") }
func (f *fakeRuntime) Pids(context.Context, string) ([]int, error) { return []int{1}, nil }
func (f *fakeRuntime) Dump(_ context.Context, _, dir, work string) error {
	if err := f.call("Dump"); err != nil {
		return err
	}
	_ = os.WriteFile(filepath.Join(work, "dump.log"), []byte("(00.000001) Version: 4.1.1 (gitid 0)\n"), 0o600)
	return os.WriteFile(filepath.Join(dir, "pages-1.img"), []byte(strings.Repeat("memory of the counter ", 1000)), 0o600)
}

type staticKeys map[string]storage.Key

func (k staticKeys) Key(_ context.Context, ns string) (storage.Key, error) {
	key, ok := k[ns]
	if !ok {
		return storage.Key{}, errors.New("image key of namespace " + ns + ": Secret kybernate-image-key: not found")
	}
	return key, nil
}

type containersFixture struct {
	c       *Containers
	rt      *fakeRuntime
	objects *flakyTier
	root    string
}

func newContainers(t *testing.T) *containersFixture {
	t.Helper()
	dir := t.TempDir()
	disk, err := storage.NewDisk(DiskTierRoot(filepath.Join(dir, "tiers")))
	if err != nil {
		t.Fatal(err)
	}
	objDisk, err := storage.NewDisk(filepath.Join(dir, "object-store"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := storage.ParseKey([]byte(strings.Repeat("k", 32)))
	if err != nil {
		t.Fatal(err)
	}
	rt := &fakeRuntime{}
	f := &containersFixture{rt: rt, objects: &flakyTier{Tier: objDisk}, root: filepath.Join(dir, "images")}
	f.c = &Containers{Checkpointer: checkpoint.New(checkpoint.Config{Node: "n1"}, rt, nil, nil, clock.RealClock{}),
		Disk: disk, Objects: f.objects, Keys: staticKeys{"ml": key}, DiskDir: filepath.Join(dir, "tiers"), ImageRoot: f.root, Timeout: time.Minute}
	return f
}

var trainer = PodRef{Namespace: "ml", Name: "train", UID: "uid-train", Container: "trainer"}

// A container spilled to disk (stopped only after its image is stored), moved to object
// storage, fetched back for the shim (decrypted, verified, the container's own) and released:
// the stored images are deleted after a restore, kept after a failed one.
func TestContainersSpillFetchRelease(t *testing.T) {
	f := newContainers(t)
	ctx := t.Context()
	s, err := f.c.Spill(ctx, PodRef{Namespace: "ml", Name: "train"}, kv1.TierDisk, 0)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"Pause", "Dump", "Stop"}, f.rt.calls); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
	id := ImageOf("ml", "train", "uid-train")
	if s.Tier != kv1.TierDisk || s.Manifest.Image != id || s.Pod.UID != "uid-train" {
		t.Errorf("spilled %+v", s)
	}
	if entries, _ := os.ReadDir(filepath.Join(f.c.DiskDir, dirStaging, "ml")); len(entries) != 0 {
		t.Errorf("plaintext left in staging: %v", entries)
	}
	// A second spill of the same pod finds the image there: the container runs on.
	f.rt.calls = nil
	if _, err := f.c.Spill(ctx, PodRef{Namespace: "ml", Name: "train"}, kv1.TierDisk, 0); err == nil || !strings.Contains(err.Error(), "holds an image of the pod already") {
		t.Errorf("second spill: %v", err)
	}
	if diff := cmp.Diff([]string{"Pause", "Dump", "Resume"}, f.rt.calls); diff != "" {
		t.Errorf("calls of the refused spill (-want +got):\n%s", diff)
	}

	// Object storage down: the image stays on disk.
	f.objects.down = true
	if _, err := f.c.Spill(ctx, trainer, kv1.TierObjectStore, 0); ContainerCauseOf(err) != ContainerFetchFailed {
		t.Errorf("upload with the store down: %v, want FetchFailed", err)
	}
	if ok, _ := storage.Exists(ctx, f.c.Disk, id); !ok {
		t.Fatal("image gone from disk after a failed upload")
	}
	f.objects.down = false
	if s, err = f.c.Spill(ctx, trainer, kv1.TierObjectStore, 0); err != nil || s.Tier != kv1.TierObjectStore {
		t.Fatalf("upload: %+v, %v", s, err)
	}
	if ok, _ := storage.Exists(ctx, f.c.Disk, id); ok {
		t.Error("disk copy kept after the upload")
	}

	got, err := f.c.Fetch(ctx, trainer)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := f.c.SpilledDir(trainer)
	if got.Dir != want || got.Tier != kv1.TierObjectStore {
		t.Errorf("fetched %+v, want dir %s from ObjectStore", got, want)
	}
	m, err := image.Verify(got.Dir)
	if err != nil || m.Container.Name != "trainer" || m.Pod.UID != "uid-train" {
		t.Errorf("fetched image: %+v, %v", m, err)
	}
	if _, err := image.ResolveRestore(f.root, "ml", got.Dir); err != nil {
		t.Errorf("the shim would refuse the fetched image: %v", err)
	}
	// Another container of the pod has no image (a fetch has the image on disk now).
	other := trainer
	other.Container = "sidecar"
	if got, err := f.c.Fetch(ctx, other); err != nil || got.Dir != "" {
		t.Errorf("fetch for another container: %+v, %v", got, err)
	}
	// A restore that failed keeps the stored image; the next Fetch brings it back again.
	if err := f.c.Release(ctx, trainer, got.Dir, false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(got.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("decrypted folder kept: %v", err)
	}
	if got, err = f.c.Fetch(ctx, trainer); err != nil || got.Dir == "" {
		t.Fatalf("second fetch: %+v, %v", got, err)
	}
	if err := f.c.Release(ctx, trainer, "/etc", true); ContainerCauseOf(err) != ContainerInvalid {
		t.Errorf("release of a foreign folder: %v, want Invalid", err)
	}
	if err := f.c.Release(ctx, trainer, got.Dir, true); err != nil {
		t.Fatal(err)
	}
	for _, tier := range []storage.Tier{f.c.Disk, f.c.Objects} {
		if ok, err := storage.Exists(ctx, tier, id); ok || err != nil {
			t.Errorf("%s holds the image after the restore: %v", tier, err)
		}
	}
	if got, err := f.c.Fetch(ctx, trainer); err != nil || got.Dir != "" {
		t.Errorf("fetch after the restore: %+v, %v; want none", got, err)
	}
}

// A spill that cannot keep its image leaves the container running and nothing stored; a
// tampered object is refused naming the file and nothing is deleted.
func TestContainersFailures(t *testing.T) {
	f := newContainers(t)
	ctx := t.Context()
	id := ImageOf("ml", "train", "uid-train")

	// No key: the container is not touched.
	f.c.Keys = staticKeys{}
	if _, err := f.c.Spill(ctx, trainer, kv1.TierDisk, 0); ContainerCauseOf(err) != ContainerNoKey || len(f.rt.calls) != 0 {
		t.Errorf("spill without a key: %v, calls %v", err, f.rt.calls)
	}
	newF := newContainers(t)
	f.c.Keys = newF.c.Keys

	// The container cannot be stopped: rolled back, the stored image deleted.
	f.rt.failing = "Stop"
	if _, err := f.c.Spill(ctx, trainer, kv1.TierDisk, 0); ContainerCauseOf(err) != ContainerCheckpoint {
		t.Errorf("spill whose stop fails: %v", err)
	}
	if diff := cmp.Diff([]string{"Pause", "Dump", "Stop", "Resume"}, f.rt.calls); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
	if ok, _ := storage.Exists(ctx, f.c.Disk, id); ok {
		t.Error("image kept although the container runs on")
	}

	// A tampered file in object storage.
	f.rt.failing, f.rt.calls = "", nil
	if _, err := f.c.Spill(ctx, PodRef{Namespace: "ml", Name: "train"}, kv1.TierObjectStore, 0); err != nil {
		t.Fatal(err)
	}
	keys, err := f.objects.List(ctx, "ml/")
	if err != nil {
		t.Fatal(err)
	}
	var victim string
	for _, k := range keys {
		if strings.Contains(k, "pages-1.img") {
			victim = k
		}
	}
	path := filepath.Join(filepath.Dir(f.c.DiskDir), "object-store", victim)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 1
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = f.c.Fetch(ctx, trainer)
	if ContainerCauseOf(err) != ContainerImageCorrupt || !strings.Contains(err.Error(), "pages-1.img") {
		t.Fatalf("fetch of a tampered image: %v, want ImageCorrupt naming pages-1.img", err)
	}
	if ok, _ := storage.Exists(ctx, f.c.Objects, id); !ok {
		t.Error("tampered image deleted from object storage")
	}
	if dir, _ := f.c.SpilledDir(trainer); dirExists(dir) {
		t.Error("a folder of the refused image appeared")
	}
}

func dirExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// The folder Fetch decrypts into and Release deletes is built from a gRPC request: whatever
// the request says, it is a folder of its own directly in its namespace's folder under the
// checkpoint folder, or an error.
func FuzzSpilledDir(f *testing.F) {
	f.Add("ml", "train", "uid-train", "trainer")
	f.Add("ml", "x/../../../etc", "u", "c")
	f.Add("ml", "..", "..", "..")
	f.Add("../ml", "train", "u", "c/../..")
	root := filepath.Join(f.TempDir(), "images")
	c := &Containers{ImageRoot: root}
	f.Fuzz(func(t *testing.T, ns, name, uid, container string) {
		dir, err := c.SpilledDir(PodRef{Namespace: ns, Name: name, UID: uid, Container: container})
		if err != nil {
			return
		}
		if filepath.Dir(dir) != filepath.Join(root, ns) || !strings.HasPrefix(filepath.Base(dir), "spilled-") || filepath.Clean(dir) != dir {
			t.Errorf("SpilledDir(%q, %q, %q, %q) = %s: not a folder of its own in %s", ns, name, uid, container, dir, filepath.Join(root, ns))
		}
	})
}

// The object store is asked only for images this node moved there: with it down, containers of
// pods that were never spilled are created as usual, a spilled one is refused and kept; an
// image gone from the object store is refused naming the mark that lets it start afresh.
func TestContainersFetchAsksObjectStoreOnlyForItsImages(t *testing.T) {
	f := newContainers(t)
	ctx := t.Context()
	f.objects.down = true
	other := PodRef{Namespace: "ml", Name: "other", UID: "uid-other", Container: "main"}
	if got, err := f.c.Fetch(ctx, other); err != nil || got.Dir != "" {
		t.Errorf("fetch of a pod never spilled with the object store down: %+v, %v; want none", got, err)
	}
	f.objects.down = false
	if _, err := f.c.Spill(ctx, PodRef{Namespace: "ml", Name: "train"}, kv1.TierObjectStore, 0); err != nil {
		t.Fatal(err)
	}
	f.objects.down = true
	if _, err := f.c.Fetch(ctx, trainer); ContainerCauseOf(err) != ContainerFetchFailed {
		t.Errorf("fetch of a spilled pod with the object store down: %v, want FetchFailed", err)
	}
	f.objects.down = false
	id := ImageOf("ml", "train", "uid-train")
	if err := storage.Delete(ctx, f.objects, id); err != nil {
		t.Fatal(err)
	}
	_, err := f.c.Fetch(ctx, trainer)
	if err == nil || !strings.Contains(err.Error(), "is not there") || !strings.Contains(err.Error(), filepath.Join(f.c.DiskDir, "uploaded", "ml", id.Name)) {
		t.Fatalf("fetch of an image gone from the object store: %v, want a refusal naming the mark", err)
	}
	if err := os.Remove(filepath.Join(f.c.DiskDir, "uploaded", "ml", id.Name)); err != nil {
		t.Fatal(err)
	}
	if got, err := f.c.Fetch(ctx, trainer); err != nil || got.Dir != "" {
		t.Errorf("fetch after the mark was deleted: %+v, %v; want none (a fresh start)", got, err)
	}
}
