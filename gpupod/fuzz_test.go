package gpupod

import (
	"errors"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// kybernate.io/gpus comes from the API (anyone who may patch a pod) into the agent and the
// shim: whatever it holds, ParseGPUs returns UUIDs that round-trip, or an error naming the
// annotation. Seeds in testdata/fuzz/FuzzParseGPUs.
func FuzzParseGPUs(f *testing.F) {
	f.Add(gpu0 + "," + gpu1)
	f.Fuzz(func(t *testing.T, value string) {
		gpus, err := ParseGPUs(value)
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != kv1.AnnotationGPUs || fe.Value != value {
				t.Fatalf("error %v does not name the annotation and its value", err)
			}
			return
		}
		if len(gpus) == 0 {
			t.Fatal("no error and no GPUs")
		}
		again, err := ParseGPUs(FormatGPUs(gpus))
		if err != nil || FormatGPUs(again) != FormatGPUs(gpus) {
			t.Fatalf("%q does not round-trip: %v, %v", gpus, again, err)
		}
		for _, g := range gpus {
			if !strings.HasPrefix(g, uuidPrefix) || strings.ContainsAny(g, ", \t\n") {
				t.Fatalf("item %q of %q", g, value)
			}
		}
	})
}

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
