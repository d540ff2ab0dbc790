package inventory

import (
	"errors"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh200"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"github.com/google/go-cmp/cmp"
)

const gib = 1 << 30

// machine returns a mock server whose devices have fixed UUIDs, the given processes and used
// memory, as NVML would report them.
func machine(s *server.Server, procs map[int][]nvml.ProcessInfo, used map[int]uint64) *server.Server {
	for i, d := range s.Devices {
		dev := d.(*server.Device)
		dev.UUID = uuidOf(i)
		dev.MemoryInfo.Used = used[i]
		dev.MemoryInfo.Free = dev.MemoryInfo.Total - used[i]
		p := procs[i]
		dev.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) { return p, nvml.SUCCESS }
	}
	return s
}

func uuidOf(i int) string {
	return "GPU-00000000-0000-0000-0000-00000000000" + string(rune('0'+i))
}

func TestRead(t *testing.T) {
	h100Total := int64(80 * gib)
	tests := []struct {
		name string
		lib  *server.Server
		want *Inventory
	}{
		{
			name: "h100 with processes on two gpus",
			lib: machine(dgxh100.NewWithGPUs(gpus.Multiple(2, gpus.H100_SXM5_80GB)...),
				map[int][]nvml.ProcessInfo{
					// Unsorted on purpose; the second one has no readable memory.
					1: {{Pid: 4200, UsedGpuMemory: 30 * gib}, {Pid: 17, UsedGpuMemory: ^uint64(0)}},
				},
				map[int]uint64{1: 31 * gib}),
			want: &Inventory{
				DriverVersion:     "550.54.15",
				CUDADriverVersion: 12040,
				GPUs: []GPU{
					{UUID: uuidOf(0), Index: 0, Model: "NVIDIA H100 80GB HBM3", MemoryTotalBytes: h100Total},
					{UUID: uuidOf(1), Index: 1, Model: "NVIDIA H100 80GB HBM3", MemoryTotalBytes: h100Total, MemoryUsedBytes: 31 * gib,
						Processes: []Process{{PID: 17}, {PID: 4200, UsedBytes: 30 * gib}}},
				},
			},
		},
		{
			name: "h200 machine",
			lib:  machine(dgxh200.New(), nil, nil),
			want: func() *Inventory {
				inv := &Inventory{DriverVersion: "550.54.15", CUDADriverVersion: 12040}
				for i := range 8 {
					inv.GPUs = append(inv.GPUs, GPU{UUID: uuidOf(i), Index: int32(i), Model: "NVIDIA H200 141GB HBM3e", MemoryTotalBytes: 144384 << 20})
				}
				return inv
			}(),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, err := Open(tt.lib)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			got, err := src.Read(t.Context())
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Read (-want +got):\n%s", diff)
			}
			if err := src.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
	}
}

func TestReadErrors(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(s *server.Server)
		wantIs  error
		wantMsg string
	}{
		{
			name: "gpu lost while reading memory",
			mutate: func(s *server.Server) {
				s.Devices[1].(*server.Device).GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) { return nvml.Memory{}, nvml.ERROR_GPU_IS_LOST }
			},
			wantIs:  nvml.ERROR_GPU_IS_LOST,
			wantMsg: "nvmlDeviceGetMemoryInfo on gpu 1: ERROR_GPU_IS_LOST",
		},
		{
			name: "processes not readable",
			mutate: func(s *server.Server) {
				s.Devices[0].(*server.Device).GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) { return nil, nvml.ERROR_NO_PERMISSION }
			},
			wantIs:  nvml.ERROR_NO_PERMISSION,
			wantMsg: "nvmlDeviceGetComputeRunningProcesses on gpu 0: ERROR_NO_PERMISSION",
		},
		{
			name: "no cuda version",
			mutate: func(s *server.Server) {
				s.SystemGetCudaDriverVersionFunc = func() (int, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
			},
			wantIs:  nvml.ERROR_NOT_SUPPORTED,
			wantMsg: "nvmlSystemGetCudaDriverVersion: ERROR_NOT_SUPPORTED",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := machine(dgxh100.New(), nil, nil)
			tt.mutate(s)
			src, err := Open(s)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			_, err = src.Read(t.Context())
			if !errors.Is(err, tt.wantIs) {
				t.Errorf("Read error %v, want one matching %v", err, tt.wantIs)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("Read error %T, want *Error", err)
			}
			if diff := cmp.Diff(tt.wantMsg, err.Error()); diff != "" {
				t.Errorf("message (-want +got):\n%s", diff)
			}
		})
	}
}

func TestOpenWithoutDriver(t *testing.T) {
	s := dgxh100.New()
	s.InitFunc = func() nvml.Return { return nvml.ERROR_LIBRARY_NOT_FOUND }
	_, err := Open(s)
	if !errors.Is(err, ErrNoLibrary) || !errors.Is(err, nvml.ERROR_LIBRARY_NOT_FOUND) {
		t.Errorf("Open error %v, want ErrNoLibrary wrapping ERROR_LIBRARY_NOT_FOUND", err)
	}
}

// TestOpenRealLibrary runs against the real NVML where there is one and checks the error that
// machines without a driver get otherwise.
func TestOpenRealLibrary(t *testing.T) {
	src, err := Open(nvml.New())
	if errors.Is(err, ErrNoLibrary) {
		return // the expected outcome on machines without an NVIDIA driver
	}
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer src.Close()
	inv, err := src.Read(t.Context())
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	for _, g := range inv.GPUs {
		if g.UUID == "" || g.MemoryTotalBytes <= 0 {
			t.Errorf("gpu %d: want a uuid and memory, got %+v", g.Index, g)
		}
	}
}
