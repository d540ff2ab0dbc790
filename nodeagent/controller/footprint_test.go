package controller

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/nodeagent/engine"
)

func TestFootprintRoundTrip(t *testing.T) {
	g0, g1 := devs[0].UUID, devs[1].UUID
	procs := []engine.Process{
		{PID: 12, GPU: g1, Bytes: 5 * gib},
		{PID: 10, GPU: g0, Bytes: 9 * gib, Footprint: map[cuda.UUID]int64{g0: 3 * gib, g1: 6 * gib}},
	}
	st := FootprintStatus(procs)
	want := []kv1.ProcessFootprint{{PID: 10, GPU: gpu0, Bytes: 3 * gib}, {PID: 10, GPU: gpu1, Bytes: 6 * gib}, {PID: 12, GPU: gpu1, Bytes: 5 * gib}}
	if diff := cmp.Diff(want, st); diff != "" {
		t.Fatalf("status (-want +got):\n%s", diff)
	}
	got, err := RecordedProcesses(st)
	if err != nil {
		t.Fatal(err)
	}
	wantProcs := []engine.Process{
		// On the GPU where it had the most.
		{PID: 10, GPU: g1, Bytes: 9 * gib, Footprint: map[cuda.UUID]int64{g0: 3 * gib, g1: 6 * gib}},
		{PID: 12, GPU: g1, Bytes: 5 * gib, Footprint: map[cuda.UUID]int64{g1: 5 * gib}},
	}
	if diff := cmp.Diff(wantProcs, got); diff != "" {
		t.Errorf("read back (-want +got):\n%s", diff)
	}
	for _, bad := range [][]kv1.ProcessFootprint{
		{{PID: 0, GPU: gpu0, Bytes: 1}},
		{{PID: 1, GPU: gpu0, Bytes: -1}},
		{{PID: 1, GPU: "GPU-nope", Bytes: 1}},
	} {
		if _, err := RecordedProcesses(bad); err == nil {
			t.Errorf("RecordedProcesses(%+v) accepted", bad)
		}
	}
}

func FuzzRecordedProcesses(f *testing.F) {
	f.Add(int32(10), gpu0, int64(1<<30))
	f.Add(int32(-1), "GPU-x", int64(-5))
	f.Add(int32(1), "", int64(0))
	f.Fuzz(func(t *testing.T, pid int32, gpu string, bytes int64) {
		procs, err := RecordedProcesses([]kv1.ProcessFootprint{{PID: pid, GPU: gpu, Bytes: bytes}, {PID: pid, GPU: gpu, Bytes: bytes}})
		if err != nil {
			return
		}
		if len(procs) != 1 || procs[0].PID <= 0 || procs[0].Bytes < 0 {
			t.Fatalf("RecordedProcesses accepted pid %d bytes %d as %+v", pid, bytes, procs)
		}
	})
}

// TestReconcileRecordsFootprint: a Suspend records each process's footprint in the status.
func TestReconcileRecordsFootprint(t *testing.T) {
	h := newHarness(t, 100*gib, []*v1.Pod{gpuPod("train", node, gpu0)}, checkpoint("s", "train", kv1.ActionSuspend))
	if err := h.c.Reconcile(t.Context(), "ml/s"); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]kv1.ProcessFootprint{{PID: 100, GPU: gpu0, Bytes: 30 * gib}}, h.get(t, "s").Status.Footprint); diff != "" {
		t.Errorf("footprint (-want +got):\n%s", diff)
	}
}

// TestReconcileResumeGuardRefusal: a Resume the guard refuses ends Failed with reason
// InsufficientGPUMemory, leaves the pod Suspended, calls no restore and says why in an Event.
func TestReconcileResumeGuardRefusal(t *testing.T) {
	h := newHarness(t, 100*gib, []*v1.Pod{gpuPod("train", node, gpu0)}, checkpoint("s", "train", kv1.ActionSuspend), checkpoint("r", "train", kv1.ActionResume))
	if err := h.c.Reconcile(t.Context(), "ml/s"); err != nil {
		t.Fatal(err)
	}
	// A process outside Kybernate takes 60 GiB of gpu0 meanwhile.
	if err := h.d.AddProcess(900, devs[0].UUID, uint64(60*gib)); err != nil {
		t.Fatal(err)
	}
	h.events()
	if err := h.c.Reconcile(t.Context(), "ml/r"); err != nil {
		t.Fatal(err)
	}
	ck := h.get(t, "r")
	c := meta.FindStatusCondition(ck.Status.Conditions, kv1.CheckpointComplete)
	if ck.Status.Phase != kv1.PhaseFailed || c == nil || c.Reason != string(engine.CauseInsufficientGPUMemory) {
		t.Fatalf("status %+v, want Failed with reason InsufficientGPUMemory", ck.Status)
	}
	if meta.FindStatusCondition(ck.Status.Conditions, kv1.CheckpointRolledBack) != nil {
		t.Error("a refusal that changed nothing has a RolledBack condition")
	}
	if got := h.pod(t, "train").Annotations[kv1.AnnotationState]; got != "Suspended" {
		t.Errorf("pod state %q, want Suspended", got)
	}
	ev := h.events()
	if len(ev) != 2 || !strings.HasPrefix(ev[1], "Warning ResumeDeferred Resume deferred, the pod stays suspended: not enough free gpu memory to restore: gpu "+gpu0+" has 20Gi free, needs 30Gi") {
		t.Errorf("events %q, want Resuming and ResumeDeferred saying what is short", ev)
	}
	for _, call := range h.d.Calls() {
		if call.Name == "CheckpointProcessRestore" {
			t.Fatal("the driver was asked to restore")
		}
	}
}
