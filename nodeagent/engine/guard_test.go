package engine

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/component-base/metrics/testutil"

	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/cuda/fake"
	"github.com/kybernate/kybernate/nodeagent/inventory"
	"github.com/kybernate/kybernate/nodeagent/metrics"
	"github.com/kybernate/kybernate/nodeagent/podmap"
)

const mib = int64(1) << 20

// restores counts the restore calls the driver saw.
func restores(d *fake.Driver) int {
	n := 0
	for _, c := range d.Calls() {
		if c.Name == fake.CallRestore {
			n++
		}
	}
	return n
}

// TestRestoreGuard: a resume is refused before the driver is called unless every target GPU
// has the footprint of the processes going onto it plus the margin free.
func TestRestoreGuard(t *testing.T) {
	const margin = 256 * mib
	tests := []struct {
		name string
		// other is memory a process outside the pod holds on gpu1 while the pod is suspended.
		other int64
		to    []cuda.UUID
		want  Cause
	}{
		{name: "room", other: 80*gib - 20*gib - margin, want: ""},
		{name: "one byte short of the margin", other: 80*gib - 20*gib - margin + 1, want: CauseInsufficientGPUMemory},
		{name: "footprint fits, margin does not", other: 60 * gib, want: CauseInsufficientGPUMemory},
		{name: "moved onto the full gpu's neighbour", other: 70 * gib, to: []cuda.UUID{gpu0, gpu2}, want: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, 100*gib, Config{RestoreMargin: margin, RestoreRetries: 3})
			if _, err := h.e.Suspend(t.Context(), train, 0); err != nil {
				t.Fatal(err)
			}
			if tc.other > 0 {
				if err := h.d.AddProcess(500, gpu1, uint64(tc.other)); err != nil {
					t.Fatal(err)
				}
			}
			before := restores(h.d)
			_, err := h.e.Resume(t.Context(), train, []cuda.UUID{gpu0, gpu1}, tc.to)
			if CauseOf(err) != tc.want && !(tc.want == "" && err == nil) {
				t.Fatalf("Resume = %v, want cause %q", err, tc.want)
			}
			if tc.want == "" {
				return
			}
			if !errors.Is(err, ErrInsufficientGPUMemory) || !CauseOf(err).Retryable() || CauseOf(err).Attempted() {
				t.Errorf("error %v: want ErrInsufficientGPUMemory, retryable, not attempted", err)
			}
			if !strings.Contains(err.Error(), "needs 20Gi (the processes' footprint before the checkpoint) + 256Mi margin") {
				t.Errorf("error %q does not say what is needed", err)
			}
			if n := restores(h.d) - before; n != 0 {
				t.Errorf("%d restore calls after a guard refusal, want none", n)
			}
			states, _ := h.snapshot()
			if diff := cmp.Diff(checkpointed(), states); diff != "" {
				t.Errorf("pod not left suspended (-want +got):\n%s", diff)
			}
			// Once the memory is free, the same resume succeeds.
			h.d.RemoveProcess(500)
			if _, err := h.e.Resume(t.Context(), train, []cuda.UUID{gpu0, gpu1}, tc.to); err != nil {
				t.Fatalf("Resume after the memory was freed: %v", err)
			}
		})
	}
}

// TestResumeOutOfMemoryLosesState: when the driver refuses a restore for lack of memory anyway
// (the guard's reading was stale), the engine does not retry: the process's GPU state is gone.
// It reports GPUStateLost and refuses every later operation on the pod.
func TestResumeOutOfMemoryLosesState(t *testing.T) {
	h := newHarness(t, 100*gib, Config{RestoreRetries: 3})
	if _, err := h.e.Suspend(t.Context(), train, 0); err != nil {
		t.Fatal(err)
	}
	// The guard's reading is stale: memory was taken after it.
	h.e.gpuMem = staleMemory{}
	if err := h.d.AddProcess(500, gpu1, uint64(70*gib)); err != nil {
		t.Fatal(err)
	}
	failures := metrics.Failures.WithLabelValues(metrics.OperationResume, string(CauseGPUStateLost))
	before, _ := testutil.GetCounterMetricValue(failures)
	_, err := h.e.Resume(t.Context(), train, []cuda.UUID{gpu0, gpu1}, nil)
	if CauseOf(err) != CauseGPUStateLost || !errors.Is(err, ErrGPUStateLost) || RolledBack(err) {
		t.Fatalf("Resume = %v, want GPUStateLost, not rolled back", err)
	}
	if n := 0; true {
		for _, c := range h.d.Calls() {
			if c.Name == fake.CallRestore && c.PID == 101 {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d restores of pid 101, want 1: an out-of-memory restore is never retried", n)
		}
	}
	if after, _ := testutil.GetCounterMetricValue(failures); after-before != 1 {
		t.Errorf("GPUStateLost failures went from %v to %v, want one more", before, after)
	}
	// pid 100 was restored first and is parked again.
	if p, _ := h.d.Process(100); p.State != cuda.ProcessStateCheckpointed {
		t.Errorf("pid 100 is %v, want CHECKPOINTED again", p.State)
	}
	h.d.RemoveProcess(500)
	if _, err := h.e.Resume(t.Context(), train, []cuda.UUID{gpu0, gpu1}, nil); CauseOf(err) != CauseGPUStateLost {
		t.Errorf("later Resume = %v, want GPUStateLost without trying", err)
	}
}

// staleMemory reports every GPU empty: a reading taken before someone else allocated.
type staleMemory struct{}

func (staleMemory) FreeGPUMemory(context.Context) (free, capacity map[cuda.UUID]int64, err error) {
	out := map[cuda.UUID]int64{}
	for _, d := range devs {
		out[d.UUID] = int64(d.TotalMem)
	}
	return out, out, nil
}

func TestRestoreImageGuard(t *testing.T) {
	h := newHarness(t, 100*gib, Config{RestoreMargin: DefaultRestoreMargin})
	restoredProcess(t, h)
	if err := h.d.AddProcess(500, gpu2, uint64(60*gib)); err != nil {
		t.Fatal(err)
	}
	before := restores(h.d)
	// The image records 30 GiB; gpu2 has 20 GiB free.
	_, err := h.e.RestoreImage(t.Context(), restored, ImageRestore{PIDs: []int{1, 200}, From: []cuda.UUID{gpu0}, To: []cuda.UUID{gpu2}, Bytes: 30 * gib})
	if CauseOf(err) != CauseInsufficientGPUMemory || restores(h.d) != before {
		t.Fatalf("RestoreImage = %v with %d restore calls, want InsufficientGPUMemory and none", err, restores(h.d)-before)
	}
	if st := stateOf(h, 200); st != "CHECKPOINTED@1" {
		t.Errorf("pid 200 is %s, want CHECKPOINTED@1", st)
	}
}

func TestInventoryMemory(t *testing.T) {
	// gpu0: 1Gi reserved by the driver, a 4Gi process; gpu1 full with a 79Gi process.
	m := InventoryMemory{Inventory: &inventory.Static{Inventory: &inventory.Inventory{GPUs: []inventory.GPU{
		{UUID: gpu0.String(), MemoryTotalBytes: 80 * gib, MemoryUsedBytes: 5 * gib, Processes: []inventory.Process{{PID: 1, UsedBytes: 4 * gib}}},
		{UUID: gpu1.String(), Index: 1, MemoryTotalBytes: 80 * gib, MemoryUsedBytes: 80 * gib, Processes: []inventory.Process{{PID: 2, UsedBytes: 79 * gib}}},
	}}}}
	free, capacity, err := m.FreeGPUMemory(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[cuda.UUID]int64{gpu0: 75 * gib, gpu1: 0}, free); diff != "" {
		t.Errorf("free memory (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[cuda.UUID]int64{gpu0: 79 * gib, gpu1: 79 * gib}, capacity); diff != "" {
		t.Errorf("capacity (-want +got):\n%s", diff)
	}
	if _, _, err := (InventoryMemory{Inventory: &inventory.Static{Err: errors.New("nvml gone")}}).FreeGPUMemory(t.Context()); err == nil {
		t.Error("no error from a failing inventory")
	}
}

// TestRestoreGuardWholeGPU: a process that had its GPU to itself comes back once the GPU is
// empty: the margin is capped at what the GPU could ever offer beyond the footprint.
func TestRestoreGuardWholeGPU(t *testing.T) {
	h := newHarness(t, 200*gib, Config{RestoreMargin: DefaultRestoreMargin})
	if err := h.d.AddProcess(300, gpu2, uint64(80*gib)); err != nil {
		t.Fatal(err)
	}
	whole := podmap.PodRef{Namespace: "ml", Name: "whole", UID: "uid-whole"}
	h.finder.pids[whole.UID] = []int{300}
	if _, err := h.e.Suspend(t.Context(), whole, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := h.e.Resume(t.Context(), whole, []cuda.UUID{gpu2}, nil); err != nil {
		t.Fatalf("Resume onto its empty GPU: %v", err)
	}
}
