package tier

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubefake "k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	testingclock "k8s.io/utils/clock/testing"

	kybfake "github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned/fake"
	listers "github.com/kybernate/kybernate/apis/kybernate/client/listers/kybernate/v1alpha1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/podmap"
	"github.com/kybernate/kybernate/nodeagent/sim"
	"github.com/kybernate/kybernate/nodeagent/storage"
)

const (
	gib  = int64(1) << 30
	node = "kwok-gpu-0"
)

// fixture is one simulated node (labelled simulated: a sim.Machine with the fake CUDA driver)
// with a suspended pod, and a Manager over a disk tier and a second folder standing in for
// object storage (the integration tests use a real SeaweedFS).
type fixture struct {
	t       *testing.T
	clk     *testingclock.FakeClock
	machine *sim.Machine
	engine  *engine.Engine
	pod     *v1.Pod
	kyb     *kybfake.Clientset
	events  *record.FakeRecorder
	objects *flakyTier
	mgr     *Manager
	dir     string
	ckIdx   cache.Indexer
	podIdx  cache.Indexer
	kube    *kubefake.Clientset
}

type singleNode struct{ n Node }

func (s singleNode) TierNode(name string) (Node, bool) { return s.n, name == node }
func (s singleNode) Names() []string                   { return []string{node} }

// flakyTier is a Tier that fails every call while down.
type flakyTier struct {
	storage.Tier
	down bool
}

var errDown = errors.New("connection refused")

func (f *flakyTier) Put(ctx context.Context, key string, r io.Reader, size int64, sum string) error {
	if f.down {
		return errDown
	}
	return f.Tier.Put(ctx, key, r, size, sum)
}

func (f *flakyTier) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if f.down {
		return nil, errDown
	}
	return f.Tier.Get(ctx, key)
}

func (f *flakyTier) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if f.down {
		return storage.ObjectInfo{}, errDown
	}
	return f.Tier.Stat(ctx, key)
}

// simEngine is a simulated machine of gpus H100s with 100Gi of host memory (SIMULATED CUDA
// driver) and the checkpoint engine over it, both on clk.
func simEngine(t *testing.T, gpus int, clk *testingclock.FakeClock) (*sim.Machine, *engine.Engine) {
	t.Helper()
	m, err := sim.NewMachine(node, "NVIDIA-H100-80GB-HBM3", gpus, clk)
	if err != nil {
		t.Fatal(err)
	}
	m.SetHostMemory(100 * gib)
	return m, engine.New(m.Driver(), m, m, m, m, engine.Config{LockTimeout: time.Second, StepTimeout: time.Minute, RestoreRetries: 1, RestoreMargin: 256 << 20}, clk)
}

func newFixture(t *testing.T, highWater string) *fixture {
	t.Helper()
	clk := testingclock.NewFakeClock(epoch)
	m, e := simEngine(t, 1, clk)
	imgs := &sim.Images{Machine: m, Engine: e, Clock: clk}

	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: "train", UID: "uid-train", Annotations: map[string]string{
			kv1.AnnotationGPUs: m.GPUs()[0].String(), kv1.AnnotationGPUMemory: "10Gi", kv1.AnnotationState: string(kv1.PodSuspended)}},
		Spec:   v1.PodSpec{NodeName: node, Containers: []v1.Container{{Name: "main", Image: "img"}}},
		Status: v1.PodStatus{Phase: v1.PodRunning, Conditions: []v1.PodCondition{{Type: kv1.ConditionGPUResident, Status: v1.ConditionFalse, LastTransitionTime: metav1.NewTime(epoch)}}},
	}
	running := pod.DeepCopy()
	running.Annotations[kv1.AnnotationState] = string(kv1.PodRunning)
	if _, errs := m.SyncPods([]*v1.Pod{running}); len(errs) > 0 {
		t.Fatal(errs)
	}
	clk.Step(7 * time.Second)
	m.Tick()
	if _, err := e.Suspend(t.Context(), podmap.PodRef{Namespace: "ml", Name: "train", UID: "uid-train"}, 0); err != nil {
		t.Fatal(err)
	}

	secret := &v1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: "kybernate-image-key"},
		Data: map[string][]byte{storage.SecretKeyField: []byte(strings.Repeat("k", 32))}}
	kube := kubefake.NewSimpleClientset(pod, secret)
	done := metav1.NewTime(epoch)
	suspend := &kv1.GPUCheckpoint{ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: "train-suspend"},
		Spec: kv1.GPUCheckpointSpec{PodName: "train", PodUID: "uid-train", Action: kv1.ActionSuspend},
		Status: kv1.GPUCheckpointStatus{Phase: kv1.PhaseSucceeded, NodeName: node, CompletionTime: &done,
			Footprint: []kv1.ProcessFootprint{{PID: 1000, GPU: m.GPUs()[0].String(), Bytes: 10 * gib}}}}
	kyb := kybfake.NewSimpleClientset(suspend)
	podIdx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	ckIdx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	if err := errors.Join(podIdx.Add(pod), ckIdx.Add(suspend)); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	disk, err := storage.NewDisk(DiskTierRoot(dir))
	if err != nil {
		t.Fatal(err)
	}
	objDisk, err := storage.NewDisk(filepath.Join(dir, "object-store"))
	if err != nil {
		t.Fatal(err)
	}
	objects := &flakyTier{Tier: objDisk}
	hw, err := ParseThreshold(highWater)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{HighWater: hw, DiskDir: dir, DiskIdle: 10 * time.Minute, Interval: time.Second, MoveTimeout: time.Minute,
		RetryBackoff: time.Minute, MaxBackoff: 10 * time.Minute, KeySecret: "kybernate-image-key"}
	events := record.NewFakeRecorder(100)
	n := Node{Engine: e, Images: imgs, End: m.End, Memory: m.HostMemory}
	mgr := New(cfg, singleNode{n}, disk, objects, SecretKeys{Client: kube, Name: cfg.KeySecret}, kube, kyb,
		corelisters.NewPodLister(podIdx), listers.NewGPUCheckpointLister(ckIdx), events, clk)
	return &fixture{t: t, clk: clk, machine: m, engine: e, pod: pod, kyb: kyb, events: events, objects: objects, mgr: mgr, dir: dir,
		ckIdx: ckIdx, podIdx: podIdx, kube: kube}
}

// event returns the first recorded Event with reason, failing when there is none.
func (f *fixture) event(reason string) string {
	f.t.Helper()
	return recordedEvent(f.t, f.events, reason)
}

// recordedEvent takes the recorder's Events up to the first with reason, failing when there is
// none.
func recordedEvent(t testing.TB, events *record.FakeRecorder, reason string) string {
	t.Helper()
	for {
		select {
		case ev := <-events.Events:
			if strings.Contains(ev, " "+reason+" ") {
				return ev
			}
		default:
			t.Fatalf("no %s Event", reason)
			return ""
		}
	}
}

func (f *fixture) storageStatus() *kv1.CheckpointStorage {
	f.t.Helper()
	ck, err := f.kyb.KybernateV1alpha1().GPUCheckpoints("ml").Get(f.t.Context(), "train-suspend", metav1.GetOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	return ck.Status.Storage
}

func (f *fixture) tierOf() kv1.StorageTier {
	tier, ok := f.mgr.Holds(f.pod.UID)
	if !ok {
		return kv1.TierHostMemory
	}
	return tier
}

func (f *fixture) spillAndUpload() {
	f.t.Helper()
	f.mgr.Reconcile(f.t.Context())
	if got := f.tierOf(); got != kv1.TierDisk {
		f.t.Fatalf("after a reconcile over the mark the pod is in %s, want Disk", got)
	}
	f.clk.Step(10 * time.Minute)
	f.mgr.Reconcile(f.t.Context())
	if got := f.tierOf(); got != kv1.TierObjectStore {
		f.t.Fatalf("after %v idle on disk the pod is in %s, want ObjectStore", 10*time.Minute, got)
	}
}

func TestSpillUploadRestore(t *testing.T) {
	f := newFixture(t, "5Gi")
	avail, _ := f.machine.MemAvailable()
	if avail != 90*gib {
		t.Fatalf("host memory available %d with the pod parked, want 90Gi", avail)
	}

	f.mgr.Reconcile(t.Context())
	if got := f.tierOf(); got != kv1.TierDisk {
		t.Fatalf("pod in %s, want Disk", got)
	}
	if avail, _ := f.machine.MemAvailable(); avail != 100*gib {
		t.Errorf("host memory available %d after the spill, want all 100Gi", avail)
	}
	if procs := f.machine.ProcessesOf(f.pod.UID); len(procs) != 0 {
		t.Errorf("the spilled pod still has processes %v", procs)
	}
	if f.engine.IsSuspended(f.pod.UID) {
		t.Error("the engine still holds the spilled pod parked")
	}
	if got := f.mgr.SuspendedPods(node); len(got) != 1 || got[0].Residency != kv1.OnDisk || got[0].Bytes != 10*gib || got[0].UID != "uid-train" {
		t.Errorf("SuspendedPods %+v, want the pod on disk with 10Gi", got)
	}
	if ev := f.event(EventSpilledToDisk); !strings.Contains(ev, "10Gi") || !strings.Contains(ev, "SIMULATED") {
		t.Errorf("Event %q does not name the bytes", ev)
	}
	st := f.storageStatus()
	if st == nil || st.Tier != kv1.TierDisk || st.SizeBytes <= 0 || st.StoredBytes <= st.SizeBytes || st.KeyID == "" ||
		!strings.HasPrefix(st.Location, DiskTierRoot(f.dir)) {
		t.Fatalf("status.storage %+v, want the disk tier with sizes and key id", st)
	}
	if _, err := os.Stat(filepath.Join(f.dir, dirStaging, "ml", "train-uid-train")); !os.IsNotExist(err) {
		t.Errorf("the plaintext staging image is left: %v", err)
	}

	// Not idle long enough: stays on disk.
	f.clk.Step(9 * time.Minute)
	f.mgr.Reconcile(t.Context())
	if got := f.tierOf(); got != kv1.TierDisk {
		t.Fatalf("pod in %s before --disk-tier-idle, want Disk", got)
	}
	f.clk.Step(time.Minute)
	f.mgr.Reconcile(t.Context())
	if got := f.tierOf(); got != kv1.TierObjectStore {
		t.Fatalf("pod in %s, want ObjectStore", got)
	}
	f.event(EventUploadedToObjectStore)
	if st := f.storageStatus(); st == nil || st.Tier != kv1.TierObjectStore || !strings.Contains(st.Location, "object-store") {
		t.Fatalf("status.storage %+v, want the object store", st)
	}
	id := storage.ImageID{Namespace: "ml", Name: "train-uid-train"}
	if _, err := storage.Stat(t.Context(), f.mgr.disk, id, storage.Key{}); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("the disk copy is still there after the upload: %v", err)
	}

	res, err := f.mgr.Restore(t.Context(), node, f.pod, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Bytes != 10*gib || res.Storage == nil || res.Storage.Tier != kv1.TierObjectStore {
		t.Errorf("result %+v, want 10Gi back from the object store", res)
	}
	procs := f.machine.ProcessesOf(f.pod.UID)
	if len(procs) != 1 || procs[0].State != cuda.ProcessStateRunning || procs[0].GPU != f.machine.GPUs()[0] || procs[0].Bytes != 10*gib {
		t.Fatalf("processes after the restore %+v, want one running with 10Gi on the GPU", procs)
	}
	// The simulated progress counter continues from where the suspend left it.
	if got := f.machine.Progress()[podmap.PodRef{Namespace: "ml", Name: "train", UID: "uid-train"}]; got != 7*time.Second {
		t.Errorf("progress after the restore %v, want the 7s it had", got)
	}
	f.event(EventRestoredFromTier)
	if _, ok := f.mgr.Holds(f.pod.UID); ok {
		t.Error("the manager still holds the restored pod")
	}
	if st := f.storageStatus(); st != nil {
		t.Errorf("status.storage %+v after the restore, want none", st)
	}
	for _, tier := range []storage.Tier{f.mgr.disk, f.objects} {
		if keys, _ := tier.List(t.Context(), "ml/"); len(keys) != 0 {
			t.Errorf("%s still holds %v after the restore", tier, keys)
		}
	}
}

func TestSpillBeforeSuspend(t *testing.T) {
	f := newFixture(t, "15Gi")
	f.mgr.Reconcile(t.Context())
	if got := f.tierOf(); got != kv1.TierHostMemory {
		t.Fatalf("pod in %s under the mark, want HostMemory", got)
	}
	enough, err := f.mgr.MakeRoom(t.Context(), node, 10*gib)
	if err != nil || !enough {
		t.Fatalf("MakeRoom = %v, %v", enough, err)
	}
	if got := f.tierOf(); got != kv1.TierDisk {
		t.Fatalf("pod in %s after making room for 10Gi under a 15Gi mark, want Disk", got)
	}
}

func TestUploadFailureKeepsDiskCopy(t *testing.T) {
	f := newFixture(t, "5Gi")
	f.mgr.Reconcile(t.Context())
	f.objects.down = true
	f.clk.Step(10 * time.Minute)
	f.mgr.Reconcile(t.Context())
	if got := f.tierOf(); got != kv1.TierDisk {
		t.Fatalf("pod in %s with the object store down, want Disk", got)
	}
	if ev := f.event(EventTierMoveFailed); !strings.Contains(ev, "connection refused") || !strings.Contains(ev, "stays on disk") {
		t.Errorf("Event %q does not say why and that the image stays", ev)
	}
	if st := f.storageStatus(); st == nil || st.Tier != kv1.TierDisk || !strings.Contains(st.LastError, "UploadFailed") {
		t.Errorf("status.storage %+v, want Disk with the upload's error", st)
	}
	// Within the backoff nothing is tried; after it the upload succeeds.
	f.objects.down = false
	f.clk.Step(30 * time.Second)
	f.mgr.Reconcile(t.Context())
	if got := f.tierOf(); got != kv1.TierDisk {
		t.Fatalf("pod in %s within the backoff, want Disk", got)
	}
	f.clk.Step(30 * time.Second)
	f.mgr.Reconcile(t.Context())
	if got := f.tierOf(); got != kv1.TierObjectStore {
		t.Fatalf("pod in %s after the backoff, want ObjectStore", got)
	}
	if st := f.storageStatus(); st == nil || st.LastError != "" {
		t.Errorf("status.storage %+v, want the error cleared", st)
	}
	// The disk copy restores while the object store is unreachable? Not once uploaded: the
	// object store must answer, and the failure leaves everything in place.
	f.objects.down = true
	_, err := f.mgr.Restore(t.Context(), node, f.pod, nil)
	if engine.CauseOf(err) != engine.CauseFetchFailed {
		t.Fatalf("restore with the object store down: %v, want FetchFailed", err)
	}
	if got := f.tierOf(); got != kv1.TierObjectStore || len(f.machine.ProcessesOf(f.pod.UID)) != 0 {
		t.Fatalf("after a failed fetch the pod is in %s with processes %v, want ObjectStore and none", got, f.machine.ProcessesOf(f.pod.UID))
	}
	f.objects.down = false
	if _, err := f.mgr.Restore(t.Context(), node, f.pod, nil); err != nil {
		t.Fatalf("restore once the object store is back: %v", err)
	}
}

func TestTamperedObjectRefused(t *testing.T) {
	f := newFixture(t, "5Gi")
	f.spillAndUpload()
	root := filepath.Join(f.dir, "object-store", "ml", "train-uid-train", "files")
	var victim string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && victim == "" {
			victim = p
		}
		return err
	})
	if err != nil || victim == "" {
		t.Fatalf("no stored file under %s: %v", root, err)
	}
	data, err := os.ReadFile(victim)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 1
	if err := os.WriteFile(victim, data, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = f.mgr.Restore(t.Context(), node, f.pod, nil)
	if engine.CauseOf(err) != engine.CauseImageCorrupt || !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("restore of a tampered object: %v, want ImageCorrupt", err)
	}
	name := strings.TrimPrefix(victim, root+string(filepath.Separator))
	if !strings.Contains(err.Error(), name) {
		t.Errorf("error %q does not name the file %s", err, name)
	}
	if ev := f.event(EventTierMoveFailed); !strings.Contains(ev, "stays suspended") {
		t.Errorf("Event %q", ev)
	}
	if got := f.tierOf(); got != kv1.TierObjectStore || len(f.machine.ProcessesOf(f.pod.UID)) != 0 {
		t.Fatalf("after a refused restore the pod is in %s with processes, want ObjectStore and none", got)
	}
	if _, err := os.Stat(victim); err != nil {
		t.Errorf("the tampered object was deleted: %v", err)
	}
	if _, err := os.Stat(filepath.Join(f.dir, "object-store", "ml", "train-uid-train", "manifest.json")); err != nil {
		t.Errorf("the manifest was deleted: %v", err)
	}
}

func TestRestoreGuardFetchesNothing(t *testing.T) {
	f := newFixture(t, "5Gi")
	f.spillAndUpload()
	if err := f.machine.SetForeignMemory(map[int]uint64{0: uint64(75 * gib)}); err != nil {
		t.Fatal(err)
	}
	_, err := f.mgr.Restore(t.Context(), node, f.pod, nil)
	if engine.CauseOf(err) != engine.CauseInsufficientGPUMemory {
		t.Fatalf("restore onto a full GPU: %v, want InsufficientGPUMemory", err)
	}
	if keys, _ := f.mgr.disk.List(t.Context(), "ml/"); len(keys) != 0 {
		t.Errorf("the guard's refusal fetched %v to disk", keys)
	}
	if got := f.tierOf(); got != kv1.TierObjectStore {
		t.Fatalf("pod in %s, want ObjectStore", got)
	}
}

func TestSpillWithoutKeyStaysInHostMemory(t *testing.T) {
	f := newFixture(t, "5Gi")
	f.mgr.keys = SecretKeys{Client: kubefake.NewSimpleClientset(), Name: "kybernate-image-key"}
	f.mgr.Reconcile(t.Context())
	if got := f.tierOf(); got != kv1.TierHostMemory {
		t.Fatalf("pod in %s without a key, want HostMemory", got)
	}
	if ev := f.event(EventTierMoveFailed); !strings.Contains(ev, "NoKey") || !strings.Contains(ev, "kybernate-image-key") {
		t.Errorf("Event %q does not name the missing Secret", ev)
	}
	if !f.engine.IsSuspended(f.pod.UID) || len(f.machine.ProcessesOf(f.pod.UID)) != 1 {
		t.Error("the pod is no longer parked in host memory")
	}
	if keys, _ := f.mgr.disk.List(t.Context(), ""); len(keys) != 0 {
		t.Errorf("a failed spill left %v", keys)
	}
}
