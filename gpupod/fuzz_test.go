package gpupod

import (
	"errors"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// Annotations are written by users and by any client allowed to patch pods: the codecs of
// gpupod decode any value into a result or a *FieldError naming the annotation, never panic.

// kybernate.io/gpus: what decodes is a list of distinct GPU-prefixed items without blanks that
// encodes and decodes back to itself.
func FuzzParseGPUs(f *testing.F) {
	f.Add("GPU-aaaaaaaa-0000-0000-0000-000000000001")
	f.Add(" GPU-a , GPU-b ,")
	f.Add("GPU-a,GPU-a")
	f.Add(",,")
	f.Fuzz(func(t *testing.T, value string) {
		gpus, err := ParseGPUs(value)
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != kv1.AnnotationGPUs {
				t.Errorf("ParseGPUs(%q): error %v is not a FieldError for %s", value, err, kv1.AnnotationGPUs)
			}
			return
		}
		if len(gpus) == 0 {
			t.Fatalf("ParseGPUs(%q) = no GPUs and no error", value)
		}
		for i, g := range gpus {
			if !strings.HasPrefix(g, uuidPrefix) || strings.ContainsAny(g, ", \t\n") || slices.Contains(gpus[:i], g) {
				t.Errorf("ParseGPUs(%q) accepted item %q of %q", value, g, gpus)
			}
		}
		again, err := ParseGPUs(FormatGPUs(gpus))
		if err != nil || !slices.Equal(again, gpus) {
			t.Errorf("ParseGPUs(FormatGPUs(%q)) = %q, %v", gpus, again, err)
		}
	})
}

// kybernate.io/gpu, gpu-memory and gpu-model: a demand that decodes asks for a positive
// count's worth of non-negative memory.
func FuzzPodDemand(f *testing.F) {
	f.Add("1", "40Gi", "NVIDIA H100 80GB HBM3")
	f.Add("2", "-1", "")
	f.Add("0", "1e400", " ")
	f.Add("1.5", "0x10", "\x00")
	f.Fuzz(func(t *testing.T, count, memory, model string) {
		if slowToParse(count) {
			return
		}
		q, err := resource.ParseQuantity(count)
		if err != nil {
			return
		}
		pod := &v1.Pod{
			ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{kv1.AnnotationGPUMemory: memory, kv1.AnnotationGPUModel: model}},
			Spec: v1.PodSpec{Containers: []v1.Container{{Name: "c", Resources: v1.ResourceRequirements{
				Limits: v1.ResourceList{kv1.ResourceGPU: q}}}}},
		}
		d, err := PodDemand(pod)
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Errorf("PodDemand: error %v is not a FieldError", err)
			}
			return
		}
		if d.Count < 0 || d.Bytes < 0 || (d.Count == 0 && d != (Demand{})) {
			t.Errorf("PodDemand(gpu %q, memory %q, model %q) = %+v", count, memory, model, d)
		}
		if d.Count > 0 && d.On(80<<30) <= 0 {
			t.Errorf("demand %+v takes %d bytes of an 80 GiB GPU", d, d.On(80<<30))
		}
	})
}

// slowToParse reports a quantity with an exponent on which resource.ParseQuantity itself takes
// seconds to minutes (e-9808000, E81111111100): the API server parses a pod's resources,
// Kybernate gets them parsed. Exponents up to 9,999,999 parse at once and stay in the corpus.
func slowToParse(s string) bool {
	i := strings.LastIndexAny(s, "eE")
	if i <= 0 {
		return false
	}
	exp := strings.TrimPrefix(s[i+1:], "+")
	if strings.HasPrefix(exp, "-") {
		return len(exp) > 4
	}
	return len(exp) > 7
}

// kybernate.io/min-runtime: a decoded duration is not negative.
func FuzzMinRuntime(f *testing.F) {
	f.Add("10m")
	f.Add("-1s")
	f.Add("9223372036854775807ns")
	f.Add("1e3h")
	f.Fuzz(func(t *testing.T, value string) {
		pod := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{kv1.AnnotationMinRuntime: value}}}
		d, set, err := MinRuntime(pod)
		if !set {
			t.Fatalf("MinRuntime(%q): not set", value)
		}
		if err == nil && d < 0 {
			t.Errorf("MinRuntime(%q) = %s", value, d)
		}
	})
}

// kybernate.io/migrated-from: what decodes encodes back to the same value.
func FuzzParseMigratedFrom(f *testing.F) {
	f.Add("ml/train/5d0f-uid")
	f.Add("ml//uid")
	f.Add("a/b/c/d")
	f.Fuzz(func(t *testing.T, value string) {
		ns, name, uid, err := ParseMigratedFrom(value)
		if err != nil {
			return
		}
		pod := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: uid}}
		if got := FormatMigratedFrom(pod); got != value {
			t.Errorf("ParseMigratedFrom(%q) encodes back as %q", value, got)
		}
	})
}

// kybernate.io/state: whatever a pod's annotation holds, SetState writes only transitions of
// the state machine, and Projected reaches the state it was asked for or fails.
func FuzzStateMachine(f *testing.F) {
	f.Add("", "Suspending")
	f.Add("Suspended", "Running")
	f.Add("Bogus", "Running")
	f.Add("Checkpointed", "Restoring")
	f.Fuzz(func(t *testing.T, from, to string) {
		annotations := map[string]string{kv1.AnnotationState: from}
		err := SetState(annotations, kv1.PodGPUState(from), kv1.PodGPUState(to))
		switch {
		case err == nil && !Allowed(kv1.PodGPUState(from), kv1.PodGPUState(to)):
			t.Errorf("SetState wrote %q -> %q, which the state machine does not allow", from, to)
		case err == nil && annotations[kv1.AnnotationState] != to:
			t.Errorf("SetState(%q -> %q) wrote %q", from, to, annotations[kv1.AnnotationState])
		case err != nil && annotations[kv1.AnnotationState] != from:
			t.Errorf("SetState(%q -> %q) failed but changed the state to %q", from, to, annotations[kv1.AnnotationState])
		}
		pod := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{kv1.AnnotationState: from}}}
		p, err := Projected(pod, kv1.PodGPUState(to))
		if err == nil && StateOf(p) != kv1.PodGPUState(to) {
			t.Errorf("Projected(%q, %q) is in state %q", from, to, StateOf(p))
		}
		if pod.Annotations[kv1.AnnotationState] != from {
			t.Errorf("Projected changed the pod it was given")
		}
	})
}
