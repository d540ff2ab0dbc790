package cli

import (
	"strings"
	"testing"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

func TestSummarizeIdleSleep(t *testing.T) {
	w := &Why{Name: "llm", State: string(kv1.PodSuspended), Suspension: &CheckpointView{Reason: kv1.ReasonIdle}}
	if got := summarize(w); !strings.HasPrefix(got, "Asleep:") || !strings.Contains(got, "kybernate-activator") {
		t.Errorf("summarize(idle sleep) = %q", got)
	}
}

func TestSummarizeIdleSleepOnDisk(t *testing.T) {
	ck := &kv1.GPUCheckpoint{Spec: kv1.GPUCheckpointSpec{PodName: "llm", Action: kv1.ActionSuspend, Reason: kv1.ReasonIdle},
		Status: kv1.GPUCheckpointStatus{Phase: kv1.PhaseSucceeded, Storage: &kv1.CheckpointStorage{Tier: kv1.TierDisk}}}
	v := checkpointView(ck)
	w := &Why{Name: "llm", State: string(kv1.PodSuspended), Suspension: &v}
	if got := summarize(w); !strings.HasPrefix(got, "Asleep (its GPU memory in storage tier Disk):") {
		t.Errorf("summarize(idle sleep on disk) = %q", got)
	}
}

func TestSummarizeSpread(t *testing.T) {
	w := &Why{Name: "train", Node: "n1", State: string(kv1.PodSuspended), Suspension: &CheckpointView{Reason: kv1.ReasonSpread}}
	if got := summarize(w); !strings.HasPrefix(got, "Suspended to move it off a shared GPU onto an unused GPU of node n1") {
		t.Errorf("summarize(spread) = %q", got)
	}
}
