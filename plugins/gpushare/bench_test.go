package gpushare

import (
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	st "k8s.io/kubernetes/pkg/scheduler/testing"

	"github.com/kybernate/kybernate/apis/config"
	listers "github.com/kybernate/kybernate/apis/kybernate/client/listers/kybernate/v1alpha1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// benchNode is a node of the scheduler benchmark (test/bench/scheduler) half way through:
// 8 GPUs of 80 GiB with two slots each, one 20Gi pod on each GPU, and a few pods without GPUs.
func benchNode(b *testing.B) (*GPUShare, *framework.CycleState, *v1.Pod, *framework.NodeInfo) {
	b.Helper()
	gn := gpuNode("n", 80, 80, 80, 80, 80, 80, 80, 80)
	gn.Spec.SlotsPerGPU = new(int32)
	*gn.Spec.SlotsPerGPU = 2
	pl := newTestPlugin(b, config.MostAllocated, gn)
	var pods []*v1.Pod
	for i := range 8 {
		pods = append(pods, on(gpuPod(fmt.Sprintf("g%d", i), 1, "20Gi"), "n", i))
	}
	for i := range 4 {
		pods = append(pods, st.MakePod().Namespace("ns").Name(fmt.Sprintf("c%d", i)).UID(fmt.Sprintf("c%d", i)).
			Req(map[v1.ResourceName]string{v1.ResourceCPU: "100m"}).Annotation(kv1.AnnotationGPUMemory, "20Gi").Node("n").Obj())
	}
	ni := framework.NewNodeInfo(pods...)
	ni.SetNode(st.MakeNode().Name("n").Obj())
	pod := gpuPod("new", 1, "20Gi").Obj()
	state := framework.NewCycleState()
	if _, s := pl.PreFilter(b.Context(), state, pod, nil); !s.IsSuccess() {
		b.Fatal(s)
	}
	return pl, state, pod, ni
}

// BenchmarkFilterScore is GPUShare's work on one node in one scheduling cycle.
func BenchmarkFilterScore(b *testing.B) {
	pl, state, pod, ni := benchNode(b)
	ctx := b.Context()
	b.ReportAllocs()
	for b.Loop() {
		if s := pl.Filter(ctx, state, pod, ni); !s.IsSuccess() {
			b.Fatal(s)
		}
		if _, s := pl.Score(ctx, state, pod, ni); !s.IsSuccess() {
			b.Fatal(s)
		}
	}
}

// BenchmarkFilterScoreNodeChanged is BenchmarkFilterScore on a node that changed since the last
// cycle: the accounting is computed afresh each time.
func BenchmarkFilterScoreNodeChanged(b *testing.B) {
	pl, state, pod, ni := benchNode(b)
	ctx := b.Context()
	b.ReportAllocs()
	for b.Loop() {
		pl.cache.forget("n")
		if s := pl.Filter(ctx, state, pod, ni); !s.IsSuccess() {
			b.Fatal(s)
		}
		if _, s := pl.Score(ctx, state, pod, ni); !s.IsSuccess() {
			b.Fatal(s)
		}
	}
}

// TestCachedAccountingFollowsChanges: an accounting reused across cycles is recomputed when the
// node's reservations, its pods or its GPUNode change, even on the same NodeInfo.
func TestCachedAccountingFollowsChanges(t *testing.T) {
	gn := gpuNode("n", 80)
	indexer := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	if err := indexer.Add(gn); err != nil {
		t.Fatal(err)
	}
	pl := NewWithLister(nil, &config.GPUShareArgs{ScoringStrategy: config.MostAllocated}, listers.NewGPUNodeLister(indexer))
	assumed := gpuPod("assumed", 1, "").Node("n").Obj() // bound, GPUs not written yet
	ni := nodeInfo("n", assumed)
	state, _ := preFilter(t, pl, gpuPod("new", 1, "40Gi").Obj())
	filter := func() fwk.Code { return pl.Filter(t.Context(), state, nil, ni).Code() }

	var got []fwk.Code
	got = append(got, filter())
	pl.reserved.reserve(assumed.UID, "n", []string{gpuID("n", 0)})
	got = append(got, filter())
	pl.reserved.release(assumed.UID)
	got = append(got, filter())
	// A pod the informer delivers (or a preemption dry run adds) changes the NodeInfo.
	other := on(gpuPod("other", 1, "60Gi"), "n", 0)
	ni.AddPodInfo(mustPodInfo(t, other))
	got = append(got, filter())
	if err := ni.RemovePod(klog.Background(), other); err != nil {
		t.Fatal(err)
	}
	got = append(got, filter())
	smaller := gpuNode("n", 20) // a new object, as the informer delivers it
	if err := indexer.Update(smaller); err != nil {
		t.Fatal(err)
	}
	got = append(got, filter())
	want := []fwk.Code{fwk.Success, fwk.Unschedulable, fwk.Success, fwk.Unschedulable, fwk.Success, fwk.UnschedulableAndUnresolvable}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Filter codes (-want +got):\n%s", diff)
	}
}

func mustPodInfo(t *testing.T, pod *v1.Pod) fwk.PodInfo {
	t.Helper()
	pi, err := framework.NewPodInfo(pod)
	if err != nil {
		t.Fatal(err)
	}
	return pi
}
