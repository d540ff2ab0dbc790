package gpupod

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	st "k8s.io/kubernetes/pkg/scheduler/testing"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

func TestResident(t *testing.T) {
	withCondition := func(state kv1.PodGPUState, resident v1.ConditionStatus) *v1.Pod {
		p := st.MakePod().Name("p").Annotation(kv1.AnnotationState, string(state)).Obj()
		if resident != "" {
			p.Status.Conditions = []v1.PodCondition{{Type: kv1.ConditionGPUResident, Status: resident}}
		}
		return p
	}
	tests := []struct {
		name string
		pod  *v1.Pod
		want bool
	}{
		{name: "running", pod: withCondition(kv1.PodRunning, v1.ConditionTrue), want: true},
		{name: "suspending holds its memory", pod: withCondition(kv1.PodSuspending, v1.ConditionTrue), want: true},
		{name: "suspended", pod: withCondition(kv1.PodSuspended, v1.ConditionFalse), want: false},
		{name: "checkpointing a suspended pod (migration)", pod: withCondition(kv1.PodCheckpointing, v1.ConditionFalse), want: false},
		{name: "checkpointing a running pod", pod: withCondition(kv1.PodCheckpointing, v1.ConditionTrue), want: true},
		{name: "checkpointing, no condition", pod: withCondition(kv1.PodCheckpointing, ""), want: true},
		{name: "checkpointed", pod: withCondition(kv1.PodCheckpointed, v1.ConditionFalse), want: false},
		{name: "restoring", pod: withCondition(kv1.PodRestoring, ""), want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Resident(tt.pod); got != tt.want {
				t.Errorf("Resident() = %v, want %v", got, tt.want)
			}
		})
	}
}
