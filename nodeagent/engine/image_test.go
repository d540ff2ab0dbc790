package engine

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/cuda/fake"
	"github.com/kybernate/kybernate/nodeagent/podmap"
)

var restored = podmap.PodRef{Namespace: "ml", Name: "train-2", UID: "uid-train-2"}

// restoredProcess adds pid 200 on gpu0 and checkpoints it, as CRIU leaves a process restored
// from an image; pid 1 is the container's init without CUDA.
func restoredProcess(t *testing.T, h *harness) {
	t.Helper()
	if err := errors.Join(h.d.AddProcess(200, gpu0, uint64(4*gib)), h.d.CheckpointProcessLock(200, 0), h.d.CheckpointProcessCheckpoint(200)); err != nil {
		t.Fatal(err)
	}
}

func stateOf(h *harness, pid int) string {
	p, ok := h.d.Process(pid)
	if !ok {
		return "gone"
	}
	return p.State.String() + "@" + p.GPU.String()[len(p.GPU.String())-1:]
}

func TestRestoreImage(t *testing.T) {
	refused := cuda.NewError("cuCheckpointProcessRestore", cuda.ErrorInvalidValue)
	tests := []struct {
		name      string
		pids      []int
		from, to  []cuda.UUID
		hook      fake.Hook
		wantCause Cause
		wantErr   string
		// wantState is pid 200's state afterwards: on failure the process is left as it
		// was (the caller stops the container), nothing is deleted.
		wantState string
		wantSteps []string
	}{
		{name: "onto another gpu of the node", pids: []int{1, 200}, from: []cuda.UUID{gpu0}, to: []cuda.UUID{gpu2},
			wantState: "RUNNING@3", wantSteps: []string{StepFind, StepRestore, StepUnlock}},
		{name: "onto the same gpu", pids: []int{200}, from: []cuda.UUID{gpu0}, to: []cuda.UUID{gpu0},
			wantState: "RUNNING@1", wantSteps: []string{StepFind, StepRestore, StepUnlock}},
		{name: "refused restore is retried", pids: []int{200}, from: []cuda.UUID{gpu0}, to: []cuda.UUID{gpu1},
			hook: failOn(fake.CallRestore, 200, refused, 1), wantState: "RUNNING@2", wantSteps: []string{StepFind, StepRestore, StepUnlock}},
		{name: "no checkpointed process", pids: []int{1, 100}, from: []cuda.UUID{gpu0}, to: []cuda.UUID{gpu1},
			wantCause: CauseNoProcesses, wantErr: "none of the container's 2 processes", wantState: "CHECKPOINTED@1"},
		{name: "no process at all", from: []cuda.UUID{gpu0}, to: []cuda.UUID{gpu1},
			wantCause: CauseNoProcesses, wantState: "CHECKPOINTED@1"},
		{name: "target not on the node", pids: []int{200}, from: []cuda.UUID{gpu0}, to: []cuda.UUID{{9}},
			wantCause: CauseInvalidTarget, wantErr: "not a gpu of the node", wantState: "CHECKPOINTED@1"},
		{name: "one target for two gpus", pids: []int{200}, from: []cuda.UUID{gpu0, gpu1}, to: []cuda.UUID{gpu2},
			wantCause: CauseInvalidTarget, wantErr: "1 target gpus for an image of 2 gpus", wantState: "CHECKPOINTED@1"},
		{name: "restore keeps failing", pids: []int{200}, from: []cuda.UUID{gpu0}, to: []cuda.UUID{gpu1},
			hook: failOn(fake.CallRestore, 200, refused, 100), wantCause: CauseRestoreFailed, wantErr: "refused 2 times", wantState: "CHECKPOINTED@1"},
		{name: "unlock fails", pids: []int{200}, from: []cuda.UUID{gpu0}, to: []cuda.UUID{gpu1},
			hook: failOn(fake.CallUnlock, 200, errors.New("unlock exploded"), 100), wantCause: CauseUnlockFailed, wantErr: "unlock exploded", wantState: "LOCKED@2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, 100*gib, Config{RestoreRetries: 2})
			restoredProcess(t, h)
			h.d.SetHook(tt.hook)
			res, err := h.e.RestoreImage(t.Context(), restored, ImageRestore{PIDs: tt.pids, From: tt.from, To: tt.to, Bytes: 4 * gib})
			h.d.SetHook(nil)
			if tt.wantCause != "" {
				if CauseOf(err) != tt.wantCause || RolledBack(err) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error %v, want cause %s, not rolled back, containing %q", err, tt.wantCause, tt.wantErr)
				}
			} else if err != nil {
				t.Fatalf("RestoreImage: %v", err)
			} else {
				var steps []string
				for _, s := range res.Steps {
					steps = append(steps, s.Name)
				}
				if diff := cmp.Diff(tt.wantSteps, steps); diff != "" || res.Bytes != 4*gib || !cmp.Equal(tt.to, res.GPUs) {
					t.Errorf("result steps (-want +got):\n%s bytes %d gpus %v", diff, res.Bytes, res.GPUs)
				}
			}
			if got := stateOf(h, 200); got != tt.wantState {
				t.Errorf("pid 200 is %s, want %s", got, tt.wantState)
			}
			if got := stateOf(h, 100); got != "RUNNING@1" {
				t.Errorf("another pod's pid 100 is %s, want it untouched", got)
			}
			if h.e.Busy() {
				t.Errorf("engine still busy")
			}
		})
	}
}

// The pairs of a restore onto another gpu are a bijection over every gpu of the node.
func TestRestoreImagePairs(t *testing.T) {
	h := newHarness(t, 100*gib, Config{})
	restoredProcess(t, h)
	if _, err := h.e.RestoreImage(t.Context(), restored, ImageRestore{PIDs: []int{200}, From: []cuda.UUID{gpu0}, To: []cuda.UUID{gpu1}}); err != nil {
		t.Fatal(err)
	}
	var got []cuda.GPUPair
	for _, c := range h.d.Calls() {
		if c.Name == fake.CallRestore {
			got = c.Pairs
		}
	}
	want := []cuda.GPUPair{{Old: gpu0, New: gpu1}, {Old: gpu1, New: gpu0}, {Old: gpu2, New: gpu2}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("pairs (-want +got):\n%s", diff)
	}
}

func TestImagePairs(t *testing.T) {
	other := cuda.UUID{0xee} // a gpu of the node that wrote the image
	all := []cuda.UUID{gpu0, gpu1, gpu2}
	tests := []struct {
		name     string
		from, to []cuda.UUID
		want     []cuda.GPUPair
		wantErr  string
	}{
		{name: "same gpus", from: []cuda.UUID{gpu1}, to: []cuda.UUID{gpu1}},
		{name: "this node, moved", from: []cuda.UUID{gpu0}, to: []cuda.UUID{gpu2},
			want: []cuda.GPUPair{{Old: gpu0, New: gpu2}, {Old: gpu1, New: gpu1}, {Old: gpu2, New: gpu0}}},
		{name: "another node", from: []cuda.UUID{other}, to: []cuda.UUID{gpu1},
			want: []cuda.GPUPair{{Old: other, New: gpu1}, {Old: gpu0, New: gpu0}, {Old: gpu2, New: gpu2}}},
		{name: "partly this node", from: []cuda.UUID{other, gpu0}, to: []cuda.UUID{gpu1, gpu2}, wantErr: "partly gpus of this node"},
		{name: "target twice", from: []cuda.UUID{gpu0, gpu1}, to: []cuda.UUID{gpu2, gpu2}, wantErr: "named twice"},
		{name: "foreign target", from: []cuda.UUID{gpu0}, to: []cuda.UUID{other}, wantErr: "not a gpu of the node"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := imagePairs(all, tt.from, tt.to)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("pairs (-want +got):\n%s", diff)
			}
		})
	}
}
