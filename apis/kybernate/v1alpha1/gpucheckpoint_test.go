package v1alpha1

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestDeferred(t *testing.T) {
	cond := func(status metav1.ConditionStatus, reason string) []metav1.Condition {
		return []metav1.Condition{{Type: CheckpointComplete, Status: status, Reason: reason}}
	}
	tests := []struct {
		name string
		st   GPUCheckpointStatus
		want bool
	}{
		{"guard refusal", GPUCheckpointStatus{Phase: PhaseFailed, Conditions: cond(metav1.ConditionFalse, ReasonInsufficientGPUMemory)}, true},
		{"other failure", GPUCheckpointStatus{Phase: PhaseFailed, Conditions: cond(metav1.ConditionFalse, "RestoreFailed")}, false},
		{"in progress", GPUCheckpointStatus{Phase: PhaseInProgress}, false},
		{"failed without condition", GPUCheckpointStatus{Phase: PhaseFailed}, false},
	}
	for _, tt := range tests {
		if got := tt.st.Deferred(); got != tt.want {
			t.Errorf("%s: Deferred() = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestGPUFootprint(t *testing.T) {
	st := GPUCheckpointStatus{Footprint: []ProcessFootprint{
		{PID: 1, GPU: "GPU-a", Bytes: 3}, {PID: 2, GPU: "GPU-a", Bytes: 4}, {PID: 3, GPU: "GPU-b", Bytes: 6},
	}}
	if got := st.GPUFootprint(); got != 7 {
		t.Errorf("GPUFootprint() = %d, want 7 (two processes on GPU-a)", got)
	}
	if got := (&GPUCheckpointStatus{}).GPUFootprint(); got != 0 {
		t.Errorf("GPUFootprint() of nothing = %d, want 0", got)
	}
}
