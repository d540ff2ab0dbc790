package controller

import (
	"strings"
	"testing"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// On a node whose agent has no usable CUDA driver, an action on a pod with GPUs fails at once
// with the driver's error and an Event on the pod; nothing is frozen, the pod's state stays.
// Pods without GPUs are still frozen, and pods on other nodes are left to their agents.
func TestGPUPodOnNodeWithoutDriverFailsAtOnce(t *testing.T) {
	const why = "cuInit: CUDA_ERROR_NO_DEVICE (100)"
	h := newFreezeHarness(t,
		gpuPod("train", cpuNode, gpu0),
		gpuPod("parked", cpuNode, gpu0, kv1.AnnotationState, string(kv1.PodSuspended)),
		gpuPod("elsewhere", "node-b", gpu0),
		cpuPod("llm", cpuNode, map[string]string{}))
	h.c.op.SetDriverUnavailable(cpuNode, why)

	for _, tc := range []struct {
		ck    *kv1.GPUCheckpoint
		pod   string
		state kv1.PodGPUState
		event string
		verb  string
	}{
		{checkpoint("s", "train", kv1.ActionSuspend), "train", "", "Warning SuspendFailed Suspend failed (DriverUnavailable, GPUCheckpoint s)", "suspend"},
		{checkpoint("r", "parked", kv1.ActionResume), "parked", kv1.PodSuspended, "Warning ResumeFailed Resume failed (DriverUnavailable, GPUCheckpoint r)", "resume"},
	} {
		tc.ck.Spec.Reason = kv1.ReasonIdle
		ck := h.run(t, tc.ck)
		wantMsg := "the agent of node " + cpuNode + " cannot " + tc.verb + " pods with GPUs: its CUDA driver is not usable (" + why + ")"
		if ck.Status.Phase != kv1.PhaseFailed || reasonOf(ck) != ReasonDriverUnavailable || ck.Status.Message != wantMsg ||
			ck.Status.NodeName != cpuNode || ck.Status.CompletionTime == nil {
			t.Errorf("%s: %s %s on %q (%q), want Failed %s on %s (%q)", tc.ck.Name, ck.Status.Phase, reasonOf(ck), ck.Status.NodeName,
				ck.Status.Message, ReasonDriverUnavailable, cpuNode, wantMsg)
		}
		if s := h.state(t, tc.pod); s != string(tc.state) {
			t.Errorf("%s: pod state %q, want %q (unchanged)", tc.ck.Name, s, tc.state)
		}
		ev := h.events()
		if len(ev) != 1 || !strings.HasPrefix(ev[0], tc.event) || !strings.Contains(ev[0], why) {
			t.Errorf("%s: Events %q, want one starting %q naming the driver's error", tc.ck.Name, ev, tc.event)
		}
	}
	if ck := h.run(t, checkpoint("other", "elsewhere", kv1.ActionSuspend)); ck.Status.Phase != "" {
		t.Errorf("a pod on another agent's node: %s (%s), want it left alone", ck.Status.Phase, ck.Status.Message)
	}
	if ck := h.run(t, checkpoint("cpu", "llm", kv1.ActionSuspend)); ck.Status.Phase != kv1.PhaseSucceeded {
		t.Errorf("a pod without GPUs: %s (%s), want it frozen", ck.Status.Phase, ck.Status.Message)
	}
	if want := "freeze llm"; strings.Join(h.f.calls, ",") != want {
		t.Errorf("freezer calls %q, want %q", h.f.calls, want)
	}
}
