package skeleton

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

func TestGPUChange(t *testing.T) {
	base := func() *v1.Pod {
		return &v1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "p", Annotations: map[string]string{kv1.AnnotationState: "Running", kv1.AnnotationGPUs: "GPU-0"}},
			Spec:       v1.PodSpec{NodeName: "n"},
			Status:     v1.PodStatus{Phase: v1.PodRunning},
		}
	}
	now := metav1.Now()
	tests := []struct {
		name   string
		mutate func(*v1.Pod)
		want   bool
	}{
		{name: "unrelated label", mutate: func(p *v1.Pod) { p.Labels = map[string]string{"a": "b"} }},
		{name: "progress annotation", mutate: func(p *v1.Pod) { p.Annotations[kv1.AnnotationSimulatedProgress] = "3" }},
		{name: "node", mutate: func(p *v1.Pod) { p.Spec.NodeName = "m" }, want: true},
		{name: "nominated node", mutate: func(p *v1.Pod) { p.Status.NominatedNodeName = "m" }, want: true},
		{name: "phase", mutate: func(p *v1.Pod) { p.Status.Phase = v1.PodSucceeded }, want: true},
		{name: "state", mutate: func(p *v1.Pod) { p.Annotations[kv1.AnnotationState] = "Suspended" }, want: true},
		{name: "gpus", mutate: func(p *v1.Pod) { p.Annotations[kv1.AnnotationGPUs] = "GPU-1" }, want: true},
		{name: "deletion", mutate: func(p *v1.Pod) { p.DeletionTimestamp = &now }, want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := base()
			tt.mutate(p)
			if got := GPUChange(base(), p); got != tt.want {
				t.Errorf("GPUChange = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestPodAndNode(t *testing.T) {
	p := &v1.Pod{Status: v1.PodStatus{NominatedNodeName: "n"}}
	if got, ok := Pod(cache.DeletedFinalStateUnknown{Obj: p}); !ok || got != p {
		t.Errorf("Pod(tombstone) = %v, %v", got, ok)
	}
	if _, ok := Pod("not a pod"); ok {
		t.Error("Pod(string) ok")
	}
	if got := Node(p); got != "n" {
		t.Errorf("Node of a nominated pod = %q, want n", got)
	}
	p.Spec.NodeName = "m"
	if got := Node(p); got != "m" {
		t.Errorf("Node of a bound pod = %q, want m", got)
	}
}
