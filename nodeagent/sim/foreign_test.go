package sim

import (
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/podmap"
)

func TestParseForeignMemory(t *testing.T) {
	tests := []struct {
		in      string
		want    map[int]uint64
		wantErr bool
	}{
		{in: "", want: map[int]uint64{}},
		{in: " 0=20Gi , 1=512Mi", want: map[int]uint64{0: 20 << 30, 1: 512 << 20}},
		{in: "1=0", want: map[int]uint64{1: 0}},
		{in: "2=1Gi", wantErr: true},
		{in: "-1=1Gi", wantErr: true},
		{in: "0=1Gi,0=2Gi", wantErr: true},
		{in: "0", wantErr: true},
		{in: "0=lots", wantErr: true},
		{in: "0=-1Gi", wantErr: true},
	}
	for _, tc := range tests {
		got, err := ParseForeignMemory(tc.in, 2)
		if (err != nil) != tc.wantErr {
			t.Errorf("ParseForeignMemory(%q) error = %v, want error %v", tc.in, err, tc.wantErr)
			continue
		}
		if diff := cmp.Diff(tc.want, got); err == nil && diff != "" {
			t.Errorf("ParseForeignMemory(%q) (-want +got):\n%s", tc.in, diff)
		}
	}
}

func FuzzParseForeignMemory(f *testing.F) {
	for _, s := range []string{"", "0=20Gi", "0=1Gi,1=2Gi", "x=1", "0=", "=", ",,", "0=1e30", "3=1Ki"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseForeignMemory(s, 4)
		if err != nil {
			return
		}
		for i := range got {
			if i < 0 || i >= 4 {
				t.Fatalf("ParseForeignMemory(%q) accepted gpu index %d", s, i)
			}
		}
	})
}

// TestForeignMemoryAndRestoreGuard: memory a process outside Kybernate takes on a simulated GPU
// shows in NVML, and the engine's restore guard keeps a suspended pod parked until it is free.
func TestForeignMemoryAndRestoreGuard(t *testing.T) {
	clk := testingclock.NewFakeClock(epoch)
	m, err := NewMachine("kwok-node-0", "NVIDIA-H100-80GB-HBM3", 1, clk)
	if err != nil {
		t.Fatal(err)
	}
	m.SetHostMemory(1 << 40)
	g := m.GPUs()
	if _, errs := m.SyncPods([]*v1.Pod{gpuPod("train", g, "40Gi")}); len(errs) > 0 {
		t.Fatal(errs)
	}
	e := engine.New(m.Driver(), m, m, m, m, engine.Config{LockTimeout: time.Second, StepTimeout: time.Minute, RestoreMargin: engine.DefaultRestoreMargin}, clk)
	if _, err := e.Suspend(t.Context(), ref("train"), 0); err != nil {
		t.Fatal(err)
	}
	if err := m.SetForeignMemory(map[int]uint64{0: 50 << 30}); err != nil {
		t.Fatal(err)
	}
	inv, err := m.Inventory().Read(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if got := inv.GPUs[0].Processes; len(got) != 1 || got[0].PID != foreignPID || got[0].UsedBytes != 50*gib {
		t.Errorf("NVML processes %+v, want the foreign one with 50Gi", got)
	}
	if _, err := m.PodOfPID(t.Context(), foreignPID); !errors.Is(err, podmap.ErrNotInPod) {
		t.Errorf("foreign pid maps to a pod: %v", err)
	}
	if _, err := e.Resume(t.Context(), ref("train"), g, nil); engine.CauseOf(err) != engine.CauseInsufficientGPUMemory {
		t.Fatalf("Resume with 30Gi free = %v, want InsufficientGPUMemory", err)
	}
	if err := m.SetForeignMemory(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Resume(t.Context(), ref("train"), g, nil); err != nil {
		t.Fatalf("Resume once the memory is free: %v", err)
	}
	// More than the GPU has left is refused and changes nothing.
	if err := m.SetForeignMemory(map[int]uint64{0: 50 << 30}); err == nil {
		t.Error("foreign memory beyond the free memory accepted")
	}
	free, _, _ := m.FreeGPUMemory(t.Context())
	if want := int64(80*gib - 40*gib); free[g[0]] != want {
		t.Errorf("free memory %d, want %d", free[g[0]], want)
	}
}

// TestKillParked: a killed parked process's host memory returns.
func TestKillParked(t *testing.T) {
	clk := testingclock.NewFakeClock(epoch)
	m, err := NewMachine("kwok-node-0", "NVIDIA-H100-80GB-HBM3", 1, clk)
	if err != nil {
		t.Fatal(err)
	}
	m.SetHostMemory(100 * gib)
	if _, errs := m.SyncPods([]*v1.Pod{gpuPod("train", m.GPUs(), "40Gi")}); len(errs) > 0 {
		t.Fatal(errs)
	}
	e := engine.New(m.Driver(), m, m, m, m, engine.Config{LockTimeout: time.Second, StepTimeout: time.Minute}, clk)
	if _, err := e.Suspend(t.Context(), ref("train"), 0); err != nil {
		t.Fatal(err)
	}
	if avail, _ := m.MemAvailable(); avail != 60*gib {
		t.Fatalf("host memory available %d while parked, want 60Gi", avail)
	}
	ended, err := e.End(t.Context(), "uid-train")
	if err != nil || len(ended) != 1 {
		t.Fatalf("End = %v, %v; want one process ended", ended, err)
	}
	if avail, _ := m.MemAvailable(); avail != 100*gib {
		t.Errorf("host memory available %d after the end, want all 100Gi back", avail)
	}
	if got := m.ProcessesOf("uid-train"); len(got) != 0 {
		t.Errorf("processes left: %+v", got)
	}
}
