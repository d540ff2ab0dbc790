package gpupod

import (
	"fmt"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kybernate/kybernate/apis/config"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/test/util"
)

// TestAccountingCountsWhatPodsUse: a resident pod that uses more than it declared takes what
// the agent reports it using; one that uses less takes what it declared.
func TestAccountingCountsWhatPodsUse(t *testing.T) {
	const gib = int64(1) << 30
	const uuid = "GPU-00000000-0000-0000-0000-000000000001"
	gn := func(used, reported int64) *kv1.GPUNode {
		slots := int32(2)
		return &kv1.GPUNode{Spec: kv1.GPUNodeSpec{SlotsPerGPU: &slots}, Status: kv1.GPUNodeStatus{GPUs: []kv1.GPUStatus{{
			UUID: uuid, Model: "NVIDIA H100 80GB HBM3", MemoryTotalBytes: 80 * gib, MemoryUsedBytes: used,
			Pods: []kv1.PodGPUUsage{{Namespace: "ml", Name: "big", UID: "uid-big", Bytes: reported, Residency: kv1.Resident}},
		}}}}
	}
	pod := util.MakePod().Namespace("ml").Name("big").UID("uid-big").GPU(1).GPUMemory("20Gi").Annotation(kv1.AnnotationGPUs, uuid).Obj()
	pod.Status.Phase = v1.PodRunning
	d := Demand{Count: 1, Bytes: 40 * gib}
	tests := []struct {
		name           string
		used, reported int64
		want           bool
	}{
		{name: "uses 50Gi of its declared 20Gi: 30Gi free", used: 50 * gib, reported: 50 * gib, want: false},
		{name: "uses 10Gi of its declared 20Gi: 60Gi free", used: 10 * gib, reported: 10 * gib, want: true},
	}
	for _, tt := range tests {
		if got := NewAccounting(gn(tt.used, tt.reported), []*v1.Pod{pod}).Fits(d, []string{uuid}); got != tt.want {
			t.Errorf("%s: 40Gi fits = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestDemandAtLeast(t *testing.T) {
	const gib = int64(1) << 30
	if got := (Demand{Count: 1, Bytes: 8 * gib}).AtLeast(9 * gib); got.Bytes != 9*gib {
		t.Errorf("8Gi at least 9Gi = %d", got.Bytes)
	}
	if got := (Demand{Count: 1, Bytes: 8 * gib}).AtLeast(7 * gib); got.Bytes != 8*gib {
		t.Errorf("8Gi at least 7Gi = %d", got.Bytes)
	}
	if got := (Demand{Count: 1}).AtLeast(9 * gib); !got.Whole() {
		t.Error("a whole-GPU demand stopped being whole")
	}
}

// TestChooseShortcutsAgree: FitsNow and ChooseScore, which Filter and Score use to spare the
// GPUs' names, answer what Choose and Score answer, for one GPU and several, both strategies,
// on GPUs of every fill including ties.
func TestChooseShortcutsAgree(t *testing.T) {
	const gib = int64(1) << 30
	slots := int32(3)
	gn := &kv1.GPUNode{Spec: kv1.GPUNodeSpec{SlotsPerGPU: &slots}}
	var pods []*v1.Pod
	for i, used := range []int64{0, 30, 60, 30, 75, 0} {
		uuid := "GPU-" + string(rune('a'+i))
		gn.Status.GPUs = append(gn.Status.GPUs, kv1.GPUStatus{UUID: uuid, Index: int32(i), MemoryTotalBytes: 80 * gib})
		if used > 0 {
			pods = append(pods, util.MakePod().Namespace("ns").Name(uuid).UID(uuid).GPU(1).
				GPUMemory(fmt.Sprintf("%dGi", used)).Node("n").Annotation(kv1.AnnotationGPUs, uuid).Obj())
		}
	}
	acc := NewAccounting(gn, pods)
	// One GPU: best fit, emptiest, and ties to the lower index.
	for _, tt := range []struct {
		strategy config.ScoringStrategyType
		mem      int64
		want     string
	}{
		{config.MostAllocated, 10, "GPU-c"},
		{config.MostAllocated, 50, "GPU-b"},
		{config.LeastAllocated, 10, "GPU-a"},
	} {
		if got := acc.Choose(Demand{Count: 1, Bytes: tt.mem * gib}, tt.strategy); len(got) != 1 || got[0] != tt.want {
			t.Errorf("%s %dGi: Choose = %v, want [%s]", tt.strategy, tt.mem, got, tt.want)
		}
	}
	for _, strategy := range []config.ScoringStrategyType{config.MostAllocated, config.LeastAllocated} {
		for count := 1; count <= 7; count++ {
			for _, mem := range []int64{0, 10, 20, 50, 81} {
				d := Demand{Count: count, Bytes: mem * gib}
				chosen := acc.Choose(d, strategy)
				if got := acc.FitsNow(d); got != (chosen != nil) {
					t.Errorf("%s %+v: FitsNow = %v, Choose = %v", strategy, d, got, chosen)
				}
				score, ok := acc.ChooseScore(d, strategy)
				if ok != (chosen != nil) || (ok && score != acc.Score(chosen, d, strategy)) {
					t.Errorf("%s %+v: ChooseScore = %d, %v; Choose = %v scores %d", strategy, d, score, ok, chosen, acc.Score(chosen, d, strategy))
				}
			}
		}
	}
}

// TestRestoringKeepsTheMargin: a restore fits only where the agent's restore margin stays free
// beyond its memory, whichever way the fit is asked; a pod that starts afresh may fill the GPU.
func TestRestoringKeepsTheMargin(t *testing.T) {
	const gib = int64(1) << 30
	const uuid = "GPU-00000000-0000-0000-0000-000000000001"
	slots := int32(2)
	gn := &kv1.GPUNode{Spec: kv1.GPUNodeSpec{SlotsPerGPU: &slots}, Status: kv1.GPUNodeStatus{
		RestoreMarginBytes: 256 << 20,
		GPUs:               []kv1.GPUStatus{{UUID: uuid, MemoryTotalBytes: 80 * gib}},
	}}
	resident := util.MakePod().Namespace("ml").Name("a").UID("a").GPU(1).GPUMemory("50Gi").Annotation(kv1.AnnotationGPUs, uuid).Obj()
	acc := NewAccounting(gn, []*v1.Pod{resident})
	fresh := Demand{Count: 1, Bytes: 30 * gib}
	for _, tt := range []struct {
		name string
		d    Demand
		want bool
	}{
		{name: "30Gi afresh", d: fresh, want: true},
		{name: "30Gi restored", d: fresh.Restoring(gn), want: false},
		{name: "29Gi restored", d: Demand{Count: 1, Bytes: 29 * gib}.Restoring(gn), want: true},
	} {
		got := []bool{acc.Fits(tt.d, []string{uuid}), acc.FitsSlotHeld(tt.d, []string{uuid}), acc.FitsNow(tt.d), acc.Choose(tt.d, config.MostAllocated) != nil}
		for i, g := range got {
			if g != tt.want {
				t.Errorf("%s: fit %d of (Fits, FitsSlotHeld, FitsNow, Choose) = %v, want %v", tt.name, i, g, tt.want)
			}
		}
	}
}
