package engine

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/nodeagent/podmap"
)

// restarted suspends train on h's engine and returns a new engine on the same driver: the agent
// restarted and knows nothing.
func restarted(t *testing.T, h *harness, cfg Config) (*Engine, Result) {
	t.Helper()
	res, err := h.e.Suspend(t.Context(), train, 0)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.StepTimeout == 0 {
		cfg.StepTimeout = h.e.cfg.StepTimeout
	}
	return New(h.d, noFinder{}, fixedMemory(100*gib), h.d, h.d, cfg, h.clock), res
}

// noFinder sees no process, as NVML sees no parked one.
type noFinder struct{}

func (noFinder) Processes(_ context.Context, _ podmap.PodRef) ([]Process, error) { return nil, nil }

func TestRecoverSuspendedPod(t *testing.T) {
	h := newHarness(t, 100*gib, Config{})
	e, res := restarted(t, h, Config{RestoreMargin: DefaultRestoreMargin})
	// The recorded footprint of pid 101 is larger than what it holds in the fake: the guard
	// must use the recorded one.
	recorded := res.Parked
	recorded[1].Footprint = map[cuda.UUID]int64{gpu1: 40 * gib}
	// pid 1 is the container's init, without CUDA.
	pids := map[types.UID][]int{train.UID: {1, 100, 101}}
	got := e.Recover(t.Context(), pids, map[types.UID]KnownPod{train.UID: {Ref: train, GPUs: []cuda.UUID{gpu0, gpu1}, Recorded: recorded}})
	if diff := cmp.Diff(Recovery{Suspended: []podmap.PodRef{train}}, got); diff != "" {
		t.Fatalf("recovery (-want +got):\n%s", diff)
	}
	if b, ok := e.Parked(train.UID); !ok || b != 50*gib {
		t.Errorf("parked = %d, %v; want 50Gi held", b, ok)
	}
	// 45 GiB elsewhere on gpu1 leave 35 GiB: its 20 GiB of data would fit, its recorded 40 GiB do not.
	if err := h.d.AddProcess(500, gpu1, uint64(45*gib)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Resume(t.Context(), train, []cuda.UUID{gpu0, gpu1}, nil); CauseOf(err) != CauseInsufficientGPUMemory {
		t.Fatalf("Resume = %v, want InsufficientGPUMemory from the recorded footprint", err)
	}
	h.d.RemoveProcess(500)
	if _, err := e.Resume(t.Context(), train, []cuda.UUID{gpu0, gpu1}, nil); err != nil {
		t.Fatalf("Resume after recovery: %v", err)
	}
	if states, _ := h.snapshot(); !cmp.Equal(running("1", "2"), states) {
		t.Errorf("states %v, want running", states)
	}
}

func TestRecoverEndsProcessesOfGonePods(t *testing.T) {
	h := newHarness(t, 100*gib, Config{})
	e, _ := restarted(t, h, Config{})
	// A running CUDA process of another gone pod is not parked: the kubelet's, not ours.
	if err := h.d.AddProcess(300, gpu2, uint64(gib)); err != nil {
		t.Fatal(err)
	}
	got := e.Recover(t.Context(), map[types.UID][]int{train.UID: trainPs, "uid-other": {300}}, nil)
	want := Recovery{Ended: []EndedProcess{{PID: 100, PodUID: train.UID}, {PID: 101, PodUID: train.UID}}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("recovery (-want +got):\n%s", diff)
	}
	for _, pid := range trainPs {
		if _, ok := h.d.Process(pid); ok {
			t.Errorf("parked pid %d of a gone pod still exists", pid)
		}
	}
	if _, ok := h.d.Process(300); !ok {
		t.Error("a running process was ended")
	}
	if len(e.SuspendedPods()) != 0 {
		t.Error("a gone pod is held suspended")
	}
}

func TestRecoverUnlocksLockedProcesses(t *testing.T) {
	h := newHarness(t, 100*gib, Config{})
	// The old agent died between lock and checkpoint.
	for _, pid := range trainPs {
		if err := h.d.CheckpointProcessLock(pid, 0); err != nil {
			t.Fatal(err)
		}
	}
	e := New(h.d, noFinder{}, fixedMemory(100*gib), h.d, h.d, Config{StepTimeout: h.e.cfg.StepTimeout}, h.clock)
	got := e.Recover(t.Context(), map[types.UID][]int{train.UID: trainPs}, map[types.UID]KnownPod{train.UID: {Ref: train}})
	if diff := cmp.Diff(Recovery{}, got); diff != "" {
		t.Errorf("recovery (-want +got):\n%s", diff)
	}
	if states, _ := h.snapshot(); !cmp.Equal(running("1", "2"), states) {
		t.Errorf("states %v, want running", states)
	}
}

func TestRecoverRefusals(t *testing.T) {
	t.Run("some parked, some running", func(t *testing.T) {
		h := newHarness(t, 100*gib, Config{})
		for _, err := range []error{h.d.CheckpointProcessLock(100, 0), h.d.CheckpointProcessCheckpoint(100)} {
			if err != nil {
				t.Fatal(err)
			}
		}
		e := New(h.d, noFinder{}, fixedMemory(100*gib), h.d, h.d, Config{StepTimeout: h.e.cfg.StepTimeout}, h.clock)
		got := e.Recover(t.Context(), map[types.UID][]int{train.UID: trainPs}, map[types.UID]KnownPod{train.UID: {Ref: train}})
		if len(got.Errors) != 1 || len(got.Suspended) != 0 {
			t.Errorf("recovery %+v, want one error and nothing taken over", got)
		}
		if _, ok := h.d.Process(100); !ok {
			t.Error("a process of a known pod was ended")
		}
	})
	t.Run("nothing recorded, several gpus", func(t *testing.T) {
		h := newHarness(t, 100*gib, Config{})
		e, _ := restarted(t, h, Config{})
		got := e.Recover(t.Context(), map[types.UID][]int{train.UID: trainPs}, map[types.UID]KnownPod{train.UID: {Ref: train, GPUs: []cuda.UUID{gpu0, gpu1}, Declared: gib}})
		if len(got.Errors) != 1 || len(got.Suspended) != 0 {
			t.Errorf("recovery %+v, want one error and nothing taken over", got)
		}
	})
	t.Run("nothing recorded, one gpu: the declared memory", func(t *testing.T) {
		h := newHarness(t, 100*gib, Config{})
		e, _ := restarted(t, h, Config{})
		got := e.Recover(t.Context(), map[types.UID][]int{train.UID: {100}}, map[types.UID]KnownPod{train.UID: {Ref: train, GPUs: []cuda.UUID{gpu0}, Declared: 35 * gib}})
		if diff := cmp.Diff(Recovery{Suspended: []podmap.PodRef{train}}, got); diff != "" {
			t.Fatalf("recovery (-want +got):\n%s", diff)
		}
		if b, _ := e.Parked(train.UID); b != 35*gib {
			t.Errorf("parked %d, want the declared 35Gi", b)
		}
	})
}

// TestEndDeletedPod: a suspended pod that is deleted has its parked processes ended, and their
// host memory is free.
func TestEndDeletedPod(t *testing.T) {
	h := newHarness(t, 100*gib, Config{})
	if _, err := h.e.Suspend(t.Context(), train, 0); err != nil {
		t.Fatal(err)
	}
	ended, err := h.e.End(t.Context(), train.UID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(trainPs, ended); diff != "" {
		t.Errorf("ended (-want +got):\n%s", diff)
	}
	for _, pid := range trainPs {
		if _, ok := h.d.Process(pid); ok {
			t.Errorf("pid %d still exists", pid)
		}
	}
	if _, ok := h.e.Parked(train.UID); ok {
		t.Error("the engine still holds the deleted pod")
	}
	// A running pod is not the engine's to end.
	h2 := newHarness(t, 100*gib, Config{})
	if ended, err := h2.e.End(t.Context(), train.UID); err != nil || len(ended) != 0 {
		t.Errorf("End of a running pod = %v, %v; want nothing", ended, err)
	}
	if _, ok := h2.d.Process(100); !ok {
		t.Error("a running pod's process was ended")
	}
}
