package controller

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	testingclock "k8s.io/utils/clock/testing"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/podmap"
)

// noFinder sees no parked process, as NVML does not.
type noFinder struct{}

func (noFinder) Processes(context.Context, podmap.PodRef) ([]engine.Process, error) { return nil, nil }

// TestRecoverAfterRestart: a new agent takes over the suspended pod with the footprint its
// Suspend recorded, resumes it, and ends the parked process of a pod that is gone, with an
// Event on the Node.
func TestRecoverAfterRestart(t *testing.T) {
	h := newHarness(t, 100*gib, []*v1.Pod{gpuPod("train", node, gpu0)}, checkpoint("s", "train", kv1.ActionSuspend))
	if err := h.c.Reconcile(t.Context(), "ml/s"); err != nil {
		t.Fatal(err)
	}
	// pid 200 was parked for a pod deleted while the agent was away.
	if err := errors.Join(h.d.AddProcess(200, devs[1].UUID, uint64(10*gib)), h.d.CheckpointProcessLock(200, 0), h.d.CheckpointProcessCheckpoint(200)); err != nil {
		t.Fatal(err)
	}
	h.events()

	clk := testingclock.NewFakeClock(time.Date(2026, 11, 23, 11, 0, 0, 0, time.UTC))
	e := engine.New(h.d, noFinder{}, fixedMemory(100*gib), h.d, h.d, engine.Config{LockTimeout: time.Second, StepTimeout: time.Minute}, clk)
	var changed []string
	op := NewOperator(h.kube, EngineMap{node: e}, h.recorder, clk, func(n string) { changed = append(changed, n) })
	pods := []*v1.Pod{h.pod(t, "train")}
	pids := map[types.UID][]int{"uid-train": {1, 100}, "uid-gone": {200}}
	rec := op.Recover(t.Context(), node, pids, pods, []*kv1.GPUCheckpoint{h.get(t, "s")})
	want := engine.Recovery{
		Suspended: []podmap.PodRef{{Namespace: "ml", Name: "train", UID: "uid-train"}},
		Ended:     []engine.EndedProcess{{PID: 200, PodUID: "uid-gone"}},
	}
	if diff := cmp.Diff(want, rec); diff != "" {
		t.Fatalf("recovery (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"Normal ParkedProcessEnded Ended parked GPU process 200 of pod uid-gone, which no longer exists: the host memory holding its GPU memory is free"}, h.events()); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if _, ok := h.d.Process(200); ok {
		t.Error("the gone pod's parked process still exists")
	}
	if diff := cmp.Diff([]string{node}, changed); diff != "" {
		t.Errorf("status triggers (-want +got):\n%s", diff)
	}
	if got := e.SuspendedPods(); len(got) != 1 || got[0].Bytes != 30*gib {
		t.Errorf("suspended pods %+v, want train with 30Gi", got)
	}
	if _, err := op.Resume(t.Context(), h.pod(t, "train"), nil); err != nil {
		t.Fatalf("Resume after the restart: %v", err)
	}
	if p, _ := h.d.Process(100); p.State != cuda.ProcessStateRunning {
		t.Errorf("pid 100 is %v, want RUNNING", p.State)
	}
}

func TestLastSuspend(t *testing.T) {
	pod := gpuPod("train", node, gpu0)
	at := func(name string, min int, mut func(*kv1.GPUCheckpoint)) *kv1.GPUCheckpoint {
		ck := checkpoint(name, "train", kv1.ActionSuspend)
		tm := metav1.NewTime(time.Date(2026, 11, 23, 10, min, 0, 0, time.UTC))
		ck.Status = kv1.GPUCheckpointStatus{Phase: kv1.PhaseSucceeded, NodeName: node, CompletionTime: &tm}
		if mut != nil {
			mut(ck)
		}
		return ck
	}
	ckpts := []*kv1.GPUCheckpoint{
		at("old", 1, nil),
		at("new", 5, nil),
		at("failed", 9, func(c *kv1.GPUCheckpoint) { c.Status.Phase = kv1.PhaseFailed }),
		at("other-node", 9, func(c *kv1.GPUCheckpoint) { c.Status.NodeName = "node-b" }),
		at("replaced", 9, func(c *kv1.GPUCheckpoint) { c.Spec.PodUID = "uid-old" }),
		at("resume", 9, func(c *kv1.GPUCheckpoint) { c.Spec.Action = kv1.ActionResume }),
	}
	if got := LastSuspend(ckpts, pod, node); got == nil || got.Name != "new" {
		t.Errorf("last suspend %v, want new", got)
	}
}

// TestEndDeleted: a suspended pod that is being deleted has its parked processes ended at once;
// a running one is left to the kubelet.
func TestEndDeleted(t *testing.T) {
	h := newHarness(t, 100*gib, []*v1.Pod{gpuPod("train", node, gpu0)}, checkpoint("s", "train", kv1.ActionSuspend))
	pod := h.pod(t, "train")
	h.c.op.EndDeleted(t.Context(), pod)
	if _, ok := h.d.Process(100); !ok {
		t.Fatal("a running pod's process was ended")
	}
	if err := h.c.Reconcile(t.Context(), "ml/s"); err != nil {
		t.Fatal(err)
	}
	h.events()
	h.changed = nil
	now := metav1.Now()
	pod.DeletionTimestamp = &now
	h.c.op.EndDeleted(t.Context(), pod)
	if _, ok := h.d.Process(100); ok {
		t.Error("the deleted pod's parked process still exists")
	}
	ev := h.events()
	if len(ev) != 1 || !strings.HasPrefix(ev[0], "Normal ParkedProcessesEnded The pod is being deleted while suspended: ended its parked GPU processes [100]; 30Gi of host memory is free") {
		t.Errorf("events %q", ev)
	}
	if got := h.e.SuspendedPods(); len(got) != 0 {
		t.Errorf("suspended pods %+v, want none", got)
	}
	if diff := cmp.Diff([]string{node}, h.changed); diff != "" {
		t.Errorf("status triggers (-want +got):\n%s", diff)
	}
}

// TestRequeueUnfinished: objects that are not finished are queued again, finished ones not.
func TestRequeueUnfinished(t *testing.T) {
	done := checkpoint("done", "train", kv1.ActionSuspend)
	done.Status.Phase = kv1.PhaseSucceeded
	h := newHarness(t, 100*gib, nil, checkpoint("open", "train", kv1.ActionSuspend), done)
	h.c.RequeueUnfinished()
	if n := h.c.queue.Len(); n != 1 {
		t.Fatalf("%d queued, want 1", n)
	}
	if key, _ := h.c.queue.Get(); key != "ml/open" {
		t.Errorf("queued %q, want ml/open", key)
	}
}
