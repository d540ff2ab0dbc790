package gpupod

import (
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	resourcehelper "k8s.io/component-helpers/resource"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

func TestGPURequest(t *testing.T) {
	always := v1.ContainerRestartPolicyAlways
	ctr := func(limit, request string) v1.Container {
		c := v1.Container{Name: "c"}
		if limit != "" {
			c.Resources.Limits = v1.ResourceList{kv1.ResourceGPU: resource.MustParse(limit)}
		}
		if request != "" {
			c.Resources.Requests = v1.ResourceList{kv1.ResourceGPU: resource.MustParse(request)}
		}
		return c
	}
	sidecar := func(limit string) v1.Container {
		c := ctr(limit, "")
		c.RestartPolicy = &always
		return c
	}
	tests := []struct {
		name       string
		init, main []v1.Container
		want       int64
	}{
		{name: "none", main: []v1.Container{ctr("", "")}, want: 0},
		{name: "limits only (not defaulted by an API server)", main: []v1.Container{ctr("1", ""), ctr("2", "")}, want: 3},
		{name: "requests", main: []v1.Container{ctr("", "2")}, want: 2},
		{name: "init container at its peak", init: []v1.Container{ctr("4", "")}, main: []v1.Container{ctr("1", "")}, want: 4},
		{name: "sidecar beside the app", init: []v1.Container{sidecar("1")}, main: []v1.Container{ctr("1", "")}, want: 2},
		// A sidecar started before an init container runs beside it: 1 + 2, more than the app
		// phase (1 + 1). Summing sidecars with the app only said 2.
		{name: "sidecar beside a later init container", init: []v1.Container{sidecar("1"), ctr("2", "")}, main: []v1.Container{ctr("1", "")}, want: 3},
		{name: "containers summed, request before limit", main: []v1.Container{ctr("2", "1"), ctr("1", ""), ctr("", "")}, want: 2},
		// Fractions are summed before rounding up, as PodRequests does: 1, not 2.
		{name: "fractions summed", main: []v1.Container{ctr("500m", ""), ctr("", "500m")}, want: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1.PodSpec{InitContainers: tt.init, Containers: tt.main}}
			orig := pod.DeepCopy()
			if got, err := GPURequest(pod); got != tt.want || err != nil {
				t.Errorf("GPURequest = %d, %v, want %d", got, err, tt.want)
			}
			// The sum without init containers is a fast path: it must count what the
			// definition the scheduler and the kubelet use counts.
			reqs := resourcehelper.PodRequests(withDefaultedRequests(pod), resourcehelper.PodResourcesOptions{ExcludeOverhead: true, SkipPodLevelResources: true})
			if q := reqs[kv1.ResourceGPU]; q.Value() != tt.want {
				t.Errorf("PodRequests counts %d, the test wants %d", q.Value(), tt.want)
			}
			if pod.Spec.Containers != nil && orig.Spec.Containers[0].Resources.Requests == nil && pod.Spec.Containers[0].Resources.Requests != nil {
				t.Error("GPURequest changed the pod")
			}
		})
	}
}

func TestGPURequestRefused(t *testing.T) {
	// 2^64+1 GPUs wrapped to 1 GPU in int64 before the bound; -1 GPU was a demand of -1;
	// comparing 1e9808000 with the bound exactly took 5 s.
	for _, n := range []string{"1025", "10000000000000000000", "18446744073709551617", "-1", "-500m", "1E9808000", "1e-30"} {
		pod := &v1.Pod{Spec: v1.PodSpec{Containers: []v1.Container{{Name: "c", Resources: v1.ResourceRequirements{
			Limits: v1.ResourceList{kv1.ResourceGPU: resource.MustParse(n)}}}}}}
		withInit := pod.DeepCopy()
		withInit.Spec.InitContainers = []v1.Container{{Name: "i"}}
		if got, err := GPURequest(withInit); err == nil {
			t.Errorf("GPURequest(%s GPUs, with an init container) = %d without an error", n, got)
		}
		if got, err := GPURequest(pod); err == nil || !strings.Contains(err.Error(), "resource request kybernate.io/gpu") {
			t.Errorf("GPURequest(%s GPUs) = %d, %v, want an error naming the resource", n, got, err)
		}
		if d, err := PodDemand(pod); err == nil {
			t.Errorf("PodDemand(%s GPUs) = %+v without an error", n, d)
		}
	}
}

func TestParseQuantityExponent(t *testing.T) {
	for s, ok := range map[string]bool{
		"40Gi": true, " 5E ": true, "5Ei": true, "1e9": true, "1.5e-3": true, "1e+64": true,
		"1e65": false, "1e-999999999": false, "1e99999999999999999999": false,
	} {
		_, err := ParseQuantity(s)
		if (err == nil) != ok {
			t.Errorf("ParseQuantity(%q) error = %v, want ok=%v", s, err, ok)
		}
	}
}

func BenchmarkPodDemand(b *testing.B) {
	pod := &v1.Pod{Spec: v1.PodSpec{Containers: []v1.Container{{Name: "a", Resources: v1.ResourceRequirements{
		Requests: v1.ResourceList{v1.ResourceCPU: resource.MustParse("100m"), kv1.ResourceGPU: resource.MustParse("1")},
		Limits:   v1.ResourceList{kv1.ResourceGPU: resource.MustParse("1")},
	}}}}}
	pod.Annotations = map[string]string{kv1.AnnotationGPUMemory: "20Gi", kv1.AnnotationGPUs: "GPU-0c0fc6f8-4b6e-1c2d-9e3f-5a6b7c8d9e0f"}
	b.ReportAllocs()
	for b.Loop() {
		if d, err := PodDemand(pod); err != nil || d.Count != 1 {
			b.Fatal(d, err)
		}
		if len(AssignedGPUs(pod)) != 1 {
			b.Fatal("no GPUs")
		}
	}
}
