package util

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestMakePod(t *testing.T) {
	priority := int32(10)
	runtimeClass := RuntimeClassName
	want := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:      "p",
			Namespace: "ns",
			Annotations: map[string]string{
				AnnotationGPUMemory:     "40Gi",
				AnnotationCompleteAfter: "30s",
			},
		},
		Spec: v1.PodSpec{
			SchedulerName:    SchedulerName,
			RuntimeClassName: &runtimeClass,
			Priority:         &priority,
			Containers: []v1.Container{{
				Name:  "main",
				Image: DefaultImage,
				Resources: v1.ResourceRequirements{
					Limits:   v1.ResourceList{ResourceGPU: resource.MustParse("1")},
					Requests: v1.ResourceList{v1.ResourceCPU: resource.MustParse("100m")},
				},
			}},
		},
	}
	got := MakePod().Name("p").Namespace("ns").Kybernate().Priority(10).GPU(1).GPUMemory("40Gi").
		CompleteAfter(30 * time.Second).Req(map[v1.ResourceName]string{v1.ResourceCPU: "100m"}).Obj()
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("MakePod (-want +got):\n%s", diff)
	}
}

func TestObjReturnsCopies(t *testing.T) {
	w := MakePod().Name("a").Label("k", "v")
	first := w.Obj()
	w.Label("k", "changed")
	if got := first.Labels["k"]; got != "v" {
		t.Errorf("pod from an earlier Obj changed with the wrapper: label k = %q, want v", got)
	}

	n := MakeNode().Name("n")
	node := n.Obj()
	n.GPU(4)
	if _, ok := node.Status.Capacity[ResourceGPU]; ok {
		t.Errorf("node from an earlier Obj changed with the wrapper: %v", node.Status.Capacity)
	}
}

func TestMakeNode(t *testing.T) {
	node := MakeNode().Name("kwok-gpu-9").GPUModel("NVIDIA-H200").GPUCount(2).GPU(8).Obj()
	if got := node.Annotations[AnnotationKwokNode]; got != "fake" {
		t.Errorf("annotation %s = %q, want fake: kwok would not run this node", AnnotationKwokNode, got)
	}
	wantLabels := map[string]string{
		LabelNodeType:    "kwok",
		LabelGPUModel:    "NVIDIA-H200",
		LabelGPUCount:    "2",
		v1.LabelHostname: "kwok-gpu-9",
	}
	if diff := cmp.Diff(wantLabels, node.Labels); diff != "" {
		t.Errorf("labels (-want +got):\n%s", diff)
	}
	for _, list := range []v1.ResourceList{node.Status.Capacity, node.Status.Allocatable} {
		if got := list[ResourceGPU]; got.Cmp(resource.MustParse("8")) != 0 {
			t.Errorf("%s = %s, want 8", ResourceGPU, got.String())
		}
	}
	if len(node.Spec.Taints) != 0 {
		t.Errorf("taints = %v, want none", node.Spec.Taints)
	}
}
