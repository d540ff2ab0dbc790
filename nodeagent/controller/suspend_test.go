package controller

import (
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	k8stesting "k8s.io/client-go/testing"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// A second Suspend of a pod whose first suspend finished while the second was on its way (a
// time-slice turn and a preemption at once) records the pod Suspended and moves nothing; it
// never marks the suspended pod Suspending again, which would tell the scheduler that free
// memory is held. Found by the kill storm.
func TestSecondSuspendOfSuspendedPod(t *testing.T) {
	pod := gpuPod("train", node, gpu0, kv1.AnnotationState, string(kv1.PodSuspending))
	h := newHarness(t, 100*gib, []*v1.Pod{pod}, checkpoint("second", "train", kv1.ActionSuspend))
	if _, err := h.e.Suspend(t.Context(), ref(pod), 0); err != nil {
		t.Fatal(err)
	}
	calls := len(h.d.Calls())
	h.kube.ClearActions()
	if err := h.c.Reconcile(t.Context(), "ml/second"); err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
	if ck := h.get(t, "second"); ck.Status.Phase != kv1.PhaseSucceeded || ck.Status.BytesMoved != 0 {
		t.Errorf("status %s (%s), moved %d; want Succeeded, nothing moved", ck.Status.Phase, ck.Status.Message, ck.Status.BytesMoved)
	}
	if got := h.pod(t, "train").Annotations[kv1.AnnotationState]; got != string(kv1.PodSuspended) {
		t.Errorf("pod state %q, want Suspended", got)
	}
	for _, a := range h.kube.Actions() {
		if p, ok := a.(k8stesting.PatchAction); ok && strings.Contains(string(p.GetPatch()), `"`+string(kv1.PodSuspending)+`"`) {
			t.Errorf("patched the pod Suspending again: %s", p.GetPatch())
		}
	}
	for _, c := range h.d.Calls()[calls:] {
		if c.PID != 0 {
			t.Errorf("driver call %s on pid %d after the first suspend", c.Name, c.PID)
		}
	}
}

// A pod put to sleep for idleness with kybernate.io/sleep Disk by an agent without storage
// tiers sleeps in host memory and is told so with a Warning; a HostMemory sleep, or Disk on
// a suspension for another reason, gets none.
func TestSleepDiskWithoutTiersWarns(t *testing.T) {
	for _, tc := range []struct {
		name   string
		sleep  string
		reason kv1.CheckpointReason
		warn   bool
	}{
		{name: "Disk, idle", sleep: "Disk", reason: kv1.ReasonIdle, warn: true},
		{name: "HostMemory, idle", sleep: "HostMemory", reason: kv1.ReasonIdle},
		{name: "Disk, preemption", sleep: "Disk", reason: kv1.ReasonPreemption},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ck := checkpoint("s", "train", kv1.ActionSuspend)
			ck.Spec.Reason = tc.reason
			h := newHarness(t, 100*gib, []*v1.Pod{gpuPod("train", node, gpu0, kv1.AnnotationSleep, tc.sleep)}, ck)
			if err := h.c.Reconcile(t.Context(), "ml/s"); err != nil {
				t.Fatalf("Reconcile: %v", err)
			}
			if ck := h.get(t, "s"); ck.Status.Phase != kv1.PhaseSucceeded {
				t.Fatalf("status %s (%s), want Succeeded", ck.Status.Phase, ck.Status.Message)
			}
			var warned []string
			for _, ev := range h.events() {
				if strings.HasPrefix(ev, "Warning "+EventSleepDepthUnavailable+" ") {
					warned = append(warned, ev)
				}
			}
			if tc.warn && (len(warned) != 1 || !strings.Contains(warned[0], "kybernate.io/sleep is Disk") || !strings.Contains(warned[0], "--disk-tier-dir")) {
				t.Errorf("Events %q, want one %s naming the annotation and the flag", warned, EventSleepDepthUnavailable)
			}
			if !tc.warn && len(warned) != 0 {
				t.Errorf("Events %q, want none", warned)
			}
		})
	}
}
