package sim

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	kubefake "k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	testingclock "k8s.io/utils/clock/testing"

	kybfake "github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned/fake"
	listers "github.com/kybernate/kybernate/apis/kybernate/client/listers/kybernate/v1alpha1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/nodeagent/status"
)

func kwokNode(name, model, count string) *v1.Node {
	return &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("uid-" + name), Labels: map[string]string{
			"type": "kwok", kv1.LabelGPUModel: model, kv1.LabelGPUCount: count,
		}},
		Status: v1.NodeStatus{Allocatable: v1.ResourceList{v1.ResourceMemory: resource.MustParse("100Gi")}},
	}
}

type fleetHarness struct {
	fleet    *Fleet
	reporter *status.Reporter
	kube     *kubefake.Clientset
	kyb      *kybfake.Clientset
	nodes    cache.Indexer
	pods     cache.Indexer
	gpuNodes cache.Indexer
	clock    *testingclock.FakeClock
}

func newFleetHarness(t *testing.T, objs ...*v1.Node) *fleetHarness {
	t.Helper()
	h := &fleetHarness{
		kube:     kubefake.NewClientset(),
		kyb:      kybfake.NewSimpleClientset(),
		nodes:    cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{}),
		pods:     cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{}),
		gpuNodes: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{}),
		clock:    testingclock.NewFakeClock(epoch),
	}
	informer := cache.NewSharedIndexInformer(&cache.ListWatch{}, &v1.Pod{}, 0, cache.Indexers{})
	if err := AddNodeNameIndex(informer); err != nil {
		t.Fatal(err)
	}
	h.pods = informer.GetIndexer()
	for _, n := range objs {
		if _, err := h.kube.CoreV1().Nodes().Create(t.Context(), n, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := h.nodes.Add(n); err != nil {
			t.Fatal(err)
		}
	}
	sel, err := labels.Parse("type=kwok")
	if err != nil {
		t.Fatal(err)
	}
	h.reporter = status.New(status.Config{SlotsPerGPU: 2, HostMemoryReserve: 8 * gib, MinInterval: time.Second, Simulated: true},
		h.kube, h.kyb, listers.NewGPUNodeLister(h.gpuNodes), corelisters.NewNodeLister(h.nodes), h.clock)
	h.fleet = NewFleet(FleetConfig{Selector: sel, ProgressPeriod: 2 * time.Second, ProgressTick: 100 * time.Millisecond},
		h.kube, h.reporter, corelisters.NewNodeLister(h.nodes), h.pods, h.clock)
	return h
}

func (h *fleetHarness) addPod(t *testing.T, pod *v1.Pod) {
	t.Helper()
	if _, err := h.kube.CoreV1().Pods(pod.Namespace).Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := h.pods.Add(pod); err != nil {
		t.Fatal(err)
	}
}

func (h *fleetHarness) gpuNode(t *testing.T, name string) *kv1.GPUNode {
	t.Helper()
	gn, err := h.kyb.KybernateV1alpha1().GPUNodes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return gn
}

func TestFleetReportsSimulatedNode(t *testing.T) {
	h := newFleetHarness(t, kwokNode("kwok-node-0", "NVIDIA-H100-80GB-HBM3", "8"), kwokNode("kwok-bad", "NVIDIA-Unknown", "8"))
	g0 := GPUUUID("kwok-node-0", 0)
	h.addPod(t, gpuPod("train", []cuda.UUID{g0}, "40Gi"))

	for _, n := range []string{"kwok-node-0", "kwok-bad"} {
		if err := h.fleet.SyncNode(t.Context(), n); err != nil {
			t.Fatalf("SyncNode %s: %v", n, err)
		}
		if _, err := h.reporter.Sync(t.Context(), n); err != nil {
			t.Fatalf("Sync %s: %v", n, err)
		}
	}

	gn := h.gpuNode(t, "kwok-node-0")
	if len(gn.Status.GPUs) != 8 {
		t.Fatalf("%d gpus, want 8", len(gn.Status.GPUs))
	}
	wantGPU0 := kv1.GPUStatus{UUID: g0.String(), Index: 0, Model: "NVIDIA H100 80GB HBM3", MemoryTotalBytes: 80 * gib, MemoryUsedBytes: 40 * gib,
		Pods: []kv1.PodGPUUsage{{Namespace: "ml", Name: "train", UID: "uid-train", Residency: kv1.Resident, Bytes: 40 * gib, GPUs: []string{g0.String()}}}}
	if diff := cmp.Diff(wantGPU0, gn.Status.GPUs[0]); diff != "" {
		t.Errorf("gpu 0 (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(kv1.HostMemoryStatus{ParkableBytes: 92 * gib}, gn.Status.HostMemory); diff != "" {
		t.Errorf("host memory (-want +got):\n%s", diff)
	}
	if c := meta.FindStatusCondition(gn.Status.Conditions, kv1.GPUNodeSimulated); c == nil || c.Status != metav1.ConditionTrue {
		t.Errorf("Simulated %+v, want True", c)
	}
	if gn.Status.CheckpointCapability != kv1.CheckpointRemap || gn.Status.DriverVersion != DriverVersion {
		t.Errorf("capability %q driver %q, want Remap and %s", gn.Status.CheckpointCapability, gn.Status.DriverVersion, DriverVersion)
	}
	node, _ := h.kube.CoreV1().Nodes().Get(t.Context(), "kwok-node-0", metav1.GetOptions{})
	if q := node.Status.Allocatable[kv1.ResourceGPU]; q.Value() != 16 {
		t.Errorf("allocatable %s %s, want 16", kv1.ResourceGPU, q.String())
	}

	bad := h.gpuNode(t, "kwok-bad")
	c := meta.FindStatusCondition(bad.Status.Conditions, kv1.GPUNodeReady)
	if c == nil || c.Status != metav1.ConditionFalse || c.Reason != status.ReasonInventoryFailed {
		t.Errorf("Ready of node with unknown model %+v, want False/InventoryFailed", c)
	}

	// The node stops matching the selector: its machine goes.
	n := kwokNode("kwok-node-0", "NVIDIA-H100-80GB-HBM3", "8")
	n.Labels["type"] = "real"
	if err := h.nodes.Update(n); err != nil {
		t.Fatal(err)
	}
	if err := h.fleet.SyncNode(t.Context(), "kwok-node-0"); err != nil {
		t.Fatal(err)
	}
	if _, ok := h.fleet.Machine("kwok-node-0"); ok {
		t.Error("machine of an unselected node still there")
	}
}

func TestFleetPublishesProgress(t *testing.T) {
	h := newFleetHarness(t, kwokNode("kwok-node-0", "NVIDIA-H100-80GB-HBM3", "1"))
	g0 := GPUUUID("kwok-node-0", 0)
	h.addPod(t, gpuPod("train", []cuda.UUID{g0}, "40Gi"))
	if err := h.fleet.SyncNode(t.Context(), "kwok-node-0"); err != nil {
		t.Fatal(err)
	}
	h.clock.Step(7 * time.Second)
	h.fleet.Tick()
	h.fleet.PublishProgress(t.Context())
	pod, err := h.kube.CoreV1().Pods("ml").Get(t.Context(), "train", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := pod.Annotations[AnnotationProgress]; got != "7" {
		t.Errorf("progress annotation %q, want 7", got)
	}
	// Unchanged progress is not written again.
	if err := h.pods.Update(pod); err != nil {
		t.Fatal(err)
	}
	h.kube.ClearActions()
	h.fleet.PublishProgress(t.Context())
	if a := h.kube.Actions(); len(a) != 0 {
		t.Errorf("actions %v, want none", a)
	}
}

// SyncAll makes every simulated node's machine, and tells OnMachine, before the fleet's
// workers run: a restarted agent's controller serves a node only once its engine exists.
// Found by the kill storm: GPUCheckpoints created while the agent was down stayed Pending.
func TestSyncAllBeforeRun(t *testing.T) {
	other := kwokNode("real-0", "NVIDIA-H100-80GB-HBM3", "1")
	other.Labels["type"] = "real"
	h := newFleetHarness(t, kwokNode("kwok-0", "NVIDIA-H100-80GB-HBM3", "2"), kwokNode("kwok-1", "NVIDIA-H100-80GB-HBM3", "1"), other)
	var made []string
	h.fleet.OnMachine(func(node string, m *Machine) {
		if m != nil {
			made = append(made, node)
		}
	})
	if err := h.fleet.SyncAll(t.Context()); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"kwok-0", "kwok-1"}, made, cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
		t.Errorf("machines made (-want +got):\n%s", diff)
	}
	for _, n := range []string{"kwok-0", "kwok-1"} {
		if _, ok := h.fleet.Machine(n); !ok {
			t.Errorf("no machine for %s", n)
		}
	}
}
