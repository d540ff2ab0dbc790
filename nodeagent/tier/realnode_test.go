package tier

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubefake "k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/component-base/metrics/testutil"
	testingclock "k8s.io/utils/clock/testing"

	kybfake "github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned/fake"
	listers "github.com/kybernate/kybernate/apis/kybernate/client/listers/kybernate/v1alpha1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/metrics"
	"github.com/kybernate/kybernate/nodeagent/storage"
)

const (
	createHold      = 30 * time.Second
	recreateTimeout = 5 * time.Minute
)

// realFixture is a real node as the policy sees it: a frozen, suspended pod without GPUs whose
// container the Containers of containers_test.go (a fake containerd) spill and fetch.
type realFixture struct {
	*containersFixture
	t      *testing.T
	clk    *testingclock.FakeClock
	mgr    *Manager
	pod    *v1.Pod
	kyb    *kybfake.Clientset
	events *record.FakeRecorder
	// newManager makes the Manager of an agent over the fixture's node and tiers, the gate of
	// its Containers.
	newManager func() *Manager
	ckIdx      cache.Indexer
}

func newRealFixture(t *testing.T) *realFixture {
	t.Helper()
	return newRealFixtureWith(t, testingclock.NewFakeClock(epoch), nil)
}

// newRealFixtureWith is newRealFixture; gpus, when set, makes the pod one with GPUs: it changes
// the pod and the node before the Manager is made.
func newRealFixtureWith(t *testing.T, clk *testingclock.FakeClock, gpus func(cf *containersFixture, pod *v1.Pod, n *Node)) *realFixture {
	t.Helper()
	cf := newContainers(t)
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: "train", UID: "uid-train", Annotations: map[string]string{kv1.AnnotationState: string(kv1.PodSuspended)}},
		Spec:       v1.PodSpec{NodeName: node, Containers: []v1.Container{{Name: "trainer", Image: "img"}}},
		Status:     v1.PodStatus{Phase: v1.PodRunning},
	}
	done := metav1.NewTime(epoch)
	suspend := &kv1.GPUCheckpoint{ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: "train-suspend"},
		Spec:   kv1.GPUCheckpointSpec{PodName: "train", PodUID: "uid-train", Action: kv1.ActionSuspend},
		Status: kv1.GPUCheckpointStatus{Phase: kv1.PhaseSucceeded, NodeName: node, CompletionTime: &done}}
	kube := kubefake.NewSimpleClientset(pod)
	kyb := kybfake.NewSimpleClientset(suspend)
	podIdx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	ckIdx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	if err := errors.Join(podIdx.Add(pod), ckIdx.Add(suspend)); err != nil {
		t.Fatal(err)
	}
	hw, err := ParseThreshold("1")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{HighWater: hw, DiskDir: cf.c.DiskDir, DiskIdle: 10 * time.Minute, Interval: time.Second, MoveTimeout: time.Minute, RetryBackoff: time.Minute, MaxBackoff: 10 * time.Minute,
		CreateHold: createHold, RecreateTimeout: recreateTimeout, KeySecret: "kybernate-image-key"}
	events := record.NewFakeRecorder(100)
	n := Node{Containers: cf.c, Memory: func() int64 { return 100 * gib }, Parked: func(context.Context) ([]ParkedPod, error) {
		return []ParkedPod{{Pod: pod, Bytes: 3 << 20}}, nil
	}}
	if gpus != nil {
		gpus(cf, pod, &n)
	}
	newManager := func() *Manager {
		mgr := New(cfg, singleNode{n}, cf.c.Disk, cf.c.Objects, cf.c.Keys, kube, kyb, corelisters.NewPodLister(podIdx), listers.NewGPUCheckpointLister(ckIdx), events, clk)
		cf.c.Gate = mgr
		return mgr
	}
	return &realFixture{containersFixture: cf, t: t, clk: clk, mgr: newManager(), pod: pod, kyb: kyb, events: events, newManager: newManager, ckIdx: ckIdx}
}

func (f *realFixture) event(reason string) string {
	f.t.Helper()
	return recordedEvent(f.t, f.events, reason)
}

// resume runs the pod's Restore, which waits for the container's next create; its error comes
// on the channel.
func (f *realFixture) resume() <-chan error {
	resumed := make(chan error, 1)
	go func() {
		_, err := f.mgr.Restore(f.t.Context(), node, f.pod, nil)
		resumed <- err
	}()
	return resumed
}

// spill has the policy spill the pod (over the one-byte mark).
func (f *realFixture) spill() {
	f.t.Helper()
	f.mgr.Reconcile(f.t.Context())
	if tier, ok := f.mgr.Holds(f.pod.UID); !ok || tier != kv1.TierDisk {
		f.t.Fatalf("after a reconcile over the mark the pod is held in %q (%v), want Disk", tier, ok)
	}
}

// waitForTimer waits until n timers of the fake clock are set (a create or a resume waits).
func (f *realFixture) waitForTimers() {
	f.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f.clk.HasWaiters() {
		if time.Now().After(deadline) {
			f.t.Fatal("nothing waits on the clock")
		}
		time.Sleep(time.Millisecond)
	}
}

type fetchResult struct {
	out Fetched
	err error
}

func (f *realFixture) fetch() chan fetchResult {
	ch := make(chan fetchResult, 1)
	go func() {
		out, err := f.c.Fetch(f.t.Context(), trainer)
		ch <- fetchResult{out, err}
	}()
	return ch
}

// The policy spills the frozen container (not paused again) above the mark; the kubelet's
// creates are held for CreateHold and then refused naming the tier, and the pod's Suspend
// says Disk.
func TestRealNodeSpillRefusesCreates(t *testing.T) {
	f := newRealFixture(t)
	f.spill()
	if diff := cmp.Diff([]string{"Dump", "Stop"}, f.rt.calls); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
	if ev := f.event(EventSpilledToDisk); !strings.Contains(ev, "refused until the pod is resumed") {
		t.Errorf("Event %q", ev)
	}
	ck, err := f.kyb.KybernateV1alpha1().GPUCheckpoints("ml").Get(t.Context(), "train-suspend", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st := ck.Status.Storage; st == nil || st.Tier != kv1.TierDisk || st.StoredBytes == 0 {
		t.Errorf("status.storage %+v, want Disk", st)
	}
	metrics.Register()
	before, err := testutil.GetCounterMetricValue(metrics.SpilledCreatesRefused.WithLabelValues(string(kv1.TierDisk)))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		res := f.fetch()
		f.waitForTimers()
		f.clk.Step(createHold)
		r := <-res
		if ContainerCauseOf(r.err) != ContainerNotYet || !strings.Contains(r.err.Error(), "ml/train is Suspended with its memory spilled to Disk") {
			t.Fatalf("create %d: %v, want refused as not resumed", i+1, r.err)
		}
	}
	if after, _ := testutil.GetCounterMetricValue(metrics.SpilledCreatesRefused.WithLabelValues(string(kv1.TierDisk))); after-before != 2 {
		t.Errorf("refused creates counted %v, want 2", after-before)
	}
	// The policy does not spill it twice, and the parked pod it holds is not counted again.
	f.rt.calls = nil
	f.mgr.Reconcile(t.Context())
	if len(f.rt.calls) != 0 {
		t.Errorf("a second reconcile called %v", f.rt.calls)
	}
}

// A Resume while a create waits lets that create restore the container at once; the Resume
// ends when the shim says the restore succeeded, and the image is gone.
func TestRealNodeResumeRestoresWaitingCreate(t *testing.T) {
	f := newRealFixture(t)
	f.spill()
	res := f.fetch()
	f.waitForTimers()
	resumed := make(chan error, 1)
	var result engine.Result
	go func() {
		var err error
		result, err = f.mgr.Restore(t.Context(), node, f.pod, nil)
		resumed <- err
	}()
	r := <-res
	if r.err != nil || r.out.Dir == "" {
		t.Fatalf("create after the resume: %+v, %v; want the image to restore from", r.out, r.err)
	}
	if err := f.c.Release(t.Context(), trainer, r.out.Dir, true); err != nil {
		t.Fatal(err)
	}
	if err := <-resumed; err != nil {
		t.Fatal(err)
	}
	if result.Storage == nil || result.Storage.Tier != kv1.TierDisk || len(result.Steps) != 1 || result.Steps[0].Name != StepRecreate {
		t.Errorf("result %+v", result)
	}
	if _, held := f.mgr.Holds(f.pod.UID); held {
		t.Error("still held after the restore")
	}
	if ok, err := storageExists(t, f.c); ok || err != nil {
		t.Errorf("image still on disk (%v)", err)
	}
	f.event(EventRestoredFromTier)
}

// A Resume whose create does not come in time, or whose restore fails, leaves the pod spilled:
// the gate closes and the next create is refused again.
func TestRealNodeResumeFails(t *testing.T) {
	for _, tt := range []struct {
		name    string
		restore func(f *realFixture)
		want    string
	}{
		{name: "no create", restore: func(f *realFixture) { f.waitForTimers(); f.clk.Step(recreateTimeout) }, want: "did not create the container within 5m0s"},
		{name: "restore fails", restore: func(f *realFixture) {
			f.waitForTimers()
			r := <-f.fetch()
			if r.err != nil {
				f.t.Errorf("create after the resume: %v", r.err)
				return
			}
			if err := f.c.Release(f.t.Context(), trainer, r.out.Dir, false); err != nil {
				f.t.Error(err)
			}
		}, want: "the shim could not restore the container"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newRealFixture(t)
			f.spill()
			resumed := f.resume()
			tt.restore(f)
			if err := <-resumed; err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("resume: %v, want %q", err, tt.want)
			}
			if tier, held := f.mgr.Holds(f.pod.UID); !held || tier != kv1.TierDisk {
				t.Fatalf("after the failed resume the pod is held in %q (%v), want Disk", tier, held)
			}
			res := f.fetch()
			f.waitForTimers()
			f.clk.Step(createHold)
			if r := <-res; ContainerCauseOf(r.err) != ContainerNotYet {
				t.Errorf("create after the failed resume: %v, want refused", r.err)
			}
			if ok, err := storageExists(t, f.c); !ok || err != nil {
				t.Errorf("image gone from disk (%v)", err)
			}
		})
	}
}

// A pod deleted while its create waits: the create ends at once, refused.
func TestRealNodeForgetEndsWaitingCreate(t *testing.T) {
	f := newRealFixture(t)
	f.spill()
	res := f.fetch()
	f.waitForTimers()
	f.mgr.Forget(t.Context(), f.pod)
	if r := <-res; ContainerCauseOf(r.err) != ContainerNotYet {
		t.Errorf("create of a deleted pod: %v, want refused", r.err)
	}
}

func storageExists(t *testing.T, c *Containers) (bool, error) {
	t.Helper()
	return storage.Exists(t.Context(), c.Disk, ImageOf("ml", "train", "uid-train"))
}

// After --disk-tier-idle the policy moves the image to object storage (the node records it, so
// that the create looks there); a Resume restores the container from there.
func TestRealNodeUploadThenResume(t *testing.T) {
	f := newRealFixture(t)
	f.spill()
	f.clk.Step(10 * time.Minute)
	f.mgr.Reconcile(t.Context())
	if tier, _ := f.mgr.Holds(f.pod.UID); tier != kv1.TierObjectStore {
		t.Fatalf("after 10m on disk the pod is in %s, want ObjectStore", tier)
	}
	if ok, err := storageExists(t, f.c); ok || err != nil {
		t.Errorf("the disk copy is still there (%v)", err)
	}
	// The Event counts the files the upload copied (a real node's first run said 0).
	if ev := f.event(EventUploadedToObjectStore); strings.Contains(ev, "(0 files copied") || !strings.Contains(ev, "files copied, 0 resumed") {
		t.Errorf("Event %q, want the files the upload copied counted", ev)
	}
	resumed := f.resume()
	f.waitForTimers()
	r := <-f.fetch()
	if r.err != nil || r.out.Tier != kv1.TierObjectStore || r.out.Dir == "" {
		t.Fatalf("create after the resume: %+v, %v; want the image from the object store", r.out, r.err)
	}
	if err := f.c.Release(t.Context(), trainer, r.out.Dir, true); err != nil {
		t.Fatal(err)
	}
	if err := <-resumed; err != nil {
		t.Fatal(err)
	}
}

// An agent that restarts while a container is spilled holds its creates again: the next
// agent takes the pod over from its Suspend's status.storage.
func TestRealNodeRecoverAfterRestart(t *testing.T) {
	f := newRealFixture(t)
	f.spill()
	ck, err := f.kyb.KybernateV1alpha1().GPUCheckpoints("ml").Get(t.Context(), "train-suspend", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.ckIdx.Update(ck); err != nil {
		t.Fatal(err)
	}
	f.mgr = f.newManager()
	f.mgr.Recover(t.Context())
	if tier, held := f.mgr.Holds(f.pod.UID); !held || tier != kv1.TierDisk {
		t.Fatalf("after the restart the pod is held in %q (%v), want Disk", tier, held)
	}
	f.rt.calls = nil
	res := f.fetch()
	f.waitForTimers()
	f.clk.Step(createHold)
	if r := <-res; ContainerCauseOf(r.err) != ContainerNotYet {
		t.Errorf("create after the restart: %v, want refused", r.err)
	}
	if len(f.rt.calls) != 0 {
		t.Errorf("the restarted agent touched the container: %v", f.rt.calls)
	}
}

// A pod deleted while its Resume waits for the create: the Resume ends at once.
func TestRealNodeForgetEndsWaitingResume(t *testing.T) {
	f := newRealFixture(t)
	f.spill()
	resumed := f.resume()
	f.waitForTimers()
	f.mgr.Forget(t.Context(), f.pod)
	if err := <-resumed; err == nil || !strings.Contains(err.Error(), "deleted") {
		t.Errorf("resume of a deleted pod: %v, want it ended", err)
	}
	if _, held := f.mgr.Holds(f.pod.UID); held {
		t.Error("a deleted pod is still held")
	}
}
