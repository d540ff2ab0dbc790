package fake

import (
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kybernate/kybernate/cuda"
)

const gib = 1 << 30

var (
	gpus       = Devices(2, "NVIDIA H200", 141*gib)
	gpu0, gpu1 = gpus[0].UUID, gpus[1].UUID
	swap       = []cuda.GPUPair{{Old: gpu0, New: gpu1}, {Old: gpu1, New: gpu0}}
)

// step is one call on the fake and what should follow.
type step struct {
	call    string
	pairs   []cuda.GPUPair
	timeout time.Duration
	wantErr error // nil: success
	// The process and memory after the call.
	wantState cuda.ProcessState
	wantGPU   cuda.UUID
	wantHost  uint64
	wantUsed  [2]uint64
}

func run(t *testing.T, d *Driver, pid int, s step) error {
	t.Helper()
	switch s.call {
	case CallLock:
		return d.CheckpointProcessLock(pid, s.timeout)
	case CallCheckpoint:
		return d.CheckpointProcessCheckpoint(pid)
	case CallRestore:
		return d.CheckpointProcessRestore(pid, s.pairs)
	case CallUnlock:
		return d.CheckpointProcessUnlock(pid)
	}
	t.Fatalf("unknown call %q", s.call)
	return nil
}

func TestStateMachine(t *testing.T) {
	const pid, vram = 4242, 40 * gib
	tests := []struct {
		name    string
		version int
		busy    bool
		steps   []step
	}{
		{
			name: "suspend and resume in place",
			steps: []step{
				{call: CallLock, timeout: time.Second, wantState: cuda.ProcessStateLocked, wantGPU: gpu0, wantUsed: [2]uint64{vram, 0}},
				{call: CallCheckpoint, wantState: cuda.ProcessStateCheckpointed, wantGPU: gpu0, wantHost: vram},
				{call: CallRestore, wantState: cuda.ProcessStateLocked, wantGPU: gpu0, wantUsed: [2]uint64{vram, 0}},
				{call: CallUnlock, wantState: cuda.ProcessStateRunning, wantGPU: gpu0, wantUsed: [2]uint64{vram, 0}},
			},
		},
		{
			name: "lock and unlock without checkpoint",
			steps: []step{
				{call: CallLock, wantState: cuda.ProcessStateLocked, wantGPU: gpu0, wantUsed: [2]uint64{vram, 0}},
				{call: CallUnlock, wantState: cuda.ProcessStateRunning, wantGPU: gpu0, wantUsed: [2]uint64{vram, 0}},
			},
		},
		{
			name: "single pair refused, swap moves to gpu1",
			steps: []step{
				{call: CallLock, wantState: cuda.ProcessStateLocked, wantGPU: gpu0, wantUsed: [2]uint64{vram, 0}},
				{call: CallCheckpoint, wantState: cuda.ProcessStateCheckpointed, wantGPU: gpu0, wantHost: vram},
				{call: CallRestore, pairs: []cuda.GPUPair{{Old: gpu0, New: gpu1}}, wantErr: cuda.ErrInvalidValue,
					wantState: cuda.ProcessStateCheckpointed, wantGPU: gpu0, wantHost: vram},
				{call: CallRestore, pairs: []cuda.GPUPair{{Old: gpu0, New: gpu1}, {Old: gpu1, New: gpu1}}, wantErr: cuda.ErrInvalidValue,
					wantState: cuda.ProcessStateCheckpointed, wantGPU: gpu0, wantHost: vram},
				{call: CallRestore, pairs: swap, wantState: cuda.ProcessStateLocked, wantGPU: gpu1, wantUsed: [2]uint64{0, vram}},
				{call: CallUnlock, wantState: cuda.ProcessStateRunning, wantGPU: gpu1, wantUsed: [2]uint64{0, vram}},
			},
		},
		{
			name: "identity pairs restore in place",
			steps: []step{
				{call: CallLock, wantState: cuda.ProcessStateLocked, wantGPU: gpu0, wantUsed: [2]uint64{vram, 0}},
				{call: CallCheckpoint, wantState: cuda.ProcessStateCheckpointed, wantGPU: gpu0, wantHost: vram},
				{call: CallRestore, pairs: []cuda.GPUPair{{Old: gpu0, New: gpu0}, {Old: gpu1, New: gpu1}},
					wantState: cuda.ProcessStateLocked, wantGPU: gpu0, wantUsed: [2]uint64{vram, 0}},
			},
		},
		{
			name: "wrong states",
			steps: []step{
				{call: CallCheckpoint, wantErr: cuda.ErrIllegalState, wantState: cuda.ProcessStateRunning, wantGPU: gpu0, wantUsed: [2]uint64{vram, 0}},
				{call: CallRestore, wantErr: cuda.ErrIllegalState, wantState: cuda.ProcessStateRunning, wantGPU: gpu0, wantUsed: [2]uint64{vram, 0}},
				{call: CallUnlock, wantErr: cuda.ErrIllegalState, wantState: cuda.ProcessStateRunning, wantGPU: gpu0, wantUsed: [2]uint64{vram, 0}},
				{call: CallLock, wantState: cuda.ProcessStateLocked, wantGPU: gpu0, wantUsed: [2]uint64{vram, 0}},
				{call: CallLock, wantErr: cuda.ErrIllegalState, wantState: cuda.ProcessStateLocked, wantGPU: gpu0, wantUsed: [2]uint64{vram, 0}},
				{call: CallRestore, wantErr: cuda.ErrIllegalState, wantState: cuda.ProcessStateLocked, wantGPU: gpu0, wantUsed: [2]uint64{vram, 0}},
				{call: CallCheckpoint, wantState: cuda.ProcessStateCheckpointed, wantGPU: gpu0, wantHost: vram},
				{call: CallCheckpoint, wantErr: cuda.ErrIllegalState, wantState: cuda.ProcessStateCheckpointed, wantGPU: gpu0, wantHost: vram},
				{call: CallUnlock, wantErr: cuda.ErrIllegalState, wantState: cuda.ProcessStateCheckpointed, wantGPU: gpu0, wantHost: vram},
				{call: CallLock, wantErr: cuda.ErrIllegalState, wantState: cuda.ProcessStateCheckpointed, wantGPU: gpu0, wantHost: vram},
			},
		},
		{
			name: "busy process: lock times out and it runs on; without timeout it waits",
			busy: true,
			steps: []step{
				{call: CallLock, timeout: 500 * time.Millisecond, wantErr: cuda.ErrTimeout, wantState: cuda.ProcessStateRunning, wantGPU: gpu0, wantUsed: [2]uint64{vram, 0}},
				{call: CallLock, timeout: 0, wantState: cuda.ProcessStateLocked, wantGPU: gpu0, wantUsed: [2]uint64{vram, 0}},
			},
		},
		{
			name:    "driver 12.8 restores in place only",
			version: 12080,
			steps: []step{
				{call: CallLock, wantState: cuda.ProcessStateLocked, wantGPU: gpu0, wantUsed: [2]uint64{vram, 0}},
				{call: CallCheckpoint, wantState: cuda.ProcessStateCheckpointed, wantGPU: gpu0, wantHost: vram},
				{call: CallRestore, pairs: swap, wantErr: cuda.ErrRemapUnsupported, wantState: cuda.ProcessStateCheckpointed, wantGPU: gpu0, wantHost: vram},
				{call: CallRestore, wantState: cuda.ProcessStateLocked, wantGPU: gpu0, wantUsed: [2]uint64{vram, 0}},
			},
		},
		{
			name:    "driver 12.4 has no checkpoint api",
			version: 12040,
			steps: []step{
				{call: CallLock, wantErr: cuda.ErrCheckpointUnsupported, wantState: cuda.ProcessStateRunning, wantGPU: gpu0, wantUsed: [2]uint64{vram, 0}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := New(gpus...)
			if tt.version != 0 {
				d.SetDriverVersion(tt.version)
			}
			if err := d.Init(); err != nil {
				t.Fatal(err)
			}
			if err := d.AddProcess(pid, gpu0, vram); err != nil {
				t.Fatal(err)
			}
			if tt.busy {
				if err := d.SetBusy(pid, true); err != nil {
					t.Fatal(err)
				}
			}
			for i, s := range tt.steps {
				err := run(t, d, pid, s)
				if s.wantErr == nil && err != nil {
					t.Fatalf("step %d %s: %v", i, s.call, err)
				}
				if s.wantErr != nil && !errors.Is(err, s.wantErr) {
					t.Fatalf("step %d %s = %v, want %v", i, s.call, err, s.wantErr)
				}
				p, _ := d.Process(pid)
				used0, _ := d.UsedMem(gpu0)
				used1, _ := d.UsedMem(gpu1)
				type view struct {
					State cuda.ProcessState
					GPU   cuda.UUID
					Host  uint64
					Used  [2]uint64
				}
				want := view{State: s.wantState, GPU: s.wantGPU, Host: s.wantHost, Used: s.wantUsed}
				got := view{State: p.State, GPU: p.GPU, Host: p.HostBytes, Used: [2]uint64{used0, used1}}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Fatalf("after step %d %s (-want +got):\n%s", i, s.call, diff)
				}
				if !cuda.CapabilityOf(d.version).Checkpoint {
					continue
				}
				if st, err := d.CheckpointProcessGetState(pid); err != nil || st != s.wantState {
					t.Fatalf("after step %d GetState = %v, %v, want %v", i, st, err, s.wantState)
				}
			}
		})
	}
}

// TestRestoreOutOfMemory models driver 580 (measured on H100, 2026-12-06): a restore refused
// for lack of GPU memory destroys the process's GPU state. Every later restore fails with
// OPERATING_SYSTEM, even onto an empty GPU, the state stays CHECKPOINTED and unlock fails with
// ILLEGAL_STATE.
func TestRestoreOutOfMemory(t *testing.T) {
	d := New(gpus...)
	if err := d.Init(); err != nil {
		t.Fatal(err)
	}
	// 100 GiB on gpu0, then 100 GiB arrives on gpu1 while the first is away.
	mustOK(t, d.AddProcess(1, gpu0, 100*gib))
	mustOK(t, d.CheckpointProcessLock(1, 0))
	mustOK(t, d.CheckpointProcessCheckpoint(1))
	mustOK(t, d.AddProcess(2, gpu1, 100*gib))
	free, _, _ := d.FreeGPUMemory(t.Context())
	if want := int64(gpus[1].TotalMem - 100*gib); free[gpu1] != want {
		t.Fatalf("free memory of gpu1 = %d, want %d", free[gpu1], want)
	}
	err := d.CheckpointProcessRestore(1, swap)
	if !errors.Is(err, cuda.ErrOutOfMemory) {
		t.Fatalf("restore onto a full gpu = %v, want ErrOutOfMemory", err)
	}
	check := func(when string) {
		t.Helper()
		if st, _ := d.CheckpointProcessGetState(1); st != cuda.ProcessStateCheckpointed {
			t.Errorf("state %s = %v, want CHECKPOINTED", when, st)
		}
		if p, _ := d.Process(1); !p.Lost || p.HostBytes != 100*gib {
			t.Errorf("process %s: lost %v, host bytes %d; want lost, %d", when, p.Lost, p.HostBytes, uint64(100*gib))
		}
		if err := d.CheckpointProcessUnlock(1); !errors.Is(err, cuda.ErrIllegalState) {
			t.Errorf("unlock %s = %v, want ErrIllegalState", when, err)
		}
	}
	check("after the refused restore")
	// Nothing brings it back: not the GPU it came from, not an empty GPU.
	for _, pairs := range [][]cuda.GPUPair{nil, swap} {
		if pairs != nil {
			d.RemoveProcess(2)
		}
		if err := d.CheckpointProcessRestore(1, pairs); !errors.Is(err, cuda.ErrOperatingSystem) {
			t.Errorf("restore (pairs %v) after an out-of-memory restore = %v, want ErrOperatingSystem", pairs, err)
		}
	}
	check("after later restores")
	// Its memory returns when it ends.
	d.RemoveProcess(1)
	if used, _ := d.UsedMem(gpu0); used != 0 {
		t.Errorf("gpu0 used after the process ended = %d, want 0", used)
	}
}

func mustOK(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestFaultsAndHooks(t *testing.T) {
	d := New(gpus...)
	mustOK(t, d.Init())
	mustOK(t, d.AddProcess(7, gpu0, gib))

	injected := cuda.NewError("cuCheckpointProcessCheckpoint", cuda.ErrorUnknown)
	d.SetFault(CallCheckpoint, injected)
	mustOK(t, d.CheckpointProcessLock(7, time.Second))
	if err := d.CheckpointProcessCheckpoint(7); !errors.Is(err, cuda.ErrUnknown) {
		t.Fatalf("faulted checkpoint = %v, want ErrUnknown", err)
	}
	if st, _ := d.CheckpointProcessGetState(7); st != cuda.ProcessStateLocked {
		t.Errorf("state after faulted checkpoint = %v, want LOCKED (no effect)", st)
	}
	d.SetFault(CallCheckpoint, nil)
	mustOK(t, d.CheckpointProcessCheckpoint(7))

	// A hook that fails the first restore and marks the process FAILED.
	var seen []string
	d.SetHook(func(call string, pid int) error {
		seen = append(seen, call)
		if call == CallRestore && pid == 7 {
			d.procs[7].State = cuda.ProcessStateFailed // lock is held: touch state directly
			return cuda.NewError("cuCheckpointProcessRestore", cuda.ErrorUnknown)
		}
		return nil
	})
	if err := d.CheckpointProcessRestore(7, nil); err == nil {
		t.Fatal("hooked restore succeeded")
	}
	d.SetHook(nil)
	if st, _ := d.CheckpointProcessGetState(7); st != cuda.ProcessStateFailed {
		t.Errorf("state = %v, want FAILED", st)
	}
	if err := d.CheckpointProcessUnlock(7); !errors.Is(err, cuda.ErrIllegalState) {
		t.Errorf("unlock of a FAILED process = %v, want ErrIllegalState", err)
	}
	if diff := cmp.Diff([]string{CallRestore}, seen); diff != "" {
		t.Errorf("hook calls (-want +got):\n%s", diff)
	}

	var got []string
	for _, c := range d.Calls() {
		got = append(got, c.Name)
	}
	want := []string{CallInit, CallLock, CallCheckpoint, CallGetState, CallCheckpoint, CallRestore,
		CallGetState, CallUnlock}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("recorded calls (-want +got):\n%s", diff)
	}
}

func TestUnknownProcessAndInit(t *testing.T) {
	d := New(gpus...)
	if _, err := d.CheckpointProcessGetState(1); !errors.Is(err, cuda.ErrNotInitialized) {
		t.Errorf("GetState before Init = %v, want ErrNotInitialized", err)
	}
	if _, err := d.DeviceGetCount(); !errors.Is(err, cuda.ErrNotInitialized) {
		t.Errorf("DeviceGetCount before Init = %v, want ErrNotInitialized", err)
	}
	mustOK(t, d.Init())
	var cerr *cuda.Error
	_, err := d.CheckpointProcessGetState(1)
	if !errors.As(err, &cerr) || cerr.Code != UnknownProcessResult {
		t.Errorf("GetState of unknown pid = %v, want %v", err, UnknownProcessResult)
	}
	if err := New().Init(); !errors.Is(err, cuda.ErrNoDevice) {
		t.Errorf("Init without gpus = %v, want ErrNoDevice", err)
	}
}

func TestDevicesAndMemory(t *testing.T) {
	d := New(Devices(2, "NVIDIA H100 80GB HBM3", 80*gib)...)
	mustOK(t, d.Init())
	mustOK(t, d.AddProcess(99, Devices(2, "", 0)[1].UUID, 10*gib))

	type dev struct {
		UUID string
		Name string
		Mem  uint64
	}
	var got []dev
	n, err := d.DeviceGetCount()
	mustOK(t, err)
	for i := range n {
		h, err := d.DeviceGet(i)
		mustOK(t, err)
		u, err := d.DeviceGetUUID(h)
		mustOK(t, err)
		name, err := d.DeviceGetName(h)
		mustOK(t, err)
		mem, err := d.DeviceTotalMem(h)
		mustOK(t, err)
		got = append(got, dev{UUID: u.String(), Name: name, Mem: mem})
	}
	want := []dev{
		{UUID: "GPU-00000000-0000-0000-0000-000000000001", Name: "NVIDIA H100 80GB HBM3", Mem: 80 * gib},
		{UUID: "GPU-00000000-0000-0000-0000-000000000002", Name: "NVIDIA H100 80GB HBM3", Mem: 80 * gib},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("devices (-want +got):\n%s", diff)
	}
	if _, err := d.DeviceGet(2); !errors.Is(err, cuda.ErrInvalidDevice) {
		t.Errorf("DeviceGet(2) = %v, want ErrInvalidDevice", err)
	}

	ctx, err := d.PrimaryCtxRetain(1)
	mustOK(t, err)
	p, err := d.MemAlloc(ctx, 1024)
	mustOK(t, err)
	mustOK(t, d.MemcpyHtoD(ctx, p, []byte("hello, gpu")))
	mustOK(t, d.MemsetD8(ctx, p+5, '!', 2))
	buf := make([]byte, 10)
	mustOK(t, d.MemcpyDtoH(ctx, buf, p))
	if got, want := string(buf), "hello!!gpu"; got != want {
		t.Errorf("device memory = %q, want %q", got, want)
	}
	free, total, err := d.MemGetInfo(ctx)
	mustOK(t, err)
	if want := uint64(80*gib - 10*gib - 1024); free != want || total != 80*gib {
		t.Errorf("MemGetInfo = %d, %d, want %d, %d", free, total, want, uint64(80*gib))
	}
	if err := d.MemcpyDtoH(ctx, make([]byte, 2048), p); !errors.Is(err, cuda.ErrInvalidValue) {
		t.Errorf("copy past the allocation = %v, want ErrInvalidValue", err)
	}
	if _, err := d.MemAlloc(ctx, 80*gib); !errors.Is(err, cuda.ErrOutOfMemory) {
		t.Errorf("MemAlloc beyond free memory = %v, want ErrOutOfMemory", err)
	}
	mustOK(t, d.MemFree(ctx, p))
	if err := d.MemFree(ctx, p); !errors.Is(err, cuda.ErrInvalidValue) {
		t.Errorf("double free = %v, want ErrInvalidValue", err)
	}
	mustOK(t, d.PrimaryCtxRelease(1))
	if _, err := d.MemAlloc(ctx, 1); !errors.Is(err, cuda.ErrInvalidContext) {
		t.Errorf("MemAlloc on released context = %v, want ErrInvalidContext", err)
	}
}
