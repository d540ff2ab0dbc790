// Package inventory reads a node's GPUs through NVML: every GPU's UUID, index, model and
// memory, the compute processes on it, and the driver and CUDA driver versions.
//
// NVML is reached through go-nvml's nvml.Interface: nvml.New() for the real library, which is
// opened with dlopen in Open, so binaries build and tests run without a driver; go-nvml's mock
// machines (pkg/nvml/mock/dgxh100, dgxh200) in tests and in the agent's --simulate mode.
package inventory

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Inventory is what NVML reports about a node's GPUs at one moment.
type Inventory struct {
	// DriverVersion is the NVIDIA driver version, e.g. "580.95.05".
	DriverVersion string
	// CUDADriverVersion is the CUDA driver API version as cuDriverGetVersion reports it,
	// e.g. 13000 for CUDA 13.0.
	CUDADriverVersion int32
	// GPUs in index order.
	GPUs []GPU
}

// GPU is one GPU.
type GPU struct {
	UUID             string
	Index            int32
	Model            string
	MemoryTotalBytes int64
	// MemoryUsedBytes is the memory in use by anything: processes, driver reservations.
	MemoryUsedBytes int64
	// Processes are the compute processes with memory on the GPU, by PID.
	Processes []Process
}

// Process is a compute process with memory on a GPU.
type Process struct {
	// PID in the PID namespace NVML reports in: the host's for an agent with hostPID.
	PID int32
	// UsedBytes is the process's memory on the GPU; 0 where NVML cannot tell (no permission,
	// or a Windows WDDM driver).
	UsedBytes int64
}

// Source reads a node's inventory.
type Source interface {
	Read(ctx context.Context) (*Inventory, error)
}

// Error is an NVML call that failed.
type Error struct {
	// Op is the NVML call, e.g. "nvmlDeviceGetMemoryInfo".
	Op string
	// Index of the GPU the call was about, -1 for calls about no GPU.
	Index int
	// Return is NVML's result; errors.Is(err, nvml.ERROR_NOT_SUPPORTED) works.
	Return nvml.Return
}

func (e *Error) Error() string {
	if e.Index < 0 {
		return fmt.Sprintf("%s: %v", e.Op, e.Return)
	}
	return fmt.Sprintf("%s on gpu %d: %v", e.Op, e.Index, e.Return)
}

// Unwrap returns the NVML result, so that errors.Is compares against nvml.Return values.
func (e *Error) Unwrap() error { return e.Return }

// ErrNoLibrary is wrapped by Open when libnvidia-ml.so.1 cannot be loaded: a machine without an
// NVIDIA driver, or a container without the driver's libraries.
var ErrNoLibrary = errors.New("nvml library not found: is the nvidia driver installed and its libraries mounted?")

// NVML is a Source on an nvml.Interface.
type NVML struct {
	lib nvml.Interface
}

var _ Source = (*NVML)(nil)

// Open initialises lib (dlopen of libnvidia-ml for nvml.New()) and returns a Source on it.
// Close it when done.
func Open(lib nvml.Interface) (*NVML, error) {
	if ret := lib.Init(); ret != nvml.SUCCESS {
		err := &Error{Op: "nvmlInit", Index: -1, Return: ret}
		if ret == nvml.ERROR_LIBRARY_NOT_FOUND {
			return nil, fmt.Errorf("%w: %w", ErrNoLibrary, err)
		}
		return nil, err
	}
	return &NVML{lib: lib}, nil
}

// Close shuts NVML down.
func (n *NVML) Close() error {
	if ret := n.lib.Shutdown(); ret != nvml.SUCCESS {
		return &Error{Op: "nvmlShutdown", Index: -1, Return: ret}
	}
	return nil
}

// Read asks NVML for the inventory. Any failed call fails the whole read: a partial inventory
// would make the scheduler see GPUs vanish.
func (n *NVML) Read(ctx context.Context) (*Inventory, error) {
	inv := &Inventory{}
	var ret nvml.Return
	if inv.DriverVersion, ret = n.lib.SystemGetDriverVersion(); ret != nvml.SUCCESS {
		return nil, &Error{Op: "nvmlSystemGetDriverVersion", Index: -1, Return: ret}
	}
	cudaVersion, ret := n.lib.SystemGetCudaDriverVersion()
	if ret != nvml.SUCCESS {
		return nil, &Error{Op: "nvmlSystemGetCudaDriverVersion", Index: -1, Return: ret}
	}
	inv.CUDADriverVersion = int32(cudaVersion)
	count, ret := n.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, &Error{Op: "nvmlDeviceGetCount", Index: -1, Return: ret}
	}
	for i := range count {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		g, err := readGPU(n.lib, i)
		if err != nil {
			return nil, err
		}
		inv.GPUs = append(inv.GPUs, g)
	}
	slices.SortFunc(inv.GPUs, func(a, b GPU) int { return int(a.Index - b.Index) })
	return inv, nil
}

func readGPU(lib nvml.Interface, i int) (GPU, error) {
	dev, ret := lib.DeviceGetHandleByIndex(i)
	if ret != nvml.SUCCESS {
		return GPU{}, &Error{Op: "nvmlDeviceGetHandleByIndex", Index: i, Return: ret}
	}
	g := GPU{Index: int32(i)}
	if g.UUID, ret = dev.GetUUID(); ret != nvml.SUCCESS {
		return GPU{}, &Error{Op: "nvmlDeviceGetUUID", Index: i, Return: ret}
	}
	name, ret := dev.GetName()
	if ret != nvml.SUCCESS {
		return GPU{}, &Error{Op: "nvmlDeviceGetName", Index: i, Return: ret}
	}
	g.Model = strings.TrimSpace(name)
	// Version 1 counts memory the driver reserves as used, which is what a scheduler must
	// treat as taken; it is also the call every driver and go-nvml's mocks have.
	mem, ret := dev.GetMemoryInfo()
	if ret != nvml.SUCCESS {
		return GPU{}, &Error{Op: "nvmlDeviceGetMemoryInfo", Index: i, Return: ret}
	}
	g.MemoryTotalBytes, g.MemoryUsedBytes = clamp(mem.Total), clamp(mem.Used)
	procs, ret := dev.GetComputeRunningProcesses()
	if ret != nvml.SUCCESS {
		return GPU{}, &Error{Op: "nvmlDeviceGetComputeRunningProcesses", Index: i, Return: ret}
	}
	for _, p := range procs {
		g.Processes = append(g.Processes, Process{PID: int32(p.Pid), UsedBytes: usedBytes(p.UsedGpuMemory)})
	}
	slices.SortFunc(g.Processes, func(a, b Process) int { return int(a.PID - b.PID) })
	return g, nil
}

// notAvailable is NVML_VALUE_NOT_AVAILABLE for a process's used memory: (unsigned long long)-1.
const notAvailable = ^uint64(0)

func usedBytes(v uint64) int64 {
	if v == notAvailable {
		return 0
	}
	return clamp(v)
}

func clamp(v uint64) int64 {
	if v > uint64(1<<63-1) {
		return 1<<63 - 1
	}
	return int64(v)
}

// Static is a Source that returns a fixed inventory or error, for tests of code that reads
// inventories.
type Static struct {
	Inventory *Inventory
	Err       error
}

var _ Source = (*Static)(nil)

// Read returns a deep copy of s.Inventory, or s.Err.
func (s *Static) Read(context.Context) (*Inventory, error) {
	if s.Err != nil {
		return nil, s.Err
	}
	inv := *s.Inventory
	inv.GPUs = slices.Clone(inv.GPUs)
	for i := range inv.GPUs {
		inv.GPUs[i].Processes = slices.Clone(inv.GPUs[i].Processes)
	}
	return &inv, nil
}
