package gpupod

import (
	"errors"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// The pod annotations users write: the decoders never panic, and errors name the annotation
// and the value. Seeds in testdata/fuzz/FuzzPodAnnotations.
func FuzzPodAnnotations(f *testing.F) {
	f.Add("40Gi", "NVIDIA H100", "10m", "ns/name/uid")
	f.Fuzz(func(t *testing.T, memory, model, minRuntime, migratedFrom string) {
		pod := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{
			kv1.AnnotationGPUMemory: memory, kv1.AnnotationGPUModel: model, kv1.AnnotationMinRuntime: minRuntime,
		}}}
		check := func(field, value string, err error) {
			var fe *FieldError
			if err != nil && (!errors.As(err, &fe) || fe.Field != field || fe.Value != value) {
				t.Fatalf("error %v does not name %s=%q", err, field, value)
			}
		}
		b, err := GPUMemory(pod)
		check(kv1.AnnotationGPUMemory, memory, err)
		if err == nil && b <= 0 {
			t.Fatalf("GPUMemory(%q) = %d without an error", memory, b)
		}
		_, err = GPUModel(pod)
		check(kv1.AnnotationGPUModel, model, err)
		d, _, err := MinRuntime(pod)
		check(kv1.AnnotationMinRuntime, minRuntime, err)
		if err == nil && d < 0 {
			t.Fatalf("MinRuntime(%q) = %v", minRuntime, d)
		}
		_, _, _, err = ParseMigratedFrom(migratedFrom)
		check(kv1.AnnotationMigratedFrom, migratedFrom, err)
	})
}
