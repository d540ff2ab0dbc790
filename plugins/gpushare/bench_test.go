package gpushare

import (
	"fmt"
	"testing"

	v1 "k8s.io/api/core/v1"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	st "k8s.io/kubernetes/pkg/scheduler/testing"

	"github.com/kybernate/kybernate/apis/config"
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

func mustPodInfo(t *testing.T, pod *v1.Pod) fwk.PodInfo {
	t.Helper()
	pi, err := framework.NewPodInfo(pod)
	if err != nil {
		t.Fatal(err)
	}
	return pi
}
