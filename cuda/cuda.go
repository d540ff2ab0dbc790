// Package cuda is Kybernate's only binding to the NVIDIA CUDA driver (libcuda).
//
// The driver is opened with dlopen inside New, never linked, so every binary
// that imports this package builds and its unit tests run on machines without
// a GPU or driver. Callers program against Interface; package cuda/fake holds
// an in-memory implementation with the driver's checkpoint state machine.
//
// Besides the few device, context and memory calls that a probe needs, the
// package wraps the driver's process checkpoint API (cuCheckpointProcess*,
// r570+), which moves a process's GPU memory into its own host memory and back,
// optionally onto other GPUs (r580+). Failures come back as *Error, which
// carries the CUresult and matches the Err* values with errors.Is.
package cuda

import (
	"fmt"
	"time"
)

// Interface is the part of the CUDA driver API that Kybernate uses. Methods
// keep the driver's names without the "cu" prefix. Calls on a context take it
// explicitly and make it current for the calling OS thread within the same
// call, so callers need not lock goroutines to threads.
type Interface interface {
	// Init is cuInit(0). Every call below except DriverGetVersion needs it,
	// restoring a process included.
	Init() error
	// DriverGetVersion is cuDriverGetVersion: 1000*major + 10*minor, e.g. 13000.
	DriverGetVersion() (int, error)

	DeviceGetCount() (int, error)
	DeviceGet(ordinal int) (Device, error)
	DeviceGetUUID(dev Device) (UUID, error)
	DeviceGetName(dev Device) (string, error)
	DeviceTotalMem(dev Device) (uint64, error)

	// PrimaryCtxRetain retains the device's primary context (the one the CUDA
	// runtime and PyTorch use) and is this package's "context create": it
	// exists unchanged from CUDA 7 through 13, whereas cuCtxCreate changed its
	// signature in CUDA 13 (cuCtxCreate_v4).
	PrimaryCtxRetain(dev Device) (Context, error)
	// PrimaryCtxRelease releases what PrimaryCtxRetain retained.
	PrimaryCtxRelease(dev Device) error
	CtxSynchronize(ctx Context) error

	MemGetInfo(ctx Context) (free, total uint64, err error)
	MemAlloc(ctx Context, size uint64) (DevicePtr, error)
	MemFree(ctx Context, ptr DevicePtr) error
	MemsetD8(ctx Context, dst DevicePtr, value byte, n uint64) error
	// MemcpyHtoD copies all of src to dst. src may be Go memory or memory
	// from MemHostAlloc (pinned, faster).
	MemcpyHtoD(ctx Context, dst DevicePtr, src []byte) error
	// MemcpyDtoH fills all of dst from src.
	MemcpyDtoH(ctx Context, dst []byte, src DevicePtr) error
	// MemHostAlloc returns page-locked host memory that is not managed by Go;
	// free it with MemFreeHost and do not use it afterwards.
	MemHostAlloc(ctx Context, size uint64) ([]byte, error)
	MemFreeHost(ctx Context, buf []byte) error

	// CheckpointProcessGetRestoreThreadID returns the thread of process pid
	// that the driver restores from (what CRIU must keep).
	CheckpointProcessGetRestoreThreadID(pid int) (int, error)
	CheckpointProcessGetState(pid int) (ProcessState, error)
	// CheckpointProcessLock blocks further CUDA calls in pid and waits for
	// its submitted work (measured: a lock during an 8 s kernel returned when
	// the kernel ended). timeout 0 waits without limit; a lock that times out
	// returns CUDA_ERROR_NOT_READY (matches ErrTimeout) and leaves pid
	// RUNNING. A pid without CUDA gives CUDA_ERROR_NOT_INITIALIZED, a pid
	// without a process CUDA_ERROR_OPERATING_SYSTEM (driver 580).
	CheckpointProcessLock(pid int, timeout time.Duration) error
	// CheckpointProcessCheckpoint moves a LOCKED process's GPU memory into
	// its host memory and releases its GPUs: LOCKED -> CHECKPOINTED.
	CheckpointProcessCheckpoint(pid int) error
	// CheckpointProcessRestore brings a CHECKPOINTED process back onto GPUs:
	// CHECKPOINTED -> LOCKED. No pairs restores onto the GPUs it left; pairs
	// (driver 13.0+) remap GPUs and must be a bijection over every GPU the
	// caller sees (see RemapPairs). A refused restore leaves it CHECKPOINTED.
	CheckpointProcessRestore(pid int, pairs []GPUPair) error
	// CheckpointProcessUnlock lets a LOCKED process call CUDA again.
	CheckpointProcessUnlock(pid int) error

	// Close releases the library. The Interface must not be used afterwards.
	Close() error
}

// Device is a CUdevice: an ordinal among the GPUs this process sees.
type Device int

// Context is a CUcontext handle. It is a C pointer, never dereferenced in Go.
type Context uintptr

// DevicePtr is a CUdeviceptr: an address in GPU memory.
type DevicePtr uint64

// ProcessState is a CUprocessState.
type ProcessState int

// The states of a process under the checkpoint API.
const (
	ProcessStateRunning      ProcessState = 0
	ProcessStateLocked       ProcessState = 1
	ProcessStateCheckpointed ProcessState = 2
	ProcessStateFailed       ProcessState = 3
)

// String returns the state as the driver names it, without CU_PROCESS_STATE_.
func (s ProcessState) String() string {
	switch s {
	case ProcessStateRunning:
		return "RUNNING"
	case ProcessStateLocked:
		return "LOCKED"
	case ProcessStateCheckpointed:
		return "CHECKPOINTED"
	case ProcessStateFailed:
		return "FAILED"
	}
	return fmt.Sprintf("ProcessState(%d)", int(s))
}

// GPUPair maps the GPU a process used (Old) to the one it is restored onto
// (New), a CUcheckpointGpuPair.
type GPUPair struct {
	Old UUID
	New UUID
}

// Driver versions (cuDriverGetVersion) at which checkpoint features appeared.
const (
	// VersionCheckpoint is CUDA 12.8 (driver r570): the six
	// cuCheckpointProcess* calls.
	VersionCheckpoint = 12080
	// VersionRemap is CUDA 13.0 (driver r580): GPU pairs on restore.
	VersionRemap = 13000
)

// Capability is what a driver version offers the checkpoint engine.
type Capability struct {
	DriverVersion int
	// Checkpoint: lock, checkpoint, restore in place, unlock.
	Checkpoint bool
	// Remap: restore onto other GPUs.
	Remap bool
}

// CapabilityOf derives the capability from a cuDriverGetVersion value.
func CapabilityOf(driverVersion int) Capability {
	return Capability{
		DriverVersion: driverVersion,
		Checkpoint:    driverVersion >= VersionCheckpoint,
		Remap:         driverVersion >= VersionRemap,
	}
}

// CheckCheckpoint returns an error matching ErrCheckpointUnsupported and
// ErrNotSupported unless the driver has the checkpoint API.
func (c Capability) CheckCheckpoint() error {
	if c.Checkpoint {
		return nil
	}
	return fmt.Errorf("%w: driver supports CUDA %s, need %s or newer: %w",
		ErrCheckpointUnsupported, FormatVersion(c.DriverVersion), FormatVersion(VersionCheckpoint), ErrNotSupported)
}

// CheckRemap returns an error matching ErrRemapUnsupported and
// ErrNotSupported unless the driver can restore onto other GPUs.
func (c Capability) CheckRemap() error {
	if c.Remap {
		return nil
	}
	return fmt.Errorf("%w: driver supports CUDA %s, need %s or newer: %w",
		ErrRemapUnsupported, FormatVersion(c.DriverVersion), FormatVersion(VersionRemap), ErrNotSupported)
}

// FormatVersion renders a cuDriverGetVersion value as major.minor.
func FormatVersion(v int) string {
	return fmt.Sprintf("%d.%d", v/1000, v%1000/10)
}
