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
