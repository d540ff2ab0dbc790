package status

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kubefake "k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	testingclock "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	kybfake "github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned/fake"
	listers "github.com/kybernate/kybernate/apis/kybernate/client/listers/kybernate/v1alpha1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/inventory"
	"github.com/kybernate/kybernate/nodeagent/podmap"
)

// pidMap is a PodResolver over a fixed map.
type pidMap map[int32]podmap.PodRef

func (m pidMap) PodOfPID(_ context.Context, pid int32) (podmap.PodRef, error) {
	if p, ok := m[pid]; ok {
		return p, nil
	}
	return podmap.PodRef{}, podmap.ErrNotInPod
}

type suspendedList []kv1.PodGPUUsage

func (s suspendedList) SuspendedPods() []kv1.PodGPUUsage { return s }

// harness is a Reporter on fake clientsets whose listers are indexers the test fills, standing
// in for informers that the test lets catch up (or not) explicitly.
type harness struct {
	t        *testing.T
	r        *Reporter
	kube     *kubefake.Clientset
	kyb      *kybfake.Clientset
	gpuNodes cache.Indexer
	nodes    cache.Indexer
	clock    *testingclock.FakeClock
	inv      *inventory.Static
}

const nodeName = "gpu-node-1"

func newHarness(t *testing.T, cfg Config, objs ...*kv1.GPUNode) *harness {
	t.Helper()
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName, UID: "node-uid"}}
	h := &harness{
		t:        t,
		kube:     kubefake.NewClientset(node),
		kyb:      kybfake.NewSimpleClientset(),
		gpuNodes: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{}),
		nodes:    cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{}),
		clock:    testingclock.NewFakeClock(t0.Time),
		inv:      &inventory.Static{Inventory: twoH100s(13000)},
	}
	for _, o := range objs {
		if err := h.kyb.Tracker().Add(o); err != nil {
			t.Fatal(err)
		}
	}
	var rv int
	bumpResourceVersions(&h.kube.Fake, h.kube.Tracker(), &rv)
	bumpResourceVersions(&h.kyb.Fake, h.kyb.Tracker(), &rv)
	h.catchUp()
	h.r = New(cfg, h.kube, h.kyb, listers.NewGPUNodeLister(h.gpuNodes), corelisters.NewNodeLister(h.nodes), h.clock)
	h.r.Add(nodeName, Node{
		Inventory:  h.inv,
		Pods:       pidMap{10: trainer, 11: trainer, 12: big, 13: big},
		HostMemory: FixedMemory(100 * gib),
	})
	return h
}

// bumpResourceVersions makes the fake clientset's writes give objects a new
// resourceVersion each, as the API server does; the Reporter relies on them to tell a stale
// cache from a changed object.
func bumpResourceVersions(c *k8stesting.Fake, tracker k8stesting.ObjectTracker, rv *int) {
	c.PrependReactor("*", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		switch a.GetVerb() {
		case "create", "update", "patch":
		default:
			return false, nil, nil
		}
		handled, obj, err := k8stesting.ObjectReaction(tracker)(a)
		if err != nil || obj == nil {
			return handled, obj, err
		}
		*rv++
		m, err := meta.Accessor(obj)
		if err != nil {
			return true, nil, err
		}
		m.SetResourceVersion(strconv.Itoa(*rv))
		return true, obj, tracker.Update(a.GetResource(), obj, a.GetNamespace())
	})
}

// catchUp copies the API's objects into the listers' indexers, as informers would.
func (h *harness) catchUp() {
	h.t.Helper()
	gns, err := h.kyb.KybernateV1alpha1().GPUNodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	nodes, err := h.kube.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	var gnObjs, nodeObjs []interface{}
	for i := range gns.Items {
		gnObjs = append(gnObjs, &gns.Items[i])
	}
	for i := range nodes.Items {
		nodeObjs = append(nodeObjs, &nodes.Items[i])
	}
	if err := h.gpuNodes.Replace(gnObjs, ""); err != nil {
		h.t.Fatal(err)
	}
	if err := h.nodes.Replace(nodeObjs, ""); err != nil {
		h.t.Fatal(err)
	}
}

// sync runs one Sync and returns the write actions it made.
func (h *harness) sync() (time.Duration, []string) {
	h.t.Helper()
	h.kube.ClearActions()
	h.kyb.ClearActions()
	after, err := h.r.Sync(h.t.Context(), nodeName)
	if err != nil {
		h.t.Fatalf("Sync: %v", err)
	}
	var writes []string
	for _, a := range append(h.kyb.Actions(), h.kube.Actions()...) {
		if a.GetVerb() == "get" || a.GetVerb() == "list" {
			continue
		}
		w := a.GetVerb() + " " + a.GetResource().Resource
		if a.GetSubresource() != "" {
			w += "/" + a.GetSubresource()
		}
		writes = append(writes, w)
	}
	return after, writes
}

func (h *harness) gpuNode() *kv1.GPUNode {
	h.t.Helper()
	gn, err := h.kyb.KybernateV1alpha1().GPUNodes().Get(context.Background(), nodeName, metav1.GetOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	return gn
}

func (h *harness) capacity() (string, string) {
	h.t.Helper()
	n, err := h.kube.CoreV1().Nodes().Get(context.Background(), nodeName, metav1.GetOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	c, a := n.Status.Capacity[kv1.ResourceGPU], n.Status.Allocatable[kv1.ResourceGPU]
	return c.String(), a.String()
}

func TestSyncCreatesAndWritesOnChangeOnly(t *testing.T) {
	h := newHarness(t, Config{SlotsPerGPU: 2, HostMemoryReserve: 8 * gib, MinInterval: time.Second, Simulated: true})

	_, writes := h.sync()
	if diff := cmp.Diff([]string{"create gpunodes", "update gpunodes/status", "patch nodes/status"}, writes); diff != "" {
		t.Errorf("first sync writes (-want +got):\n%s", diff)
	}
	gn := h.gpuNode()
	if diff := cmp.Diff([]metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: nodeName, UID: "node-uid"}}, gn.OwnerReferences); diff != "" {
		t.Errorf("owner (-want +got):\n%s", diff)
	}
	if got := ptr.Deref(gn.Spec.SlotsPerGPU, 0); got != 2 {
		t.Errorf("slotsPerGPU %d, want 2", got)
	}
	if got := len(gn.Status.GPUs); got != 2 {
		t.Errorf("%d gpus in status, want 2", got)
	}
	if c := meta.FindStatusCondition(gn.Status.Conditions, kv1.GPUNodeSimulated); c == nil || c.Status != metav1.ConditionTrue {
		t.Errorf("Simulated condition %+v, want True", c)
	}
	if c, a := h.capacity(); c != "4" || a != "4" {
		t.Errorf("node capacity %s allocatable %s, want 4 and 4 (2 gpus x 2 slots)", c, a)
	}

	// The informers have not seen the writes yet: nothing is written twice.
	h.clock.Step(time.Minute)
	if _, writes := h.sync(); len(writes) != 0 {
		t.Errorf("sync before the cache caught up wrote %v, want nothing", writes)
	}
	// Nor once they have, and time passed.
	h.catchUp()
	h.clock.Step(time.Minute)
	if _, writes := h.sync(); len(writes) != 0 {
		t.Errorf("sync without change wrote %v, want nothing", writes)
	}

	// A change right after a write waits for MinInterval, then is written.
	h.inv.Inventory.GPUs[1].Processes = nil
	h.inv.Inventory.GPUs[1].MemoryUsedBytes = 0
	_, _ = h.sync() // writes: more than MinInterval since the last one
	h.catchUp()
	h.inv.Inventory.GPUs[0].Processes = nil
	h.clock.Step(300 * time.Millisecond)
	after, writes := h.sync()
	if len(writes) != 0 || after != 700*time.Millisecond {
		t.Errorf("sync 300ms after a write: wrote %v, wait %v; want nothing written and a wait of 700ms", writes, after)
	}
	h.clock.Step(after)
	if _, writes := h.sync(); !cmp.Equal([]string{"update gpunodes/status"}, writes) {
		t.Errorf("sync after the wait wrote %v, want the status", writes)
	}
	if pods := h.gpuNode().Status.GPUs[0].Pods; len(pods) != 0 {
		t.Errorf("gpu 0 pods %v, want none", pods)
	}
}

func TestSyncFixesSpecAndCapacity(t *testing.T) {
	existing := &kv1.GPUNode{ObjectMeta: metav1.ObjectMeta{Name: nodeName}, Spec: kv1.GPUNodeSpec{SlotsPerGPU: ptr.To[int32](1)}}
	h := newHarness(t, Config{SlotsPerGPU: 3, MinInterval: time.Second}, existing)
	_, writes := h.sync()
	if diff := cmp.Diff([]string{"update gpunodes", "update gpunodes/status", "patch nodes/status"}, writes); diff != "" {
		t.Errorf("writes (-want +got):\n%s", diff)
	}
	if got := ptr.Deref(h.gpuNode().Spec.SlotsPerGPU, 0); got != 3 {
		t.Errorf("slotsPerGPU %d, want 3", got)
	}
	if c, a := h.capacity(); c != "6" || a != "6" {
		t.Errorf("node capacity %s allocatable %s, want 6", c, a)
	}

	// A kubelet that re-registers zeroes extended resources; the agent puts them back.
	h.catchUp()
	node, _ := h.kube.CoreV1().Nodes().Get(t.Context(), nodeName, metav1.GetOptions{})
	node.Status.Capacity = v1.ResourceList{kv1.ResourceGPU: resource.MustParse("0")}
	if _, err := h.kube.CoreV1().Nodes().UpdateStatus(t.Context(), node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.catchUp()
	h.clock.Step(time.Minute)
	if _, writes := h.sync(); !cmp.Equal([]string{"patch nodes/status"}, writes) {
		t.Errorf("writes %v, want the capacity patch only", writes)
	}
}

func TestSyncWaitsForNode(t *testing.T) {
	h := newHarness(t, Config{MinInterval: time.Second})
	if err := h.nodes.Delete(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName}}); err != nil {
		t.Fatal(err)
	}
	if _, writes := h.sync(); len(writes) != 0 {
		t.Errorf("wrote %v without a node, want nothing", writes)
	}
}

func TestSyncInventoryFailure(t *testing.T) {
	h := newHarness(t, Config{MinInterval: time.Second})
	h.sync()
	h.catchUp()
	h.inv.Err = &inventory.Error{Op: "nvmlDeviceGetCount", Index: -1, Return: 999}
	h.clock.Step(time.Minute)
	if _, writes := h.sync(); !cmp.Equal([]string{"update gpunodes/status"}, writes) {
		t.Errorf("writes %v, want the status", writes)
	}
	gn := h.gpuNode()
	c := meta.FindStatusCondition(gn.Status.Conditions, kv1.GPUNodeReady)
	if c == nil || c.Status != metav1.ConditionFalse || c.Reason != ReasonInventoryFailed {
		t.Errorf("Ready %+v, want False/%s", c, ReasonInventoryFailed)
	}
	if len(gn.Status.GPUs) != 2 {
		t.Errorf("%d gpus, want the 2 last seen", len(gn.Status.GPUs))
	}
}

func TestSyncConflictIsAnError(t *testing.T) {
	h := newHarness(t, Config{MinInterval: time.Second})
	h.sync()
	h.catchUp()
	h.kyb.PrependReactor("update", "gpunodes", func(a k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewConflict(kv1.Resource("gpunodes"), nodeName, errors.New("stale"))
	})
	h.inv.Inventory.GPUs[0].Processes = nil
	h.clock.Step(time.Minute)
	if _, err := h.r.Sync(t.Context(), nodeName); !apierrors.IsConflict(err) {
		t.Errorf("Sync error %v, want a conflict to retry on", err)
	}
}

func TestMarkStopped(t *testing.T) {
	h := newHarness(t, Config{MinInterval: time.Second})
	h.sync()
	h.clock.Step(time.Minute)
	h.r.MarkStopped(t.Context())
	c := meta.FindStatusCondition(h.gpuNode().Status.Conditions, kv1.GPUNodeReady)
	if c == nil || c.Status != metav1.ConditionFalse || c.Reason != ReasonAgentStopped {
		t.Errorf("Ready %+v, want False/%s", c, ReasonAgentStopped)
	}
}

func TestSuspendedPodsReported(t *testing.T) {
	h := newHarness(t, Config{MinInterval: time.Second, HostMemoryReserve: 8 * gib})
	h.r.Add(nodeName, Node{
		Inventory:  h.inv,
		Suspended:  suspendedList{{Namespace: "ml", Name: "infer", Residency: kv1.Suspended, Bytes: 30 * gib}},
		HostMemory: FixedMemory(70 * gib),
	})
	h.sync()
	got := h.gpuNode().Status.HostMemory
	if diff := cmp.Diff(kv1.HostMemoryStatus{ParkableBytes: 62 * gib, ParkedBytes: 30 * gib}, got); diff != "" {
		t.Errorf("host memory (-want +got):\n%s", diff)
	}
}

func TestDeletedGPUNodeIsCreatedAgain(t *testing.T) {
	h := newHarness(t, Config{MinInterval: time.Second})
	h.sync()
	gn := h.gpuNode()
	if err := h.kyb.KybernateV1alpha1().GPUNodes().Delete(t.Context(), nodeName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	h.catchUp()
	h.clock.Step(time.Minute)
	h.r.EventHandler().OnDelete(gn)
	_, writes := h.sync()
	if diff := cmp.Diff([]string{"create gpunodes", "update gpunodes/status"}, writes); diff != "" {
		t.Errorf("writes after delete (-want +got):\n%s", diff)
	}
}

// While memory is being moved on the node, nothing is read (NVML reads slow the checkpoint)
// and nothing is written; the node is looked at again shortly.
func TestSyncWaitsWhileBusy(t *testing.T) {
	h := newHarness(t, Config{SlotsPerGPU: 2, HostMemoryReserve: 8 * gib, MinInterval: time.Second})
	busy := true
	reads := 0
	h.r.Add(nodeName, Node{
		Inventory:  countingSource{Source: h.inv, reads: &reads},
		HostMemory: FixedMemory(100 * gib),
		Busy:       func() bool { return busy },
	})
	after, writes := h.sync()
	if after != busyRetry || len(writes) != 0 || reads != 0 {
		t.Fatalf("busy node: retry after %v, writes %v, %d inventory reads; want %v, none, none", after, writes, reads, busyRetry)
	}
	busy = false
	if _, writes := h.sync(); len(writes) == 0 || reads != 1 {
		t.Errorf("idle node: writes %v, %d inventory reads; want the GPUNode written after one read", writes, reads)
	}
}

type countingSource struct {
	inventory.Source
	reads *int
}

func (c countingSource) Read(ctx context.Context) (*inventory.Inventory, error) {
	*c.reads++
	return c.Source.Read(ctx)
}
