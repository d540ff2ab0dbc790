package gpushare

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	fwk "k8s.io/kube-scheduler/framework"
	schedcache "k8s.io/kubernetes/pkg/scheduler/backend/cache"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	st "k8s.io/kubernetes/pkg/scheduler/testing"
	"k8s.io/utils/ptr"

	"github.com/kybernate/kybernate/apis/config"
	listers "github.com/kybernate/kybernate/apis/kybernate/client/listers/kybernate/v1alpha1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
)

const gi = int64(1) << 30

// gpuNode builds a GPUNode with GPUs of the given sizes in GiB, named GPU-<node>-<index>.
func gpuNode(name string, sizesGiB ...int64) *kv1.GPUNode {
	gn := &kv1.GPUNode{}
	gn.Name = name
	for i, s := range sizesGiB {
		gn.Status.GPUs = append(gn.Status.GPUs, kv1.GPUStatus{
			UUID: gpuID(name, i), Index: int32(i), Model: "NVIDIA H100 80GB HBM3", MemoryTotalBytes: s * gi,
		})
	}
	return gn
}

func gpuID(node string, i int) string { return fmt.Sprintf("GPU-%s-%d", node, i) }

// gpuPod is a pod asking for n GPUs with mem of VRAM each ("" for whole GPUs).
func gpuPod(name string, n int, mem string) *st.PodWrapper {
	p := st.MakePod().Namespace("ns").Name(name).UID(name).
		Req(map[v1.ResourceName]string{kv1.ResourceGPU: fmt.Sprint(n)})
	if mem != "" {
		p = p.Annotation(kv1.AnnotationGPUMemory, mem)
	}
	return p
}

// on places a built pod on a node's GPUs, as a bound pod.
func on(p *st.PodWrapper, node string, gpus ...int) *v1.Pod {
	ids := ""
	for i, g := range gpus {
		if i > 0 {
			ids += ","
		}
		ids += gpuID(node, g)
	}
	return p.Node(node).Annotation(kv1.AnnotationGPUs, ids).Obj()
}

func newTestPlugin(t testing.TB, strategy config.ScoringStrategyType, gns ...*kv1.GPUNode) *GPUShare {
	t.Helper()
	indexer := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	for _, gn := range gns {
		if err := indexer.Add(gn); err != nil {
			t.Fatal(err)
		}
	}
	pl := NewWithLister(nil, &config.GPUShareArgs{ScoringStrategy: strategy}, listers.NewGPUNodeLister(indexer))
	for _, gn := range gns {
		pl.GPUNodeHandler().OnAdd(gn, true) // as the informer does, after its store
	}
	return pl
}

func nodeInfo(name string, pods ...*v1.Pod) fwk.NodeInfo {
	ni := framework.NewNodeInfo(pods...)
	ni.SetNode(st.MakeNode().Name(name).Obj())
	return ni
}

func preFilter(t *testing.T, pl *GPUShare, pod *v1.Pod) (*framework.CycleState, *fwk.Status) {
	t.Helper()
	state := framework.NewCycleState()
	_, status := pl.PreFilter(t.Context(), state, pod, nil)
	return state, status
}

func TestPreFilter(t *testing.T) {
	tests := []struct {
		name     string
		pod      *v1.Pod
		wantCode fwk.Code
		wantMsg  string
		want     gpupod.Demand
	}{
		{name: "no GPU request skips", pod: st.MakePod().Name("p").Obj(), wantCode: fwk.Skip},
		{name: "whole GPUs", pod: gpuPod("p", 2, "").Obj(), want: gpupod.Demand{Count: 2}},
		{name: "memory per GPU", pod: gpuPod("p", 1, "40Gi").Obj(), want: gpupod.Demand{Count: 1, Bytes: 40 * gi}},
		{
			name: "model",
			pod:  gpuPod("p", 1, "").Annotation(kv1.AnnotationGPUModel, "NVIDIA-H100-80GB-HBM3").Obj(),
			want: gpupod.Demand{Count: 1, Model: "NVIDIA-H100-80GB-HBM3"},
		},
		{
			name:     "malformed memory",
			pod:      gpuPod("p", 1, "forty gigs").Obj(),
			wantCode: fwk.UnschedulableAndUnresolvable,
			wantMsg:  `annotation kybernate.io/gpu-memory="forty gigs" is not a quantity such as "40Gi": quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'`,
		},
		{
			name:     "negative memory",
			pod:      gpuPod("p", 1, "-1Gi").Obj(),
			wantCode: fwk.UnschedulableAndUnresolvable,
			wantMsg:  `annotation kybernate.io/gpu-memory="-1Gi" must be positive`,
		},
		{
			name:     "empty model",
			pod:      gpuPod("p", 1, "").Annotation(kv1.AnnotationGPUModel, " ").Obj(),
			wantCode: fwk.UnschedulableAndUnresolvable,
			wantMsg:  "annotation kybernate.io/gpu-model is empty: remove it or name a GPU model",
		},
		{
			name: "init container needs more than the app containers",
			pod: func() *v1.Pod {
				p := gpuPod("p", 1, "").Obj()
				p.Spec.InitContainers = []v1.Container{{Name: "init", Resources: v1.ResourceRequirements{
					Limits: v1.ResourceList{kv1.ResourceGPU: resource.MustParse("3")}}}}
				return p
			}(),
			want: gpupod.Demand{Count: 3},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pl := newTestPlugin(t, config.MostAllocated)
			state, status := preFilter(t, pl, tt.pod)
			if status.Code() != tt.wantCode {
				t.Fatalf("code = %v (%v), want %v", status.Code(), status.Message(), tt.wantCode)
			}
			if tt.wantMsg != "" {
				if diff := cmp.Diff(tt.wantMsg, status.Message()); diff != "" {
					t.Errorf("message (-want +got):\n%s", diff)
				}
			}
			if tt.wantCode != fwk.Success {
				return
			}
			s, err := getPreFilterState(state)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, s.demand); diff != "" {
				t.Errorf("demand (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFilter(t *testing.T) {
	const node = "n1"
	tests := []struct {
		name     string
		gpuNode  *kv1.GPUNode
		pods     []*v1.Pod
		pod      *v1.Pod
		wantCode fwk.Code
		wantMsg  string
	}{
		{
			name:    "empty node fits",
			gpuNode: gpuNode(node, 80, 80),
			pod:     gpuPod("p", 2, "").Obj(),
		},
		{
			name:     "no GPUNode is unresolvable",
			pod:      gpuPod("p", 1, "").Obj(),
			wantCode: fwk.UnschedulableAndUnresolvable,
			wantMsg:  "node has no GPUNode: no kybernate agent reports GPUs on it",
		},
		{
			name:     "more GPUs than the node has is unresolvable",
			gpuNode:  gpuNode(node, 80, 80),
			pod:      gpuPod("p", 3, "").Obj(),
			wantCode: fwk.UnschedulableAndUnresolvable,
			wantMsg:  "node has too few GPUs (pod needs 3 whole GPUs)",
		},
		{
			name:     "more memory than any GPU has is unresolvable",
			gpuNode:  gpuNode(node, 80, 80),
			pod:      gpuPod("p", 1, "100Gi").Obj(),
			wantCode: fwk.UnschedulableAndUnresolvable,
			wantMsg:  "node has too few GPUs (pod needs 1 with 100Gi each)",
		},
		{
			name:     "wrong model is unresolvable",
			gpuNode:  gpuNode(node, 80),
			pod:      gpuPod("p", 1, "").Annotation(kv1.AnnotationGPUModel, "NVIDIA-A100").Obj(),
			wantCode: fwk.UnschedulableAndUnresolvable,
			wantMsg:  "node has too few GPUs (pod needs 1 NVIDIA-A100 whole GPUs)",
		},
		{
			name:    "model matches in label form",
			gpuNode: gpuNode(node, 80),
			pod:     gpuPod("p", 1, "").Annotation(kv1.AnnotationGPUModel, "nvidia-h100-80gb-hbm3").Obj(),
		},
		{
			name:     "whole GPU taken is only full now",
			gpuNode:  gpuNode(node, 80),
			pods:     []*v1.Pod{on(gpuPod("a", 1, ""), node, 0)},
			pod:      gpuPod("p", 1, "10Gi").Obj(),
			wantCode: fwk.Unschedulable,
			wantMsg:  "node has too few free GPUs (pod needs 1 with 10Gi each)",
		},
		{
			name: "fragmentation: enough VRAM in total but not on one GPU",
			gpuNode: func() *kv1.GPUNode {
				gn := gpuNode(node, 80, 80)
				gn.Spec.SlotsPerGPU = ptr.To[int32](4)
				return gn
			}(),
			pods:     []*v1.Pod{on(gpuPod("a", 1, "50Gi"), node, 0), on(gpuPod("b", 1, "50Gi"), node, 1)},
			pod:      gpuPod("p", 1, "40Gi").Obj(),
			wantCode: fwk.Unschedulable,
		},
		{
			name: "shared GPU with room fits",
			gpuNode: func() *kv1.GPUNode {
				gn := gpuNode(node, 80)
				gn.Spec.SlotsPerGPU = ptr.To[int32](4)
				return gn
			}(),
			pods: []*v1.Pod{on(gpuPod("a", 1, "50Gi"), node, 0)},
			pod:  gpuPod("p", 1, "30Gi").Obj(),
		},
		{
			name:     "slots exhausted although VRAM is free",
			gpuNode:  gpuNode(node, 80),
			pods:     []*v1.Pod{on(gpuPod("a", 1, "10Gi"), node, 0)},
			pod:      gpuPod("p", 1, "10Gi").Obj(),
			wantCode: fwk.Unschedulable,
		},
		{
			name: "suspended pod holds a slot but no VRAM",
			gpuNode: func() *kv1.GPUNode {
				gn := gpuNode(node, 80)
				gn.Spec.SlotsPerGPU = ptr.To[int32](2)
				return gn
			}(),
			pods: []*v1.Pod{on(gpuPod("a", 1, "").Annotation(kv1.AnnotationState, string(kv1.PodSuspended)), node, 0)},
			pod:  gpuPod("p", 1, "").Obj(),
		},
		{
			name: "suspending pod still holds its VRAM",
			gpuNode: func() *kv1.GPUNode {
				gn := gpuNode(node, 80)
				gn.Spec.SlotsPerGPU = ptr.To[int32](2)
				return gn
			}(),
			pods:     []*v1.Pod{on(gpuPod("a", 1, "").Annotation(kv1.AnnotationState, string(kv1.PodSuspending)), node, 0)},
			pod:      gpuPod("p", 1, "").Obj(),
			wantCode: fwk.Unschedulable,
		},
		{
			name: "multi-GPU pod needs distinct GPUs with room",
			gpuNode: func() *kv1.GPUNode {
				gn := gpuNode(node, 80, 80, 80)
				gn.Spec.SlotsPerGPU = ptr.To[int32](4)
				return gn
			}(),
			pods:     []*v1.Pod{on(gpuPod("a", 2, "60Gi"), node, 0, 1)},
			pod:      gpuPod("p", 2, "30Gi").Obj(),
			wantCode: fwk.Unschedulable,
		},
		{
			name: "memory of foreign processes counts",
			gpuNode: func() *kv1.GPUNode {
				gn := gpuNode(node, 80)
				gn.Status.GPUs[0].MemoryUsedBytes = 60 * gi
				return gn
			}(),
			pod:      gpuPod("p", 1, "30Gi").Obj(),
			wantCode: fwk.Unschedulable,
		},
		{
			name: "memory the agent attributes to our pods is not counted twice",
			gpuNode: func() *kv1.GPUNode {
				gn := gpuNode(node, 80)
				gn.Spec.SlotsPerGPU = ptr.To[int32](2)
				gn.Status.GPUs[0].MemoryUsedBytes = 40 * gi
				gn.Status.GPUs[0].Pods = []kv1.PodGPUUsage{{Namespace: "ns", Name: "a", Residency: kv1.Resident, Bytes: 40 * gi}}
				return gn
			}(),
			pods: []*v1.Pod{on(gpuPod("a", 1, "40Gi"), node, 0)},
			pod:  gpuPod("p", 1, "40Gi").Obj(),
		},
		{
			// The framework adds nominated higher-priority pods to the node while it filters
			// for others: the VRAM a suspension freed for them is not for the taking.
			name:     "a nominated preemptor holds the room it will take",
			gpuNode:  gpuNode(node, 80),
			pods:     []*v1.Pod{gpuPod("preemptor", 1, "60Gi").Obj()},
			pod:      gpuPod("p", 1, "40Gi").Obj(),
			wantCode: fwk.Unschedulable,
		},
		{
			name:    "completed pods hold nothing",
			gpuNode: gpuNode(node, 80),
			pods:    []*v1.Pod{on(gpuPod("a", 1, "").Phase(v1.PodSucceeded), node, 0)},
			pod:     gpuPod("p", 1, "").Obj(),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var gns []*kv1.GPUNode
			if tt.gpuNode != nil {
				gns = append(gns, tt.gpuNode)
			}
			pl := newTestPlugin(t, config.MostAllocated, gns...)
			state, status := preFilter(t, pl, tt.pod)
			if !status.IsSuccess() {
				t.Fatalf("PreFilter: %v", status)
			}
			got := pl.Filter(t.Context(), state, tt.pod, nodeInfo(node, tt.pods...))
			if got.Code() != tt.wantCode {
				t.Fatalf("code = %v (%q), want %v", got.Code(), got.Message(), tt.wantCode)
			}
			if tt.wantMsg != "" && got.Message() != tt.wantMsg {
				t.Errorf("message = %q, want %q", got.Message(), tt.wantMsg)
			}
		})
	}
}

func TestScore(t *testing.T) {
	// Node "full" has one GPU half used, node "empty" has none used.
	full := gpuNode("full", 80, 80)
	full.Spec.SlotsPerGPU = ptr.To[int32](4)
	empty := gpuNode("empty", 80, 80)
	empty.Spec.SlotsPerGPU = ptr.To[int32](4)
	fullPods := []*v1.Pod{on(gpuPod("a", 1, "40Gi"), "full", 0)}
	pod := gpuPod("p", 1, "20Gi").Obj()

	tests := []struct {
		strategy  config.ScoringStrategyType
		wantFull  int64
		wantEmpty int64
	}{
		// (40+20)/80 on the half used GPU, 20/80 on an empty one.
		{strategy: config.MostAllocated, wantFull: 75, wantEmpty: 25},
		{strategy: config.LeastAllocated, wantFull: 75, wantEmpty: 75},
	}
	for _, tt := range tests {
		t.Run(string(tt.strategy), func(t *testing.T) {
			pl := newTestPlugin(t, tt.strategy, full, empty)
			state, _ := preFilter(t, pl, pod)
			gotFull, s1 := pl.Score(t.Context(), state, pod, nodeInfo("full", fullPods...))
			gotEmpty, s2 := pl.Score(t.Context(), state, pod, nodeInfo("empty"))
			if !s1.IsSuccess() || !s2.IsSuccess() {
				t.Fatalf("Score: %v, %v", s1, s2)
			}
			if gotFull != tt.wantFull || gotEmpty != tt.wantEmpty {
				t.Errorf("scores full=%d empty=%d, want full=%d empty=%d", gotFull, gotEmpty, tt.wantFull, tt.wantEmpty)
			}
		})
	}
}

// Spread takes the emptiest GPU on a node (an empty node scores 75 with LeastAllocated, the
// half-full one too: on it the pod goes to its empty GPU).
func TestChooseStrategies(t *testing.T) {
	gn := gpuNode("n", 80, 80, 80)
	gn.Spec.SlotsPerGPU = ptr.To[int32](4)
	pods := []*v1.Pod{on(gpuPod("a", 1, "40Gi"), "n", 0), on(gpuPod("b", 1, "20Gi"), "n", 2)}
	d := gpupod.Demand{Count: 1, Bytes: 20 * gi}
	tests := []struct {
		strategy config.ScoringStrategyType
		want     []string
	}{
		{strategy: config.MostAllocated, want: []string{gpuID("n", 0)}},
		{strategy: config.LeastAllocated, want: []string{gpuID("n", 1)}},
	}
	for _, tt := range tests {
		t.Run(string(tt.strategy), func(t *testing.T) {
			got := gpupod.NewAccounting(gn, pods).Choose(d, tt.strategy)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("chosen GPUs (-want +got):\n%s", diff)
			}
		})
	}
}

// fakeHandle serves a snapshot to Reserve.
type fakeHandle struct {
	framework.Handle
	snapshot *schedcache.Snapshot
}

func (h *fakeHandle) SnapshotSharedLister() framework.SharedLister { return h.snapshot }

// Reserve must record the chosen GPUs so that the next cycle, which sees the pod assumed on the
// node but without its annotation, does not hand out the same GPU; Unreserve must undo it.
func TestReserveAcrossCycles(t *testing.T) {
	gn := gpuNode("n", 80, 80)
	node := st.MakeNode().Name("n").Obj()
	pl := newTestPlugin(t, config.MostAllocated, gn)
	var bindings []*v1.Binding
	pl.bind = func(_ context.Context, b *v1.Binding) error {
		bindings = append(bindings, b)
		return nil
	}

	first := gpuPod("first", 1, "").Obj()
	pl.handle = &fakeHandle{snapshot: schedcache.NewSnapshot(nil, []*v1.Node{node})}
	state, _ := preFilter(t, pl, first)
	if s := pl.Reserve(t.Context(), state, first, "n"); !s.IsSuccess() {
		t.Fatalf("Reserve first: %v", s)
	}

	// Next cycle: the first pod is assumed on the node, without an annotation yet.
	assumed := first.DeepCopy()
	assumed.Spec.NodeName = "n"
	pl.handle = &fakeHandle{snapshot: schedcache.NewSnapshot([]*v1.Pod{assumed}, []*v1.Node{node})}
	second := gpuPod("second", 1, "").Obj()
	state2, _ := preFilter(t, pl, second)
	if s := pl.Reserve(t.Context(), state2, second, "n"); !s.IsSuccess() {
		t.Fatalf("Reserve second: %v", s)
	}
	_, r1, _ := pl.ledger.Placed(first.UID)
	_, r2, _ := pl.ledger.Placed(second.UID)
	if diff := cmp.Diff([]string{gpuID("n", 0)}, r1); diff != "" {
		t.Errorf("first pod's GPUs (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{gpuID("n", 1)}, r2); diff != "" {
		t.Errorf("second pod's GPUs (-want +got):\n%s", diff)
	}

	// A third pod does not fit while both are reserved...
	third := gpuPod("third", 1, "").Obj()
	assumed2 := second.DeepCopy()
	assumed2.Spec.NodeName = "n"
	pl.handle = &fakeHandle{snapshot: schedcache.NewSnapshot([]*v1.Pod{assumed, assumed2}, []*v1.Node{node})}
	state3, _ := preFilter(t, pl, third)
	if s := pl.Reserve(t.Context(), state3, third, "n"); s.Code() != fwk.Unschedulable {
		t.Fatalf("Reserve third with both GPUs reserved = %v, want Unschedulable", s)
	}
	// ...and fits once the second pod is unreserved and gone from the node.
	pl.Unreserve(t.Context(), state2, second, "n")
	if pl.ledger.Len() != 1 {
		t.Fatalf("reservations after Unreserve = %d, want 1", pl.ledger.Len())
	}
	pl.handle = &fakeHandle{snapshot: schedcache.NewSnapshot([]*v1.Pod{assumed}, []*v1.Node{node})}
	if s := pl.Reserve(t.Context(), state3, third, "n"); !s.IsSuccess() {
		t.Fatalf("Reserve third after Unreserve: %v", s)
	}

	// Bind binds with the reservation in the Binding's annotations, which the API server copies
	// onto the pod.
	if s := pl.Bind(t.Context(), state, first, "n"); !s.IsSuccess() {
		t.Fatalf("Bind: %v", s)
	}
	want := []*v1.Binding{{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "first", UID: "first", Annotations: map[string]string{kv1.AnnotationGPUs: "GPU-n-0"}},
		Target:     v1.ObjectReference{Kind: "Node", Name: "n"},
	}}
	if diff := cmp.Diff(want, bindings); diff != "" {
		t.Errorf("bindings (-want +got):\n%s", diff)
	}
	// A pod this plugin reserved nothing for is left to DefaultBinder.
	if s := pl.Bind(t.Context(), state, gpuPod("unknown", 1, "").Obj(), "n"); s.Code() != fwk.Skip {
		t.Errorf("Bind of a pod without reservation = %v, want Skip", s)
	}
}

// A pod that asks for no GPU passes through every extension point of the plugin: the framework
// skips Filter and Score for it (PreFilter and PreScore say Skip) but always runs Reserve, and
// DefaultBinder binds it.
func TestPodWithoutGPU(t *testing.T) {
	node := st.MakeNode().Name("n").Obj()
	pl := newTestPlugin(t, config.MostAllocated, gpuNode("n", 80))
	pl.handle = &fakeHandle{snapshot: schedcache.NewSnapshot(nil, []*v1.Node{node})}
	pod := st.MakePod().Namespace("ns").Name("plain").UID("plain").Obj()
	state := framework.NewCycleState()
	if _, s := pl.PreFilter(t.Context(), state, pod, nil); s.Code() != fwk.Skip {
		t.Fatalf("PreFilter = %v, want Skip", s)
	}
	if s := pl.PreScore(t.Context(), state, pod, nil); s.Code() != fwk.Skip {
		t.Errorf("PreScore = %v, want Skip", s)
	}
	if s := pl.Reserve(t.Context(), state, pod, "n"); !s.IsSuccess() {
		t.Errorf("Reserve = %v, want success", s)
	}
	if pl.ledger.Len() != 0 {
		t.Errorf("reservations = %d, want 0", pl.ledger.Len())
	}
	if s := pl.Bind(t.Context(), state, pod, "n"); s.Code() != fwk.Skip {
		t.Errorf("Bind = %v, want Skip", s)
	}

	gpu := gpuPod("gpu", 1, "").Obj()
	gpuState, _ := preFilter(t, pl, gpu)
	if s := pl.PreScore(t.Context(), gpuState, gpu, nil); !s.IsSuccess() {
		t.Errorf("PreScore of a GPU pod = %v, want success", s)
	}
}

func TestBindFailure(t *testing.T) {
	pl := newTestPlugin(t, config.MostAllocated)
	pl.bind = func(context.Context, *v1.Binding) error { return fmt.Errorf("apiserver down") }
	pod := gpuPod("p", 1, "").Obj()
	pl.ledger.Reserve(gpupod.OwnerScheduler, placed(pod, "n", []string{"GPU-1"}), 0)
	s := pl.Bind(t.Context(), framework.NewCycleState(), pod, "n")
	if s.Code() != fwk.Error || s.AsError() == nil {
		t.Fatalf("Bind with a failing API call = %v, want Error", s)
	}
	if _, _, ok := pl.ledger.Placed(pod.UID); !ok {
		t.Error("a failed Bind must keep the reservation until Unreserve")
	}
}

// The controllers share the plugin's ledger: a suspended pod the resume controller has just
// given its GPU back, and a replacement the migration controller has just created, take their
// memory in Filter before the snapshot shows either.
func TestFilterCountsControllersReservations(t *testing.T) {
	gn := gpuNode("n", 80)
	gn.Spec.SlotsPerGPU = ptr.To[int32](4)
	pl := newTestPlugin(t, config.MostAllocated, gn)
	suspended := on(gpuPod("back", 1, "50Gi").Annotation(kv1.AnnotationState, string(kv1.PodSuspended)), "n", 0)
	pod := gpuPod("new", 1, "50Gi").Obj()
	state, _ := preFilter(t, pl, pod)
	filter := func() *fwk.Status { return pl.Filter(t.Context(), state, pod, nodeInfo("n", suspended)) }
	if s := filter(); !s.IsSuccess() {
		t.Fatalf("Filter with the GPU's pod suspended = %v, want success", s)
	}

	resuming := suspended.DeepCopy()
	resuming.Annotations[kv1.AnnotationState] = string(kv1.PodResuming)
	pl.ledger.Reserve(gpupod.OwnerResume, resuming, time.Minute)
	if s := filter(); s.Code() != fwk.Unschedulable {
		t.Errorf("Filter while the resume controller resumes the pod = %v, want Unschedulable", s)
	}
	pl.ledger.Release(resuming.UID)

	replacement := on(gpuPod("back-moved", 1, "50Gi").Annotation(kv1.AnnotationState, string(kv1.PodRestoring)), "n", 0)
	pl.ledger.Reserve(gpupod.OwnerMigration, replacement, time.Minute)
	if s := filter(); s.Code() != fwk.Unschedulable {
		t.Errorf("Filter while the migration controller restores a replacement = %v, want Unschedulable", s)
	}
}
