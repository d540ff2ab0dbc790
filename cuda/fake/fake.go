// Package fake is an in-memory cuda.Interface for tests of code that drives
// the CUDA checkpoint API, such as the node agent.
//
// It simulates GPUs (UUID, name, memory) and CUDA processes (pid, the GPU
// their memory is on, how many bytes) and follows the driver's checkpoint
// state machine per process as measured on driver 580:
//
//	RUNNING --Lock--> LOCKED --Checkpoint--> CHECKPOINTED --Restore--> LOCKED --Unlock--> RUNNING
//
// A call in the wrong state fails with CUDA_ERROR_ILLEGAL_STATE; restore pairs
// that are not a bijection over all simulated GPUs fail with
// CUDA_ERROR_INVALID_VALUE and leave the process CHECKPOINTED, as on the real
// driver. A restore the target GPU has no room for fails with
// CUDA_ERROR_OUT_OF_MEMORY and, as on driver 580, destroys the process's GPU
// state: it stays CHECKPOINTED, every later restore fails with
// CUDA_ERROR_OPERATING_SYSTEM (304) and unlock with CUDA_ERROR_ILLEGAL_STATE
// (Process.Lost). Faults can be injected per call, a process can be made busy so
// that a lock with a timeout times out, and every call is recorded.
package fake

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/kybernate/kybernate/cuda"
)

// Call names, as passed to hooks and faults: the Interface method names.
const (
	CallInit               = "Init"
	CallDriverGetVersion   = "DriverGetVersion"
	CallDeviceGetCount     = "DeviceGetCount"
	CallDeviceGet          = "DeviceGet"
	CallDeviceGetUUID      = "DeviceGetUUID"
	CallDeviceGetName      = "DeviceGetName"
	CallDeviceTotalMem     = "DeviceTotalMem"
	CallPrimaryCtxRetain   = "PrimaryCtxRetain"
	CallPrimaryCtxRelease  = "PrimaryCtxRelease"
	CallCtxSynchronize     = "CtxSynchronize"
	CallMemGetInfo         = "MemGetInfo"
	CallMemAlloc           = "MemAlloc"
	CallMemFree            = "MemFree"
	CallMemsetD8           = "MemsetD8"
	CallMemcpyHtoD         = "MemcpyHtoD"
	CallMemcpyDtoH         = "MemcpyDtoH"
	CallMemHostAlloc       = "MemHostAlloc"
	CallMemFreeHost        = "MemFreeHost"
	CallGetRestoreThreadID = "CheckpointProcessGetRestoreThreadID"
	CallGetState           = "CheckpointProcessGetState"
	CallLock               = "CheckpointProcessLock"
	CallCheckpoint         = "CheckpointProcessCheckpoint"
	CallRestore            = "CheckpointProcessRestore"
	CallUnlock             = "CheckpointProcessUnlock"
	CallClose              = "Close"
)

const (
	defaultDriverVersion = 13000
	// UnknownProcessResult is what checkpoint calls return for a pid that is
	// not a simulated CUDA process. Driver 580 returns it for a process that
	// never initialised CUDA; for a pid with no process at all it returns
	// CUDA_ERROR_OPERATING_SYSTEM (test/gpu/results/2026-11-23-h100-cuda.md).
	UnknownProcessResult = cuda.ErrorNotInitialized
)

// Device is a simulated GPU.
type Device struct {
	UUID     cuda.UUID
	Name     string
	TotalMem uint64
}

// Devices returns n GPUs named name with totalMem bytes each and UUIDs
// GPU-00000000-0000-0000-0000-00000000000<i+1> (fixed, for golden output).
func Devices(n int, name string, totalMem uint64) []Device {
	out := make([]Device, n)
	for i := range out {
		out[i] = Device{
			UUID:     cuda.MustParseUUID(fmt.Sprintf("GPU-00000000-0000-0000-0000-%012x", i+1)),
			Name:     name,
			TotalMem: totalMem,
		}
	}
	return out
}

// Process is the simulated view of a CUDA process.
type Process struct {
	PID int
	// GPU holds the process's memory while it is resident; while it is
	// CHECKPOINTED, the GPU it left.
	GPU cuda.UUID
	// VRAM is the bytes of GPU memory the process uses.
	VRAM uint64
	// HostBytes is host memory holding its GPU memory while CHECKPOINTED;
	// the driver frees it on restore (measured: RSS back to its old size).
	HostBytes uint64
	State     cuda.ProcessState
	// RestoreThreadID is what GetRestoreThreadID returns; pid+1 by default.
	RestoreThreadID int
	// Busy processes have work in flight: a lock with a timeout times out.
	Busy bool
	// Lost is set by a restore refused with CUDA_ERROR_OUT_OF_MEMORY: the
	// process's GPU state is gone and no restore succeeds again.
	Lost bool
}

// Call is one recorded call.
type Call struct {
	Name string
	// PID for checkpoint calls, else 0.
	PID int
	// Pairs given to a restore.
	Pairs []cuda.GPUPair
	// Timeout given to a lock.
	Timeout time.Duration
}

// Hook runs before each call with its name and pid (0 for calls without
// one). A non-nil error is returned by the call, which then has no effect.
type Hook func(call string, pid int) error

type allocation struct {
	dev  int
	data []byte
}

// Driver is the fake. The zero value is not usable; use New.
type Driver struct {
	mu          sync.Mutex
	version     int
	initialized bool
	devices     []Device
	// used is bytes in use per device: processes and allocations.
	used   []uint64
	procs  map[int]*Process
	allocs map[cuda.DevicePtr]*allocation
	next   cuda.DevicePtr
	ctxRef []int
	faults map[string]error
	hook   Hook
	calls  []Call
}

var _ cuda.Interface = (*Driver)(nil)

// New returns a fake driver 13.0 with the given GPUs, not yet initialised.
func New(devices ...Device) *Driver {
	return &Driver{
		version: defaultDriverVersion,
		devices: slices.Clone(devices),
		used:    make([]uint64, len(devices)),
		procs:   map[int]*Process{},
		allocs:  map[cuda.DevicePtr]*allocation{},
		next:    0x7f0000000000,
		ctxRef:  make([]int, len(devices)),
		faults:  map[string]error{},
	}
}

// SetDriverVersion sets what DriverGetVersion returns and which checkpoint
// features exist (cuda.CapabilityOf).
func (d *Driver) SetDriverVersion(v int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.version = v
}

// SetFault makes every call named call return err until SetFault(call, nil).
// The failed call has no effect.
func (d *Driver) SetFault(call string, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err == nil {
		delete(d.faults, call)
		return
	}
	d.faults[call] = err
}

// SetHook installs h (nil removes it). h runs with the fake's lock held, so
// it must not call the Driver.
func (d *Driver) SetHook(h Hook) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.hook = h
}

// AddProcess simulates a running CUDA process with vram bytes on gpu.
func (d *Driver) AddProcess(pid int, gpu cuda.UUID, vram uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if pid <= 0 {
		return fmt.Errorf("fake: pid %d must be positive", pid)
	}
	if _, ok := d.procs[pid]; ok {
		return fmt.Errorf("fake: pid %d exists", pid)
	}
	i, ok := d.deviceIndex(gpu)
	if !ok {
		return fmt.Errorf("fake: unknown gpu %s", gpu)
	}
	if d.used[i]+vram > d.devices[i].TotalMem {
		return fmt.Errorf("fake: gpu %s has %d of %d bytes free, process needs %d",
			gpu, d.devices[i].TotalMem-d.used[i], d.devices[i].TotalMem, vram)
	}
	d.used[i] += vram
	d.procs[pid] = &Process{
		PID:             pid,
		GPU:             gpu,
		VRAM:            vram,
		State:           cuda.ProcessStateRunning,
		RestoreThreadID: pid + 1,
	}
	return nil
}

// RemoveProcess simulates the process exiting; its GPU memory is freed.
func (d *Driver) RemoveProcess(pid int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p, ok := d.procs[pid]
	if !ok {
		return
	}
	if p.HostBytes == 0 {
		if i, ok := d.deviceIndex(p.GPU); ok {
			d.used[i] -= p.VRAM
		}
	}
	delete(d.procs, pid)
}

// Kill simulates SIGKILL: the process ends and its memory, on the GPU or
// parked in host memory, is freed. Unknown pids fail as kill(2) does (ESRCH).
func (d *Driver) Kill(pid int) error {
	d.mu.Lock()
	_, ok := d.procs[pid]
	d.mu.Unlock()
	if !ok {
		return fmt.Errorf("fake: kill pid %d: no such process", pid)
	}
	d.RemoveProcess(pid)
	return nil
}

// Process returns a copy of the simulated process.
func (d *Driver) Process(pid int) (Process, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p, ok := d.procs[pid]
	if !ok {
		return Process{}, false
	}
	return *p, true
}

// SetBusy marks pid as having GPU work in flight (or not). A lock with a
// timeout on a busy process fails with CUDA_ERROR_NOT_READY and leaves it
// RUNNING; a lock without a timeout waits for the work, which the fake
// completes at once.
func (d *Driver) SetBusy(pid int, busy bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	p, ok := d.procs[pid]
	if !ok {
		return fmt.Errorf("fake: unknown pid %d", pid)
	}
	p.Busy = busy
	return nil
}

// SetState forces pid into state, e.g. FAILED after a simulated driver error.
// Memory accounting is not changed.
func (d *Driver) SetState(pid int, state cuda.ProcessState) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	p, ok := d.procs[pid]
	if !ok {
		return fmt.Errorf("fake: unknown pid %d", pid)
	}
	p.State = state
	return nil
}

// FreeGPUMemory returns every GPU's free bytes, as NVML would report them,
// and its capacity for processes (its total: the fake reserves nothing).
func (d *Driver) FreeGPUMemory(context.Context) (free, capacity map[cuda.UUID]int64, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	free, capacity = make(map[cuda.UUID]int64, len(d.devices)), make(map[cuda.UUID]int64, len(d.devices))
	for i, dev := range d.devices {
		free[dev.UUID] = int64(dev.TotalMem - d.used[i])
		capacity[dev.UUID] = int64(dev.TotalMem)
	}
	return free, capacity, nil
}

// UsedMem returns the bytes in use on gpu, as NVML would report them.
func (d *Driver) UsedMem(gpu cuda.UUID) (uint64, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	i, ok := d.deviceIndex(gpu)
	if !ok {
		return 0, false
	}
	return d.used[i], true
}

// Calls returns the calls made so far, in order.
func (d *Driver) Calls() []Call {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.calls)
}

func (d *Driver) deviceIndex(u cuda.UUID) (int, bool) {
	for i, dev := range d.devices {
		if dev.UUID == u {
			return i, true
		}
	}
	return 0, false
}

// begin records a call and returns the injected error, if any. It must be
// called with d.mu held.
func (d *Driver) begin(c Call) error {
	d.calls = append(d.calls, c)
	if d.hook != nil {
		if err := d.hook(c.Name, c.PID); err != nil {
			return err
		}
	}
	return d.faults[c.Name]
}

// needInit fails calls made before Init, as the driver does.
func (d *Driver) needInit(op string) error {
	if !d.initialized {
		return cuda.NewError(op, cuda.ErrorNotInitialized)
	}
	return nil
}

func (d *Driver) Init() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(Call{Name: CallInit}); err != nil {
		return err
	}
	if len(d.devices) == 0 {
		return cuda.NewError("cuInit", cuda.ErrorNoDevice)
	}
	d.initialized = true
	return nil
}

func (d *Driver) DriverGetVersion() (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(Call{Name: CallDriverGetVersion}); err != nil {
		return 0, err
	}
	return d.version, nil
}

func (d *Driver) DeviceGetCount() (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(Call{Name: CallDeviceGetCount}); err != nil {
		return 0, err
	}
	if err := d.needInit("cuDeviceGetCount"); err != nil {
		return 0, err
	}
	return len(d.devices), nil
}

// device validates dev; d.mu must be held.
func (d *Driver) device(op string, dev cuda.Device) (*Device, error) {
	if err := d.needInit(op); err != nil {
		return nil, err
	}
	if int(dev) < 0 || int(dev) >= len(d.devices) {
		return nil, cuda.NewError(op, cuda.ErrorInvalidDevice)
	}
	return &d.devices[dev], nil
}

func (d *Driver) DeviceGet(ordinal int) (cuda.Device, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(Call{Name: CallDeviceGet}); err != nil {
		return 0, err
	}
	if _, err := d.device("cuDeviceGet", cuda.Device(ordinal)); err != nil {
		return 0, err
	}
	return cuda.Device(ordinal), nil
}

func (d *Driver) DeviceGetUUID(dev cuda.Device) (cuda.UUID, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(Call{Name: CallDeviceGetUUID}); err != nil {
		return cuda.UUID{}, err
	}
	x, err := d.device("cuDeviceGetUuid", dev)
	if err != nil {
		return cuda.UUID{}, err
	}
	return x.UUID, nil
}

func (d *Driver) DeviceGetName(dev cuda.Device) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(Call{Name: CallDeviceGetName}); err != nil {
		return "", err
	}
	x, err := d.device("cuDeviceGetName", dev)
	if err != nil {
		return "", err
	}
	return x.Name, nil
}

func (d *Driver) DeviceTotalMem(dev cuda.Device) (uint64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(Call{Name: CallDeviceTotalMem}); err != nil {
		return 0, err
	}
	x, err := d.device("cuDeviceTotalMem_v2", dev)
	if err != nil {
		return 0, err
	}
	return x.TotalMem, nil
}

// Contexts are the device index + 1, so that 0 is never a valid context.
func (d *Driver) PrimaryCtxRetain(dev cuda.Device) (cuda.Context, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(Call{Name: CallPrimaryCtxRetain}); err != nil {
		return 0, err
	}
	if _, err := d.device("cuDevicePrimaryCtxRetain", dev); err != nil {
		return 0, err
	}
	d.ctxRef[dev]++
	return cuda.Context(dev + 1), nil
}

func (d *Driver) PrimaryCtxRelease(dev cuda.Device) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(Call{Name: CallPrimaryCtxRelease}); err != nil {
		return err
	}
	if _, err := d.device("cuDevicePrimaryCtxRelease_v2", dev); err != nil {
		return err
	}
	if d.ctxRef[dev] == 0 {
		return cuda.NewError("cuDevicePrimaryCtxRelease_v2", cuda.ErrorInvalidContext)
	}
	d.ctxRef[dev]--
	return nil
}

// context validates ctx and returns its device index; d.mu must be held.
func (d *Driver) context(op string, ctx cuda.Context) (int, error) {
	if err := d.needInit(op); err != nil {
		return 0, err
	}
	i := int(ctx) - 1
	if i < 0 || i >= len(d.devices) || d.ctxRef[i] == 0 {
		return 0, cuda.NewError(op, cuda.ErrorInvalidContext)
	}
	return i, nil
}

func (d *Driver) CtxSynchronize(ctx cuda.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(Call{Name: CallCtxSynchronize}); err != nil {
		return err
	}
	_, err := d.context("cuCtxSynchronize", ctx)
	return err
}

func (d *Driver) MemGetInfo(ctx cuda.Context) (free, total uint64, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(Call{Name: CallMemGetInfo}); err != nil {
		return 0, 0, err
	}
	i, err := d.context("cuMemGetInfo_v2", ctx)
	if err != nil {
		return 0, 0, err
	}
	return d.devices[i].TotalMem - d.used[i], d.devices[i].TotalMem, nil
}

// MemAlloc backs the allocation with Go memory, so keep fake allocations
// small.
func (d *Driver) MemAlloc(ctx cuda.Context, size uint64) (cuda.DevicePtr, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(Call{Name: CallMemAlloc}); err != nil {
		return 0, err
	}
	i, err := d.context("cuMemAlloc_v2", ctx)
	if err != nil {
		return 0, err
	}
	if size == 0 {
		return 0, cuda.NewError("cuMemAlloc_v2", cuda.ErrorInvalidValue)
	}
	if d.used[i]+size > d.devices[i].TotalMem {
		return 0, cuda.NewError("cuMemAlloc_v2", cuda.ErrorOutOfMemory)
	}
	d.used[i] += size
	p := d.next
	d.next += cuda.DevicePtr((size + 0xfffff) &^ 0xfffff) // 1 MiB aligned, as the driver's are at least 256 B
	d.allocs[p] = &allocation{dev: i, data: make([]byte, size)}
	return p, nil
}

func (d *Driver) MemFree(ctx cuda.Context, ptr cuda.DevicePtr) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(Call{Name: CallMemFree}); err != nil {
		return err
	}
	if _, err := d.context("cuMemFree_v2", ctx); err != nil {
		return err
	}
	a, ok := d.allocs[ptr]
	if !ok {
		return cuda.NewError("cuMemFree_v2", cuda.ErrorInvalidValue)
	}
	d.used[a.dev] -= uint64(len(a.data))
	delete(d.allocs, ptr)
	return nil
}

// span returns the bytes [p, p+n) of the allocation holding them; d.mu must
// be held.
func (d *Driver) span(op string, ctx cuda.Context, p cuda.DevicePtr, n uint64) ([]byte, error) {
	if _, err := d.context(op, ctx); err != nil {
		return nil, err
	}
	for base, a := range d.allocs {
		if p >= base && uint64(p-base)+n <= uint64(len(a.data)) {
			off := uint64(p - base)
			return a.data[off : off+n], nil
		}
	}
	return nil, cuda.NewError(op, cuda.ErrorInvalidValue)
}

func (d *Driver) MemsetD8(ctx cuda.Context, dst cuda.DevicePtr, value byte, n uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(Call{Name: CallMemsetD8}); err != nil {
		return err
	}
	b, err := d.span("cuMemsetD8_v2", ctx, dst, n)
	if err != nil {
		return err
	}
	for i := range b {
		b[i] = value
	}
	return nil
}

func (d *Driver) MemcpyHtoD(ctx cuda.Context, dst cuda.DevicePtr, src []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(Call{Name: CallMemcpyHtoD}); err != nil {
		return err
	}
	b, err := d.span("cuMemcpyHtoD_v2", ctx, dst, uint64(len(src)))
	if err != nil {
		return err
	}
	copy(b, src)
	return nil
}

func (d *Driver) MemcpyDtoH(ctx cuda.Context, dst []byte, src cuda.DevicePtr) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(Call{Name: CallMemcpyDtoH}); err != nil {
		return err
	}
	b, err := d.span("cuMemcpyDtoH_v2", ctx, src, uint64(len(dst)))
	if err != nil {
		return err
	}
	copy(dst, b)
	return nil
}

func (d *Driver) MemHostAlloc(ctx cuda.Context, size uint64) ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(Call{Name: CallMemHostAlloc}); err != nil {
		return nil, err
	}
	if _, err := d.context("cuMemHostAlloc", ctx); err != nil {
		return nil, err
	}
	if size == 0 {
		return nil, cuda.NewError("cuMemHostAlloc", cuda.ErrorInvalidValue)
	}
	return make([]byte, size), nil
}

func (d *Driver) MemFreeHost(ctx cuda.Context, buf []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(Call{Name: CallMemFreeHost}); err != nil {
		return err
	}
	_, err := d.context("cuMemFreeHost", ctx)
	return err
}

// process returns pid's simulated process for a checkpoint call; d.mu must
// be held. Unknown pids fail as the driver fails for a pid that is not a CUDA
// process.
func (d *Driver) process(op string, pid int) (*Process, error) {
	if err := cuda.CapabilityOf(d.version).CheckCheckpoint(); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if err := d.needInit(op); err != nil {
		return nil, err
	}
	p, ok := d.procs[pid]
	if !ok {
		return nil, cuda.NewError(op, UnknownProcessResult)
	}
	return p, nil
}

func illegalState(op string, p *Process, want cuda.ProcessState) error {
	return fmt.Errorf("pid %d is %s, want %s: %w", p.PID, p.State, want, cuda.NewError(op, cuda.ErrorIllegalState))
}

func (d *Driver) CheckpointProcessGetRestoreThreadID(pid int) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(Call{Name: CallGetRestoreThreadID, PID: pid}); err != nil {
		return 0, err
	}
	p, err := d.process("cuCheckpointProcessGetRestoreThreadId", pid)
	if err != nil {
		return 0, err
	}
	return p.RestoreThreadID, nil
}

func (d *Driver) CheckpointProcessGetState(pid int) (cuda.ProcessState, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(Call{Name: CallGetState, PID: pid}); err != nil {
		return 0, err
	}
	p, err := d.process("cuCheckpointProcessGetState", pid)
	if err != nil {
		return 0, err
	}
	return p.State, nil
}

func (d *Driver) CheckpointProcessLock(pid int, timeout time.Duration) error {
	const op = "cuCheckpointProcessLock"
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(Call{Name: CallLock, PID: pid, Timeout: timeout}); err != nil {
		return err
	}
	p, err := d.process(op, pid)
	if err != nil {
		return err
	}
	if timeout < 0 {
		return fmt.Errorf("%s: negative timeout %v: %w", op, timeout, cuda.ErrInvalidValue)
	}
	if p.State != cuda.ProcessStateRunning {
		return illegalState(op, p, cuda.ProcessStateRunning)
	}
	if p.Busy && timeout > 0 {
		return cuda.NewError(op, cuda.ErrorNotReady)
	}
	p.Busy = false
	p.State = cuda.ProcessStateLocked
	return nil
}

func (d *Driver) CheckpointProcessCheckpoint(pid int) error {
	const op = "cuCheckpointProcessCheckpoint"
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(Call{Name: CallCheckpoint, PID: pid}); err != nil {
		return err
	}
	p, err := d.process(op, pid)
	if err != nil {
		return err
	}
	if p.State != cuda.ProcessStateLocked || p.HostBytes != 0 {
		return illegalState(op, p, cuda.ProcessStateLocked)
	}
	i, _ := d.deviceIndex(p.GPU)
	d.used[i] -= p.VRAM
	p.HostBytes = p.VRAM
	p.State = cuda.ProcessStateCheckpointed
	return nil
}

// errLost explains the OPERATING_SYSTEM error of a restore after an
// OUT_OF_MEMORY one.
var errLost = errors.New("an earlier restore ran out of gpu memory and destroyed the process's gpu state")

// errNotBijection explains an INVALID_VALUE for pairs.
var errNotBijection = errors.New("gpu pairs are not a bijection over all gpus")

func (d *Driver) CheckpointProcessRestore(pid int, pairs []cuda.GPUPair) error {
	const op = "cuCheckpointProcessRestore"
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(Call{Name: CallRestore, PID: pid, Pairs: slices.Clone(pairs)}); err != nil {
		return err
	}
	p, err := d.process(op, pid)
	if err != nil {
		return err
	}
	if p.State != cuda.ProcessStateCheckpointed {
		return illegalState(op, p, cuda.ProcessStateCheckpointed)
	}
	if p.Lost {
		return fmt.Errorf("%w: %w", errLost, cuda.NewError(op, cuda.ErrorOperatingSystem))
	}
	target := p.GPU
	if len(pairs) > 0 {
		if err := cuda.CapabilityOf(d.version).CheckRemap(); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		if !d.bijection(pairs) {
			return fmt.Errorf("%w: %w", errNotBijection, cuda.NewError(op, cuda.ErrorInvalidValue))
		}
		for _, pair := range pairs {
			if pair.Old == p.GPU {
				target = pair.New
			}
		}
	}
	i, _ := d.deviceIndex(target)
	if d.used[i]+p.VRAM > d.devices[i].TotalMem {
		p.Lost = true
		return fmt.Errorf("gpu %s has %d bytes free, pid %d needs %d: %w",
			target, d.devices[i].TotalMem-d.used[i], pid, p.VRAM, cuda.NewError(op, cuda.ErrorOutOfMemory))
	}
	d.used[i] += p.VRAM
	p.GPU = target
	p.HostBytes = 0
	p.State = cuda.ProcessStateLocked
	return nil
}

// bijection reports whether pairs map every simulated GPU exactly once from
// and once to; d.mu must be held.
func (d *Driver) bijection(pairs []cuda.GPUPair) bool {
	if len(pairs) != len(d.devices) {
		return false
	}
	olds, news := map[cuda.UUID]bool{}, map[cuda.UUID]bool{}
	for _, p := range pairs {
		if _, ok := d.deviceIndex(p.Old); !ok || olds[p.Old] {
			return false
		}
		if _, ok := d.deviceIndex(p.New); !ok || news[p.New] {
			return false
		}
		olds[p.Old], news[p.New] = true, true
	}
	return true
}

func (d *Driver) CheckpointProcessUnlock(pid int) error {
	const op = "cuCheckpointProcessUnlock"
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(Call{Name: CallUnlock, PID: pid}); err != nil {
		return err
	}
	p, err := d.process(op, pid)
	if err != nil {
		return err
	}
	if p.State != cuda.ProcessStateLocked {
		return illegalState(op, p, cuda.ProcessStateLocked)
	}
	p.State = cuda.ProcessStateRunning
	return nil
}

func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.begin(Call{Name: CallClose})
}
