package status

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/inventory"
	"github.com/kybernate/kybernate/nodeagent/podmap"
)

const gib = int64(1) << 30

var (
	t0 = metav1.NewTime(time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC))
	t1 = metav1.NewTime(t0.Add(time.Minute))

	trainer = podmap.PodRef{Namespace: "ml", Name: "trainer", UID: "uid-trainer"}
	infer   = podmap.PodRef{Namespace: "ml", Name: "infer", UID: "uid-infer"}
	big     = podmap.PodRef{Namespace: "ai", Name: "big", UID: "uid-big"}
)

func twoH100s(cudaVersion int32) *inventory.Inventory {
	return &inventory.Inventory{
		DriverVersion:     "580.95.05",
		CUDADriverVersion: cudaVersion,
		GPUs: []inventory.GPU{
			{UUID: "GPU-a", Index: 0, Model: "NVIDIA H100 80GB HBM3", MemoryTotalBytes: 80 * gib, MemoryUsedBytes: 51 * gib,
				Processes: []inventory.Process{{PID: 10, UsedBytes: 20 * gib}, {PID: 11, UsedBytes: 10 * gib}, {PID: 12, UsedBytes: 20 * gib}, {PID: 99, UsedBytes: gib}}},
			{UUID: "GPU-b", Index: 1, Model: "NVIDIA H100 80GB HBM3", MemoryTotalBytes: 80 * gib, MemoryUsedBytes: 40 * gib,
				Processes: []inventory.Process{{PID: 13, UsedBytes: 40 * gib}}},
		},
	}
}

func conditions(ready metav1.Condition, simulated bool, at metav1.Time) []metav1.Condition {
	ready.Type, ready.LastTransitionTime = kv1.GPUNodeReady, at
	sim := metav1.Condition{Type: kv1.GPUNodeSimulated, Status: metav1.ConditionFalse, Reason: ReasonRealGPUs, Message: messageReal, LastTransitionTime: at}
	if simulated {
		sim.Status, sim.Reason, sim.Message = metav1.ConditionTrue, ReasonSimulated, messageSimulated
	}
	return []metav1.Condition{ready, sim}
}

var readyReal = metav1.Condition{Status: metav1.ConditionTrue, Reason: ReasonAgentReporting, Message: messageReportingReal}

func TestDesiredStatus(t *testing.T) {
	// PIDs 10 and 11 are one pod (two processes), 12 and 13 a pod on both GPUs, 99 a host
	// process.
	pods := map[int32]podmap.PodRef{10: trainer, 11: trainer, 12: big, 13: big}
	gpusReal := []kv1.GPUStatus{
		{UUID: "GPU-a", Index: 0, Model: "NVIDIA H100 80GB HBM3", MemoryTotalBytes: 80 * gib, MemoryUsedBytes: 51 * gib, Pods: []kv1.PodGPUUsage{
			{Namespace: "ai", Name: "big", UID: "uid-big", Residency: kv1.Resident, Bytes: 20 * gib, GPUs: []string{"GPU-a", "GPU-b"}},
			{Namespace: "ml", Name: "trainer", UID: "uid-trainer", Residency: kv1.Resident, Bytes: 30 * gib, GPUs: []string{"GPU-a"}},
		}},
		{UUID: "GPU-b", Index: 1, Model: "NVIDIA H100 80GB HBM3", MemoryTotalBytes: 80 * gib, MemoryUsedBytes: 40 * gib, Pods: []kv1.PodGPUUsage{
			{Namespace: "ai", Name: "big", UID: "uid-big", Residency: kv1.Resident, Bytes: 40 * gib, GPUs: []string{"GPU-a", "GPU-b"}},
		}},
	}
	parkedInfer := kv1.PodGPUUsage{Namespace: "ml", Name: "infer", UID: "uid-infer", Residency: kv1.Suspended, Bytes: 12 * gib, GPUs: []string{"GPU-b"}}
	parkedOther := kv1.PodGPUUsage{Namespace: "a", Name: "z", Residency: kv1.Suspended, Bytes: 3 * gib}
	cfg := Config{HostMemoryReserve: 8 * gib}
	// The agent's restore margin is written as it is configured.
	withMargin := Config{HostMemoryReserve: 8 * gib, RestoreMargin: 256 << 20}

	tests := []struct {
		name string
		cur  *kv1.GPUNode
		obs  observation
		cfg  Config
		want kv1.GPUNodeStatus
	}{
		{
			name: "new node with pods on its gpus",
			obs:  observation{inv: twoH100s(13000), pods: pods, memAvailable: 100 * gib},
			cfg:  withMargin,
			want: kv1.GPUNodeStatus{
				GPUs: gpusReal, DriverVersion: "580.95.05", CUDADriverVersion: 13000, CheckpointCapability: kv1.CheckpointRemap,
				HostMemory: kv1.HostMemoryStatus{ParkableBytes: 92 * gib}, RestoreMarginBytes: 256 << 20,
				Conditions: conditions(readyReal, false, t1),
			},
		},
		{
			name: "driver without checkpoint api; no pods known",
			obs:  observation{inv: twoH100s(12040), memAvailable: 100 * gib},
			cfg:  cfg,
			want: kv1.GPUNodeStatus{
				GPUs: func() []kv1.GPUStatus {
					g := []kv1.GPUStatus{gpusReal[0], gpusReal[1]}
					g[0].Pods, g[1].Pods = nil, nil
					return g
				}(),
				DriverVersion: "580.95.05", CUDADriverVersion: 12040, CheckpointCapability: kv1.CheckpointNone,
				HostMemory: kv1.HostMemoryStatus{ParkableBytes: 92 * gib},
				Conditions: conditions(readyReal, false, t1),
			},
		},
		{
			name: "r570 driver locks and checkpoints but cannot remap",
			obs:  observation{inv: &inventory.Inventory{CUDADriverVersion: 12080}, memAvailable: 4 * gib},
			cfg:  cfg,
			want: kv1.GPUNodeStatus{
				GPUs: []kv1.GPUStatus{}, CUDADriverVersion: 12080, CheckpointCapability: kv1.CheckpointLockCheckpoint,
				// Less memory than the reserve: nothing parkable.
				HostMemory: kv1.HostMemoryStatus{ParkableBytes: 0},
				Conditions: conditions(readyReal, false, t1),
			},
		},
		{
			name: "simulated node with suspended pods",
			obs:  observation{inv: twoH100s(13000), pods: pods, suspended: []kv1.PodGPUUsage{parkedInfer, parkedOther}, memAvailable: 100 * gib},
			cfg:  Config{HostMemoryReserve: 8 * gib, Simulated: true},
			want: kv1.GPUNodeStatus{
				GPUs: gpusReal, DriverVersion: "580.95.05", CUDADriverVersion: 13000, CheckpointCapability: kv1.CheckpointRemap,
				SuspendedPods: []kv1.PodGPUUsage{parkedOther, parkedInfer},
				HostMemory:    kv1.HostMemoryStatus{ParkableBytes: 92 * gib, ParkedBytes: 15 * gib},
				Conditions: conditions(metav1.Condition{Status: metav1.ConditionTrue, Reason: ReasonAgentReporting, Message: messageReportingSimulated},
					true, t1),
			},
		},
		{
			name: "inventory fails: gpus kept, not ready",
			cur: &kv1.GPUNode{ObjectMeta: metav1.ObjectMeta{Generation: 3}, Status: kv1.GPUNodeStatus{
				GPUs: gpusReal, DriverVersion: "580.95.05", CUDADriverVersion: 13000, CheckpointCapability: kv1.CheckpointRemap,
				HostMemory: kv1.HostMemoryStatus{ParkableBytes: 92 * gib},
				Conditions: conditions(readyReal, false, t0),
			}},
			obs: observation{invErr: errors.New("nvmlDeviceGetMemoryInfo on gpu 1: ERROR_GPU_IS_LOST"), memAvailable: 100 * gib},
			cfg: cfg,
			want: kv1.GPUNodeStatus{
				GPUs: gpusReal, DriverVersion: "580.95.05", CUDADriverVersion: 13000, CheckpointCapability: kv1.CheckpointRemap,
				HostMemory: kv1.HostMemoryStatus{ParkableBytes: 92 * gib},
				Conditions: []metav1.Condition{
					{Type: kv1.GPUNodeReady, Status: metav1.ConditionFalse, Reason: ReasonInventoryFailed, ObservedGeneration: 3, LastTransitionTime: t1,
						Message: "reading GPU inventory: nvmlDeviceGetMemoryInfo on gpu 1: ERROR_GPU_IS_LOST"},
					// Unchanged status: the transition time stays.
					{Type: kv1.GPUNodeSimulated, Status: metav1.ConditionFalse, Reason: ReasonRealGPUs, Message: messageReal, ObservedGeneration: 3, LastTransitionTime: t0},
				},
			},
		},
		{
			name: "host memory moved less than a step: old value kept",
			cur: &kv1.GPUNode{Status: kv1.GPUNodeStatus{
				HostMemory: kv1.HostMemoryStatus{ParkableBytes: 92 * gib},
				Conditions: conditions(readyReal, false, t0),
			}},
			obs: observation{inv: &inventory.Inventory{}, memAvailable: 100*gib + gib/2},
			cfg: Config{HostMemoryReserve: 8 * gib, HostMemoryStep: gib},
			want: kv1.GPUNodeStatus{
				GPUs: []kv1.GPUStatus{}, CheckpointCapability: kv1.CheckpointNone,
				HostMemory: kv1.HostMemoryStatus{ParkableBytes: 92 * gib},
				Conditions: conditions(readyReal, false, t0),
			},
		},
		{
			name: "host memory moved a step",
			cur: &kv1.GPUNode{Status: kv1.GPUNodeStatus{
				HostMemory: kv1.HostMemoryStatus{ParkableBytes: 92 * gib},
				Conditions: conditions(readyReal, false, t0),
			}},
			obs: observation{inv: &inventory.Inventory{}, memAvailable: 99 * gib},
			cfg: Config{HostMemoryReserve: 8 * gib, HostMemoryStep: gib},
			want: kv1.GPUNodeStatus{
				GPUs: []kv1.GPUStatus{}, CheckpointCapability: kv1.CheckpointNone,
				HostMemory: kv1.HostMemoryStatus{ParkableBytes: 91 * gib},
				Conditions: conditions(readyReal, false, t0),
			},
		},
		{
			name: "host memory unreadable: old value kept",
			cur: &kv1.GPUNode{Status: kv1.GPUNodeStatus{
				HostMemory: kv1.HostMemoryStatus{ParkableBytes: 92 * gib},
				Conditions: conditions(readyReal, false, t0),
			}},
			obs: observation{inv: &inventory.Inventory{}, memErr: os.ErrNotExist},
			cfg: cfg,
			want: kv1.GPUNodeStatus{
				GPUs: []kv1.GPUStatus{}, CheckpointCapability: kv1.CheckpointNone,
				HostMemory: kv1.HostMemoryStatus{ParkableBytes: 92 * gib},
				Conditions: conditions(readyReal, false, t0),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := desiredStatus(tt.cur, tt.obs, tt.cfg, t1)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("desiredStatus (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseMemAvailable(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    int64
		wantErr string
	}{
		{name: "fixture", in: "testdata/meminfo", want: 2046345216 * 1024},
		{name: "no line", in: "MemTotal: 1 kB\n", wantErr: "no MemAvailable line"},
		{name: "bad unit", in: "MemAvailable: 1 MB\n", wantErr: "malformed meminfo line"},
		{name: "bad number", in: "MemAvailable: x kB\n", wantErr: "malformed meminfo line"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got int64
			var err error
			if strings.HasPrefix(tt.in, "testdata/") {
				got, err = Meminfo{Path: tt.in}.MemAvailable()
			} else {
				got, err = ParseMemAvailable(strings.NewReader(tt.in))
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %d, want %d", got, tt.want)
			}
		})
	}
}

// KiBField reads any "key: <n> kB" line: a process's VmRSS, the host's MemTotal; a file without
// the line says so (a kernel thread has no VmRSS), a malformed line is an error naming it.
func TestKiBField(t *testing.T) {
	for _, tt := range []struct {
		name, in, key string
		want          int64
		found         bool
		wantErr       string
	}{
		{name: "VmRSS", in: "Name:\tsh\nVmRSS:\t    3048 kB\nThreads:\t1\n", key: "VmRSS", want: 3048 << 10, found: true},
		{name: "kernel thread", in: "Name:\tkthreadd\nThreads:\t1\n", key: "VmRSS"},
		{name: "prefix of another key", in: "VmRSSx: 1 kB\n", key: "VmRSS"},
		{name: "bad unit", in: "VmRSS: 1 MB\n", key: "VmRSS", found: true, wantErr: `malformed status line "VmRSS: 1 MB"`},
		{name: "negative", in: "VmRSS: -1 kB\n", key: "VmRSS", found: true, wantErr: "malformed status line"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, found, err := KiBField(strings.NewReader(tt.in), "status", tt.key)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want || found != tt.found {
				t.Errorf("got %d, %v, %v; want %d, %v", got, found, err, tt.want, tt.found)
			}
		})
	}
	if n, err := (Meminfo{Path: "testdata/meminfo"}).MemTotal(); err != nil || n != 2113396476*1024 {
		t.Errorf("MemTotal of the fixture: %d, %v; want %d", n, err, 2113396476*1024)
	}
}
