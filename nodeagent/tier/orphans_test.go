package tier

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/storage"
)

const (
	uidGone     = "0b7c6c8e-1d2f-4a5b-9c3d-000000000001"
	uidExists   = "0b7c6c8e-1d2f-4a5b-9c3d-000000000002"
	uidMigrated = "0b7c6c8e-1d2f-4a5b-9c3d-000000000003"
	uidRestored = "0b7c6c8e-1d2f-4a5b-9c3d-000000000004"
	uidAPIOnly  = "0b7c6c8e-1d2f-4a5b-9c3d-000000000005"
)

func TestPodUIDOf(t *testing.T) {
	tests := []struct {
		name string
		want types.UID
		ok   bool
	}{
		{name: "train-" + uidGone, want: uidGone, ok: true},
		{name: "a-b-c-" + uidGone, want: uidGone, ok: true},
		{name: uidGone},           // no pod name before it
		{name: "train-uid-train"}, // not a UID
		{name: "train-" + uidGone[1:]},
	}
	for _, tt := range tests {
		got, ok := PodUIDOf(storage.ImageID{Namespace: "ml", Name: tt.name})
		if got != tt.want || ok != tt.ok {
			t.Errorf("PodUIDOf(%q) = %q, %v; want %q, %v", tt.name, got, ok, tt.want, tt.ok)
		}
	}
}

func pod(name, uid string, annotations map[string]string) *v1.Pod {
	return &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: name, UID: types.UID(uid), Annotations: annotations}}
}

func TestReferencesKeeps(t *testing.T) {
	deleting := pod("deleting", uidExists, nil)
	deleting.DeletionTimestamp = &metav1.Time{Time: epoch}
	refs := NewReferences([]*v1.Pod{
		deleting,
		pod("replacement", "0b7c6c8e-1d2f-4a5b-9c3d-0000000000aa", map[string]string{kv1.AnnotationMigratedFrom: "ml/old/" + uidMigrated}),
		pod("restorer", "0b7c6c8e-1d2f-4a5b-9c3d-0000000000bb", map[string]string{kv1.AnnotationRestoreFrom: "/var/lib/kybernate/tiers/images/ml/r-" + uidRestored}),
		pod("bad", "0b7c6c8e-1d2f-4a5b-9c3d-0000000000cc", map[string]string{kv1.AnnotationMigratedFrom: "not-a-reference"}),
	})
	tests := []struct {
		image, want string
	}{
		{image: "deleting-" + uidExists, want: "pod ml/deleting exists"},
		{image: "old-" + uidMigrated, want: "pod ml/replacement replaces its pod"},
		{image: "r-" + uidRestored, want: "pod ml/restorer restores from it"},
		{image: "train-uid-train", want: "does not end in a pod UID"},
		{image: "gone-" + uidGone, want: ""},
	}
	for _, tt := range tests {
		got := refs.Keeps(storage.ImageID{Namespace: "ml", Name: tt.image})
		if (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
			t.Errorf("Keeps(%s) = %q, want %q", tt.image, got, tt.want)
		}
	}
}

func TestOrphansGrace(t *testing.T) {
	gone := orphanKey{tier: kv1.TierDisk, id: storage.ImageID{Namespace: "ml", Name: "gone-" + uidGone}}
	goneS3 := orphanKey{tier: kv1.TierObjectStore, id: gone.id}
	kept := orphanKey{tier: kv1.TierDisk, id: storage.ImageID{Namespace: "ml", Name: "kept-" + uidExists}}
	refs := NewReferences([]*v1.Pod{pod("kept", uidExists, nil)})
	seen := map[orphanKey]time.Time{}
	grace := 10 * time.Minute
	if due := Orphans([]orphanKey{gone, kept}, refs, seen, epoch, grace); len(due) != 0 {
		t.Fatalf("due at first sight: %v", due)
	}
	if diff := cmp.Diff(map[orphanKey]time.Time{gone: epoch}, seen, cmp.AllowUnexported(orphanKey{})); diff != "" {
		t.Fatalf("first seen (-want +got):\n%s", diff)
	}
	// The same image found in object storage later has its own grace.
	due := Orphans([]orphanKey{gone, goneS3, kept}, refs, seen, epoch.Add(grace), grace)
	if diff := cmp.Diff([]orphanKey{gone}, due, cmp.AllowUnexported(orphanKey{})); diff != "" {
		t.Errorf("due after the grace (-want +got):\n%s", diff)
	}
	// A pod referencing it again (a replacement) takes it out; an image gone is forgotten.
	refs = NewReferences([]*v1.Pod{pod("new", uidMigrated, map[string]string{kv1.AnnotationMigratedFrom: "ml/gone/" + uidGone})})
	if due := Orphans([]orphanKey{gone}, refs, seen, epoch.Add(2*grace), grace); len(due) != 0 {
		t.Errorf("due while referenced: %v", due)
	}
	if len(seen) != 0 {
		t.Errorf("first seen keeps %v", seen)
	}
}

// putImage stores a small image under name in t with the fixture's namespace key.
func putImage(t *testing.T, f *fixture, tier storage.Tier, name string) storage.ImageID {
	t.Helper()
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "pages-1.img"), []byte("parked memory"), 0o600); err != nil {
		t.Fatal(err)
	}
	key, err := storage.ParseKey([]byte(strings.Repeat("k", 32)))
	if err != nil {
		t.Fatal(err)
	}
	id := storage.ImageID{Namespace: "ml", Name: name}
	if _, err := storage.Put(t.Context(), tier, id, key, src); err != nil {
		t.Fatal(err)
	}
	return id
}

// The sweep deletes, after the grace, the images in both tiers of a pod that is gone, and
// keeps those of a pod that exists (in the cache, or only in the API server), of one a
// replacement migrated from, and the spilled pod's own.
func TestSweep(t *testing.T) {
	f := newFixture(t, "5Gi")
	f.mgr.cfg.OrphanGrace = 10 * time.Minute
	f.mgr.Reconcile(t.Context()) // spills the fixture's pod (UID not of the API server's form: kept by name too)
	exists := pod("exists", uidExists, nil)
	replacement := pod("replacement", "0b7c6c8e-1d2f-4a5b-9c3d-0000000000aa", map[string]string{kv1.AnnotationMigratedFrom: "ml/old/" + uidMigrated})
	apiOnly := pod("api-only", uidAPIOnly, nil) // the API server has it, the cache does not (yet)
	for _, p := range []*v1.Pod{exists, replacement} {
		if err := f.podIdx.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []*v1.Pod{exists, replacement, apiOnly} {
		if _, err := f.kube.CoreV1().Pods("ml").Create(t.Context(), p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	done := metav1.NewTime(epoch)
	ck := &kv1.GPUCheckpoint{ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: "gone-suspend", CreationTimestamp: done},
		Spec:   kv1.GPUCheckpointSpec{PodName: "gone", PodUID: uidGone, Action: kv1.ActionSuspend},
		Status: kv1.GPUCheckpointStatus{Phase: kv1.PhaseSucceeded, NodeName: node}}
	if err := f.ckIdx.Add(ck); err != nil {
		t.Fatal(err)
	}
	gone := putImage(t, f, f.mgr.disk, "gone-"+uidGone)
	putImage(t, f, f.objects, gone.Name)
	keep := []storage.ImageID{
		putImage(t, f, f.mgr.disk, "exists-"+uidExists),
		putImage(t, f, f.objects, "old-"+uidMigrated),
		putImage(t, f, f.objects, "api-only-"+uidAPIOnly),
	}
	if err := f.mgr.Sweep(t.Context()); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(images(t, f.mgr.disk), gone) || !slices.Contains(images(t, f.objects), gone) {
		t.Fatal("an image was deleted before its grace")
	}
	f.clk.Step(10 * time.Minute)
	if err := f.mgr.Sweep(t.Context()); err != nil {
		t.Fatal(err)
	}
	disk, objects := images(t, f.mgr.disk), images(t, f.objects)
	if slices.Contains(disk, gone) || slices.Contains(objects, gone) {
		t.Errorf("the image of the pod that is gone is left: disk %v, object store %v", disk, objects)
	}
	for _, id := range keep {
		if !slices.Contains(disk, id) && !slices.Contains(objects, id) {
			t.Errorf("image %s was deleted", id)
		}
	}
	if !slices.Contains(disk, storage.ImageID{Namespace: "ml", Name: "train-uid-train"}) {
		t.Errorf("the spilled pod's image was deleted: %v", disk)
	}
	if got := f.tierOf(); got != kv1.TierDisk {
		t.Errorf("the spilled pod is in %s, want Disk", got)
	}
	if ev := f.event(EventOrphanImageDeleted); !strings.Contains(ev, uidGone) {
		t.Errorf("Event %q does not name the pod", ev)
	}
}

// An image whose pod is gone while the agent holds it (deleted during a spill) is dropped
// from the tier policy and deleted.
func TestSweepHeldImageOfGonePod(t *testing.T) {
	f := newFixture(t, "5Gi")
	f.mgr.Reconcile(t.Context())
	// The fixture's pod has a UID the sweep cannot read: take the held entry over under one.
	f.mgr.mu.Lock()
	e := f.mgr.held["uid-train"]
	delete(f.mgr.held, "uid-train")
	if e == nil {
		f.mgr.mu.Unlock()
		t.Fatal("the pod was not spilled")
	}
	e.pod.UID = uidGone
	f.mgr.held[uidGone] = e
	f.mgr.mu.Unlock()
	id := putImage(t, f, f.mgr.disk, "train-"+uidGone)
	if err := f.podIdx.Delete(f.pod); err != nil {
		t.Fatal(err)
	}
	if err := f.kube.CoreV1().Pods("ml").Delete(t.Context(), "train", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	f.mgr.cfg.OrphanGrace = time.Minute
	for range 2 {
		if err := f.mgr.Sweep(t.Context()); err != nil {
			t.Fatal(err)
		}
		f.clk.Step(time.Minute)
	}
	if slices.Contains(images(t, f.mgr.disk), id) {
		t.Error("the image is left")
	}
	if _, held := f.mgr.Holds(uidGone); held {
		t.Error("the tier policy still holds the pod")
	}
}

// FuzzKeeps feeds the sweep image names (from a bucket anyone with its credentials writes) and
// annotation values it does not control: it never panics, never lets an image of a pod that
// exists go, and sweeps only names that end in a pod UID.
func FuzzKeeps(f *testing.F) {
	f.Add("train-"+uidGone, uidGone, "ml/old/"+uidMigrated, "/var/lib/kybernate/tiers/images/ml/r")
	f.Add("a", "", "///", "")
	f.Add("x-"+uidExists, uidExists, "ml/x", uidExists)
	f.Fuzz(func(t *testing.T, name, uid, migratedFrom, restoreFrom string) {
		refs := NewReferences([]*v1.Pod{
			pod("p", uid, map[string]string{kv1.AnnotationMigratedFrom: migratedFrom, kv1.AnnotationRestoreFrom: restoreFrom}),
		})
		id := storage.ImageID{Namespace: "ml", Name: name}
		why := refs.Keeps(id)
		got, ok := PodUIDOf(id)
		if why == "" && (!ok || string(got) == uid) {
			t.Errorf("image %q swept although it names pod UID %q (ok %v) of an existing pod %q", name, got, ok, uid)
		}
		if ok && !strings.HasSuffix(name, "-"+string(got)) {
			t.Errorf("PodUIDOf(%q) = %q, not its suffix", name, got)
		}
	})
}
