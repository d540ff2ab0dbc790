package gpupod

import (
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kybernate/kybernate/apis/config"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

func victimsPod(name string, prio int32, mem string, gpus string) *v1.Pod {
	p := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID(name), Annotations: map[string]string{}}}
	p.Spec.Priority = &prio
	p.Spec.Containers = []v1.Container{{Name: "c", Resources: v1.ResourceRequirements{Requests: v1.ResourceList{kv1.ResourceGPU: resource.MustParse("1")}}}}
	if mem != "" {
		p.Annotations[kv1.AnnotationGPUMemory] = mem
	}
	if gpus != "" {
		p.Annotations[kv1.AnnotationGPUs] = gpus
		p.Spec.NodeName = "n"
		p.Status.StartTime = &metav1.Time{Time: time.Unix(0, 0)}
	}
	return p
}

func TestSelectVictims(t *testing.T) {
	slots := int32(8)
	gn := &kv1.GPUNode{ObjectMeta: metav1.ObjectMeta{Name: "n"}, Spec: kv1.GPUNodeSpec{SlotsPerGPU: &slots}}
	gn.Status.HostMemory.ParkableBytes = 100 << 30
	gn.Status.GPUs = []kv1.GPUStatus{{UUID: gpu0, Index: 0, MemoryTotalBytes: 80 << 30}}
	small := victimsPod("small", 1, "20Gi", gpu0)
	big := victimsPod("big", 1, "30Gi", gpu0)
	high := victimsPod("high", 200, "10Gi", gpu0)
	never := victimsPod("never", 1, "20Gi", gpu0) // opted out: never a victim
	never.Annotations[kv1.AnnotationPreemption] = "Never"
	rules := VictimRules{Strategy: config.MostAllocated, DefaultMinRuntime: time.Minute, Now: time.Unix(3600, 0)}
	preemptor := victimsPod("p", 100, "30Gi", "")
	d, err := PodDemand(preemptor)
	if err != nil {
		t.Fatal(err)
	}
	// 80Gi: small 20 + big 30 + high 10 + never 20 = 80; the preemptor needs 30: suspending big frees
	// enough, suspending small (20) does not; the high-priority pod is never a victim.
	victims, why := SelectVictims(gn, []*v1.Pod{small, big, high, never}, preemptor, d, rules)
	if len(victims) != 1 || victims[0].Pod.Name != "big" || victims[0].Bytes != 30<<30 {
		t.Fatalf("victims = %v (%s), want big", victims, why)
	}
	// With big excluded (its suspension failed before) the choice is the same.
	rules.Excluded = func(p *v1.Pod) bool { return p.Name == "big" }
	if victims, why = SelectVictims(gn, []*v1.Pod{small, big, high, never}, preemptor, d, rules); len(victims) != 0 || why == "" {
		t.Errorf("with big excluded: %v, %q; want none (small alone frees too little)", victims, why)
	}
	rules.Excluded = nil
	gn.Status.HostMemory.ParkableBytes = 10 << 30
	if victims, why = SelectVictims(gn, []*v1.Pod{small, big, high, never}, preemptor, d, rules); len(victims) != 0 || why == "" {
		t.Errorf("with 10Gi parkable: %v, %q; want none", victims, why)
	}
}
