package v1alpha1

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"sigs.k8s.io/randfill"
)

// filler fills objects with random values that survive a JSON round trip (times at whole
// seconds, as metav1.Time serialises them).
func filler(seed uint64) *randfill.Filler {
	return randfill.NewWithSeed(int64(seed)).NilChance(0.2).NumElements(0, 3).Funcs(
		func(t *metav1.Time, c randfill.Continue) {
			*t = metav1.Unix(c.Int63n(1<<32), 0).Rfc3339Copy()
		},
		func(d *metav1.Duration, c randfill.Continue) {
			d.Duration = time.Duration(c.Int63n(1 << 40))
		},
		func(m *metav1.ObjectMeta, c randfill.Continue) {
			c.FillNoCustom(m)
			m.CreationTimestamp = metav1.Unix(c.Int63n(1<<32), 0).Rfc3339Copy()
			m.DeletionTimestamp, m.ManagedFields, m.OwnerReferences = nil, nil, nil
		},
		func(cond *metav1.Condition, c randfill.Continue) {
			c.FillNoCustom(cond)
			cond.LastTransitionTime = metav1.Unix(c.Int63n(1<<32), 0).Rfc3339Copy()
		},
	)
}

func newScheme(t *testing.T) *runtime.Scheme {
	t.Helper()
	s := runtime.NewScheme()
	if err := AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return s
}

// Every type must deep-copy into an equal, independent value and survive the codec.
func TestRoundTrip(t *testing.T) {
	codecs := serializer.NewCodecFactory(newScheme(t))
	codec := codecs.LegacyCodec(SchemeGroupVersion)
	for _, newObj := range []func() runtime.Object{
		func() runtime.Object { return &GPUNode{} },
		func() runtime.Object { return &GPUNodeList{} },
		func() runtime.Object { return &GPUCheckpoint{} },
		func() runtime.Object { return &GPUCheckpointList{} },
	} {
		for seed := uint64(0); seed < 50; seed++ {
			obj := newObj()
			filler(seed).Fill(obj)
			cp := obj.DeepCopyObject()
			if diff := cmp.Diff(obj, cp); diff != "" {
				t.Fatalf("%T seed %d: deep copy differs (-orig +copy):\n%s", obj, seed, diff)
			}

			data, err := runtime.Encode(codec, obj)
			if err != nil {
				t.Fatalf("%T seed %d: encode: %v", obj, seed, err)
			}
			back := newObj()
			if err := runtime.DecodeInto(codecs.UniversalDecoder(), data, back); err != nil {
				t.Fatalf("%T seed %d: decode: %v", obj, seed, err)
			}
			// Encoding sets apiVersion/kind; the filled object had random ones.
			obj.GetObjectKind().SetGroupVersionKind(back.GetObjectKind().GroupVersionKind())
			// omitempty turns empty maps and slices into absent fields.
			if diff := cmp.Diff(obj, back, cmpopts.EquateEmpty()); diff != "" {
				t.Fatalf("%T seed %d: round trip differs (-want +got):\n%s", obj, seed, diff)
			}
		}
	}
}

// A deep copy must share no memory with the original.
func TestDeepCopyIsIndependent(t *testing.T) {
	orig := &GPUNode{Status: GPUNodeStatus{
		GPUs: []GPUStatus{{UUID: "GPU-a", Pods: []PodGPUUsage{{Name: "p", GPUs: []string{"GPU-a"}}}}},
	}}
	cp := orig.DeepCopy()
	cp.Status.GPUs[0].UUID = "GPU-b"
	cp.Status.GPUs[0].Pods[0].GPUs[0] = "GPU-b"
	if orig.Status.GPUs[0].UUID != "GPU-a" || orig.Status.GPUs[0].Pods[0].GPUs[0] != "GPU-a" {
		t.Fatalf("deep copy shares memory with the original: %+v", orig.Status.GPUs[0])
	}

	ck := &GPUCheckpoint{Spec: GPUCheckpointSpec{Preemptor: &PodReference{Name: "hi"}, TargetGPUs: []string{"GPU-a"}}}
	ckCopy := ck.DeepCopy()
	ckCopy.Spec.Preemptor.Name = "other"
	ckCopy.Spec.TargetGPUs[0] = "GPU-b"
	if ck.Spec.Preemptor.Name != "hi" || ck.Spec.TargetGPUs[0] != "GPU-a" {
		t.Fatalf("deep copy shares memory with the original: %+v", ck.Spec)
	}
}

// The JSON field names are the API: a rename breaks every stored object.
func TestJSONFieldNames(t *testing.T) {
	ck := GPUCheckpoint{Spec: GPUCheckpointSpec{
		PodName: "p", PodUID: "u", Action: ActionResume, Reason: ReasonTimeSlice,
		TargetGPUs: []string{"GPU-1"}, Preemptor: &PodReference{Namespace: "n", Name: "hi"}, Image: "/img",
	}}
	data, err := json.Marshal(ck.Spec)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"podName":"p","podUID":"u","action":"Resume","reason":"TimeSlice","targetGPUs":["GPU-1"],"preemptor":{"namespace":"n","name":"hi"},"image":"/img"}`
	if diff := cmp.Diff(want, string(data)); diff != "" {
		t.Errorf("spec JSON (-want +got):\n%s", diff)
	}
}
