package sim

import (
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
	"github.com/kybernate/kybernate/nodeagent/inventory"
	"github.com/kybernate/kybernate/nodeagent/podmap"
)

const gib = int64(1) << 30

var epoch = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

// gpuPod is a Running pod on the node with GPUs assigned.
func gpuPod(name string, gpus []cuda.UUID, memory string, annotations ...string) *v1.Pod {
	var s []string
	for _, g := range gpus {
		s = append(s, g.String())
	}
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: name, UID: types.UID("uid-" + name),
			Annotations: map[string]string{kv1.AnnotationGPUs: strings.Join(s, ",")}},
		Spec:   v1.PodSpec{NodeName: "kwok-node-0"},
		Status: v1.PodStatus{Phase: v1.PodRunning},
	}
	if memory != "" {
		pod.Annotations[kv1.AnnotationGPUMemory] = memory
	}
	for i := 0; i+1 < len(annotations); i += 2 {
		pod.Annotations[annotations[i]] = annotations[i+1]
	}
	return pod
}

func ref(name string) podmap.PodRef {
	return podmap.PodRef{Namespace: "ml", Name: name, UID: types.UID("uid-" + name)}
}

func TestNewMachine(t *testing.T) {
	tests := []struct {
		model     string
		count     int
		wantModel string
		wantMem   int64
		wantErr   string
	}{
		{model: "NVIDIA-H100-80GB-HBM3", count: 8, wantModel: "NVIDIA H100 80GB HBM3", wantMem: 80 * gib},
		{model: "NVIDIA-H200-141GB-HBM3", count: 2, wantModel: "NVIDIA H200 141GB HBM3", wantMem: 141 * gib},
		{model: "NVIDIA-A100-SXM4-80GB", count: 1, wantModel: "NVIDIA A100 SXM4 80GB", wantMem: 80 * gib},
		{model: "NVIDIA-A100-SXM4-40GB", count: 1, wantModel: "NVIDIA A100 SXM4 40GB", wantMem: 40 * gib},
		{model: "NVIDIA-GeForce-RTX-4090", count: 1, wantErr: `no simulated gpu for model "NVIDIA-GeForce-RTX-4090"`},
		{model: "NVIDIA-H100-80GB-HBM3", count: 0, wantErr: "gpu count 0 out of range 1..64"},
		{model: "NVIDIA-H100-80GB-HBM3", count: 65, wantErr: "gpu count 65 out of range 1..64"},
	}
	for _, tt := range tests {
		t.Run(tt.model, func(t *testing.T) {
			m, err := NewMachine("kwok-node-0", tt.model, tt.count, testingclock.NewFakeClock(epoch))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			inv, err := m.Inventory().Read(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			want := &inventory.Inventory{DriverVersion: DriverVersion, CUDADriverVersion: CUDADriverVersion}
			for i := range tt.count {
				want.GPUs = append(want.GPUs, inventory.GPU{
					UUID: GPUUUID("kwok-node-0", i).String(), Index: int32(i), Model: tt.wantModel, MemoryTotalBytes: tt.wantMem,
				})
			}
			if diff := cmp.Diff(want, inv); diff != "" {
				t.Errorf("inventory (-want +got):\n%s", diff)
			}
		})
	}
}

func TestGPUUUIDStable(t *testing.T) {
	a, b := GPUUUID("node-a", 0), GPUUUID("node-a", 1)
	if a == b || a != GPUUUID("node-a", 0) || a == GPUUUID("node-b", 0) {
		t.Errorf("uuids not stable and distinct: %s %s", a, b)
	}
	if _, err := cuda.ParseUUID(a.String()); err != nil {
		t.Errorf("uuid %s does not parse: %v", a, err)
	}
}

func TestSyncPods(t *testing.T) {
	m, err := NewMachine("kwok-node-0", "NVIDIA-H100-80GB-HBM3", 2, testingclock.NewFakeClock(epoch))
	if err != nil {
		t.Fatal(err)
	}
	g := m.GPUs()
	other := GPUUUID("kwok-node-1", 0)
	pending := gpuPod("pending", g[:1], "1Gi")
	pending.Status.Phase = v1.PodPending
	deleting := gpuPod("deleting", g[:1], "1Gi")
	deleting.DeletionTimestamp = &metav1.Time{Time: epoch}
	noGPUs := gpuPod("cpu-only", nil, "")

	changed, errs := m.SyncPods([]*v1.Pod{
		gpuPod("small", g[:1], "30Gi"),
		gpuPod("whole", g[1:], ""),
		gpuPod("parked", g[:1], "40Gi", kv1.AnnotationState, string(kv1.PodSuspended)),
		gpuPod("elsewhere", []cuda.UUID{other}, "1Gi"),
		gpuPod("bad-memory", g[:1], "lots"),
		pending, deleting, noGPUs,
	})
	if !changed {
		t.Error("SyncPods reported no change")
	}
	var msgs []string
	for _, e := range errs {
		msgs = append(msgs, e.Error())
	}
	wantErrs := []string{
		"pod ml/elsewhere: gpu " + other.String() + " of annotation kybernate.io/gpus is not a gpu of node kwok-node-0",
		`pod ml/bad-memory: annotation kybernate.io/gpu-memory="lots" is not a positive quantity`,
	}
	if diff := cmp.Diff(wantErrs, msgs); diff != "" {
		t.Errorf("errors (-want +got):\n%s", diff)
	}

	inv, err := m.Inventory().Read(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// parked was started first and checkpointed at once: pid 10000, not on the GPU.
	wantProcs := [][]inventory.Process{{{PID: 10001, UsedBytes: 30 * gib}}, {{PID: 10002, UsedBytes: 80 * gib}}}
	for i, gpu := range inv.GPUs {
		if diff := cmp.Diff(wantProcs[i], gpu.Processes); diff != "" {
			t.Errorf("gpu %d processes (-want +got):\n%s", i, diff)
		}
		if gpu.MemoryUsedBytes != wantProcs[i][0].UsedBytes {
			t.Errorf("gpu %d used %d, want %d", i, gpu.MemoryUsedBytes, wantProcs[i][0].UsedBytes)
		}
	}
	for pid, want := range map[int32]podmap.PodRef{10000: ref("parked"), 10001: ref("small"), 10002: ref("whole")} {
		got, err := m.PodOfPID(t.Context(), pid)
		if err != nil || got != want {
			t.Errorf("PodOfPID(%d) = %v, %v; want %v", pid, got, err, want)
		}
	}
	if _, err := m.PodOfPID(t.Context(), 1); !errors.Is(err, podmap.ErrNotInPod) {
		t.Errorf("PodOfPID(1) error %v, want ErrNotInPod", err)
	}
	wantSuspended := []kv1.PodGPUUsage{{Namespace: "ml", Name: "parked", UID: "uid-parked", Residency: kv1.Suspended, Bytes: 40 * gib, GPUs: []string{g[0].String()}}}
	if diff := cmp.Diff(wantSuspended, m.SuspendedPods()); diff != "" {
		t.Errorf("suspended (-want +got):\n%s", diff)
	}
	if got := m.ParkedBytes(); got != 40*gib {
		t.Errorf("parked %d, want %d", got, 40*gib)
	}

	// The same pods again: nothing changes. Then small finishes and whole is deleted.
	if changed, _ := m.SyncPods([]*v1.Pod{gpuPod("small", g[:1], "30Gi"), gpuPod("whole", g[1:], ""), gpuPod("parked", g[:1], "40Gi")}); changed {
		t.Error("SyncPods with the same pods reported a change")
	}
	done := gpuPod("small", g[:1], "30Gi")
	done.Status.Phase = v1.PodSucceeded
	if changed, _ := m.SyncPods([]*v1.Pod{done, gpuPod("parked", g[:1], "40Gi")}); !changed {
		t.Error("SyncPods without small and whole reported no change")
	}
	inv, _ = m.Inventory().Read(t.Context())
	for i, gpu := range inv.GPUs {
		if len(gpu.Processes) != 0 || gpu.MemoryUsedBytes != 0 {
			t.Errorf("gpu %d: processes %v used %d, want none", i, gpu.Processes, gpu.MemoryUsedBytes)
		}
	}
	if len(m.ProcessesOf("uid-parked")) != 1 {
		t.Errorf("parked lost its process")
	}
}

func TestSyncPodsDoesNotOverfill(t *testing.T) {
	m, err := NewMachine("kwok-node-0", "NVIDIA-H100-80GB-HBM3", 2, testingclock.NewFakeClock(epoch))
	if err != nil {
		t.Fatal(err)
	}
	g := m.GPUs()
	_, errs := m.SyncPods([]*v1.Pod{gpuPod("a", g[:1], "60Gi"), gpuPod("b", g, "30Gi")})
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "pod ml/b: simulated process on gpu "+g[0].String()) {
		t.Fatalf("errors %v, want one for b not fitting on gpu 0", errs)
	}
	// b is all or nothing: nothing of it stays on gpu 1.
	if used, _ := m.Driver().UsedMem(g[1]); used != 0 {
		t.Errorf("gpu 1 has %d bytes used, want 0", used)
	}
	if got := m.ProcessesOf("uid-b"); len(got) != 0 {
		t.Errorf("b has processes %v, want none", got)
	}
}

func TestProgressOnlyWhileResident(t *testing.T) {
	clk := testingclock.NewFakeClock(epoch)
	m, err := NewMachine("kwok-node-0", "NVIDIA-H100-80GB-HBM3", 1, clk)
	if err != nil {
		t.Fatal(err)
	}
	g := m.GPUs()
	// An agent restart: the pod had 100 s of progress.
	if _, errs := m.SyncPods([]*v1.Pod{gpuPod("train", g, "10Gi", AnnotationProgress, "100")}); len(errs) != 0 {
		t.Fatal(errs)
	}
	pid := m.ProcessesOf("uid-train")[0].PID
	d := m.Driver()
	step := func(dt time.Duration) {
		clk.Step(dt)
		m.Tick()
	}

	step(30 * time.Second)
	if got := m.Progress()[ref("train")]; got != 130*time.Second {
		t.Errorf("progress while running %v, want 130s", got)
	}
	if err := errors.Join(d.CheckpointProcessLock(pid, time.Second), d.CheckpointProcessCheckpoint(pid)); err != nil {
		t.Fatal(err)
	}
	m.Tick()
	step(time.Hour)
	if got := m.Progress()[ref("train")]; got != 130*time.Second {
		t.Errorf("progress while suspended %v, want 130s", got)
	}
	if err := errors.Join(d.CheckpointProcessRestore(pid, nil), d.CheckpointProcessUnlock(pid)); err != nil {
		t.Fatal(err)
	}
	m.Tick()
	step(5 * time.Second)
	if got := m.Progress()[ref("train")]; got != 135*time.Second {
		t.Errorf("progress after resume %v, want 135s", got)
	}
	if got := FormatProgress(m.Progress()[ref("train")]); got != "135" {
		t.Errorf("formatted %q, want 135", got)
	}
}

// AnnotationFail makes the named driver calls fail for the pod's processes only, and can be
// added or removed while the pod runs.
func TestInjectedFaults(t *testing.T) {
	m, err := NewMachine("kwok-node-0", "NVIDIA-H100-80GB-HBM3", 2, testingclock.NewFakeClock(epoch))
	if err != nil {
		t.Fatal(err)
	}
	g := m.GPUs()
	faulty := gpuPod("faulty", g[:1], "10Gi", AnnotationFail, "Checkpoint")
	healthy := gpuPod("healthy", g[1:], "10Gi")
	if _, errs := m.SyncPods([]*v1.Pod{faulty, healthy}); len(errs) != 0 {
		t.Fatal(errs)
	}
	d := m.Driver()
	bad, good := m.ProcessesOf("uid-faulty")[0].PID, m.ProcessesOf("uid-healthy")[0].PID
	if err := d.CheckpointProcessLock(bad, time.Second); err != nil {
		t.Fatalf("lock of the faulty pod: %v, want success (only Checkpoint fails)", err)
	}
	if err := d.CheckpointProcessCheckpoint(bad); !errors.Is(err, cuda.ErrUnknown) {
		t.Errorf("checkpoint of the faulty pod: %v, want CUDA_ERROR_UNKNOWN", err)
	}
	if err := errors.Join(d.CheckpointProcessLock(good, time.Second), d.CheckpointProcessCheckpoint(good)); err != nil {
		t.Errorf("suspending the healthy pod: %v", err)
	}
	// The annotation removed: the fault is gone.
	delete(faulty.Annotations, AnnotationFail)
	if _, errs := m.SyncPods([]*v1.Pod{faulty, healthy}); len(errs) != 0 {
		t.Fatal(errs)
	}
	if err := d.CheckpointProcessCheckpoint(bad); err != nil {
		t.Errorf("checkpoint after the fault was removed: %v", err)
	}

	typo := gpuPod("typo", g[:1], "10Gi", AnnotationFail, "Lokc")
	if _, errs := m.SyncPods([]*v1.Pod{typo}); len(errs) != 1 || !strings.Contains(errs[0].Error(), `"Lokc" is not one of Lock, Checkpoint, Restore, Unlock`) {
		t.Errorf("errors %v, want one naming the bad call", errs)
	}
}
