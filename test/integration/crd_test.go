package integration

import (
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/test/integration/framework"
)

// The API server enforces the CRDs' schema and CEL rules: bad GPUCheckpoints are refused with a
// message that says what is wrong.
func TestGPUCheckpointValidation(t *testing.T) {
	c := framework.Get(t)
	ns := c.CreateNamespace(t)
	kc, err := versioned.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	valid := func() *kv1.GPUCheckpoint {
		return &kv1.GPUCheckpoint{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "ck-", Namespace: ns},
			Spec:       kv1.GPUCheckpointSpec{PodName: "p", Action: kv1.ActionSuspend, Reason: kv1.ReasonManual},
		}
	}
	tests := []struct {
		name    string
		mutate  func(*kv1.GPUCheckpoint)
		wantErr string
	}{
		{name: "valid", mutate: func(*kv1.GPUCheckpoint) {}},
		{name: "unknown action", mutate: func(ck *kv1.GPUCheckpoint) { ck.Spec.Action = "Pause" }, wantErr: `spec.action: Unsupported value: "Pause"`},
		{name: "no pod", mutate: func(ck *kv1.GPUCheckpoint) { ck.Spec.PodName = "" }, wantErr: "spec.podName"},
		{
			name:    "target GPUs on a suspend",
			mutate:  func(ck *kv1.GPUCheckpoint) { ck.Spec.TargetGPUs = []string{"GPU-1"} },
			wantErr: "targetGPUs is only allowed with action Resume or Restore",
		},
		{
			name:    "preemption without a preemptor",
			mutate:  func(ck *kv1.GPUCheckpoint) { ck.Spec.Reason = kv1.ReasonPreemption },
			wantErr: "preemptor is required for a Suspend with reason Preemption",
		},
		{
			name: "preemptor with another reason",
			mutate: func(ck *kv1.GPUCheckpoint) {
				ck.Spec.Preemptor = &kv1.PodReference{Namespace: "ns", Name: "hi"}
			},
			wantErr: "preemptor is only allowed for a Suspend with reason Preemption or TimeSlice",
		},
		{
			name: "preemptor on a resume",
			mutate: func(ck *kv1.GPUCheckpoint) {
				ck.Spec.Action, ck.Spec.Reason = kv1.ActionResume, kv1.ReasonTimeSlice
				ck.Spec.Preemptor = &kv1.PodReference{Namespace: "ns", Name: "hi"}
			},
			wantErr: "preemptor is only allowed for a Suspend with reason Preemption or TimeSlice",
		},
		{
			name: "time slice turn for a pending pod",
			mutate: func(ck *kv1.GPUCheckpoint) {
				ck.Spec.Reason = kv1.ReasonTimeSlice
				ck.Spec.Preemptor = &kv1.PodReference{Namespace: "ns", Name: "next"}
			},
		},
		{
			name: "resume after a preemption",
			mutate: func(ck *kv1.GPUCheckpoint) {
				ck.Spec.Action, ck.Spec.Reason, ck.Spec.TargetGPUs = kv1.ActionResume, kv1.ReasonPreemption, []string{"GPU-1"}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ck := valid()
			tt.mutate(ck)
			_, err := kc.KybernateV1alpha1().GPUCheckpoints(ns).Create(t.Context(), ck, metav1.CreateOptions{})
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("valid GPUCheckpoint refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}

	t.Run("spec is immutable", func(t *testing.T) {
		ck, err := kc.KybernateV1alpha1().GPUCheckpoints(ns).Create(t.Context(), valid(), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ck.Spec.PodName = "other"
		_, err = kc.KybernateV1alpha1().GPUCheckpoints(ns).Update(t.Context(), ck, metav1.UpdateOptions{})
		if err == nil || !strings.Contains(err.Error(), "spec is immutable") {
			t.Fatalf("changing the spec: error = %v, want spec is immutable", err)
		}
	})
}
