//go:build cgo

package cuda

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// The variants of testdata/fakelibcuda.c, by the -D flags they are built with.
var fakeVariants = map[string][]string{
	"full":          nil,
	"no-checkpoint": {"-DKYB_FAKE_NO_CHECKPOINT"},
	"uuid-v1":       {"-DKYB_FAKE_UUID_V1"},
}

var (
	fakeOnce sync.Once
	fakeDir  string
	fakeErr  error
)

// fakeLib returns the path of the fake driver library variant, built once per
// test binary with the C compiler cgo uses.
func fakeLib(t *testing.T, variant string) string {
	t.Helper()
	fakeOnce.Do(func() {
		fakeDir, fakeErr = os.MkdirTemp("", "kyb-fakelibcuda-")
		if fakeErr != nil {
			return
		}
		cc := os.Getenv("CC")
		if cc == "" {
			cc = "gcc"
		}
		for name, flags := range fakeVariants {
			args := append([]string{"-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-I.", "-o",
				filepath.Join(fakeDir, name+".so")}, flags...)
			args = append(args, filepath.Join("testdata", "fakelibcuda.c"))
			out, err := exec.Command(cc, args...).CombinedOutput()
			if err != nil {
				fakeErr = fmt.Errorf("build fake libcuda %s: %w\n%s", name, err, out)
				return
			}
		}
	})
	if fakeErr != nil {
		if errors.Is(fakeErr, exec.ErrNotFound) {
			t.Skipf("no C compiler to build the fake driver: %v", fakeErr)
		}
		t.Fatal(fakeErr)
	}
	return filepath.Join(fakeDir, variant+".so")
}

func TestMain(m *testing.M) {
	code := m.Run()
	if fakeDir != "" {
		os.RemoveAll(fakeDir)
	}
	os.Exit(code)
}

// openFake loads a fake driver variant; env is set before New, which reads
// the driver version.
func openFake(t *testing.T, variant string, env map[string]string) Interface {
	t.Helper()
	path := fakeLib(t, variant)
	for k, v := range env {
		t.Setenv(k, v)
	}
	lib, err := New(WithLibraryPath(path))
	if err != nil {
		t.Fatalf("New(%s): %v", variant, err)
	}
	t.Cleanup(func() { lib.Close() })
	if err := lib.Init(); err != nil {
		t.Fatalf("Init: %v", err)
	}
	return lib
}

func TestNewWithoutDriver(t *testing.T) {
	tests := []struct {
		name        string
		path        string
		wantMessage string
	}{
		{
			name:        "missing file",
			path:        "/nonexistent/libcuda.so.1",
			wantMessage: "load /nonexistent/libcuda.so.1",
		},
		{
			name:        "not a driver",
			path:        "libc.so.6",
			wantMessage: "libc.so.6 does not export cuInit",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lib, err := New(WithLibraryPath(tt.path))
			if err == nil {
				lib.Close()
				t.Fatalf("New(%q) succeeded, want error", tt.path)
			}
			if !errors.Is(err, ErrNoDriver) {
				t.Errorf("New(%q) = %v, want it to match ErrNoDriver", tt.path, err)
			}
			if !strings.Contains(err.Error(), tt.wantMessage) {
				t.Errorf("New(%q) = %q, want it to contain %q", tt.path, err, tt.wantMessage)
			}
		})
	}
}

func TestNewDefault(t *testing.T) {
	lib, err := New()
	if err == nil {
		lib.Close()
		t.Skip("this machine has libcuda.so.1; the no-driver path is covered by TestNewWithoutDriver")
	}
	if !errors.Is(err, ErrNoDriver) {
		t.Errorf("New() = %v, want it to match ErrNoDriver", err)
	}
	if !strings.Contains(err.Error(), DefaultLibrary) {
		t.Errorf("New() = %q, want it to name %s", err, DefaultLibrary)
	}
}

func fakeUUID(dev int, tag byte) UUID {
	var u UUID
	for i := range u {
		u[i] = byte(0x10*(dev+1) + i)
	}
	u[15] = tag
	return u
}

type deviceInfo struct {
	UUID UUID
	Name string
	Mem  uint64
}

func TestLibraryDevices(t *testing.T) {
	tests := []struct {
		variant string
		want    []deviceInfo
	}{
		{
			variant: "full",
			want: []deviceInfo{
				{UUID: fakeUUID(0, 2), Name: "Fake GPU 0", Mem: 80 << 30},
				{UUID: fakeUUID(1, 2), Name: "Fake GPU 1", Mem: 80 << 30},
			},
		},
		{
			// Without cuDeviceGetUuid_v2 the library falls back to cuDeviceGetUuid.
			variant: "uuid-v1",
			want: []deviceInfo{
				{UUID: fakeUUID(0, 1), Name: "Fake GPU 0", Mem: 80 << 30},
				{UUID: fakeUUID(1, 1), Name: "Fake GPU 1", Mem: 80 << 30},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.variant, func(t *testing.T) {
			lib := openFake(t, tt.variant, nil)
			n, err := lib.DeviceGetCount()
			if err != nil {
				t.Fatal(err)
			}
			var got []deviceInfo
			for i := range n {
				dev, err := lib.DeviceGet(i)
				if err != nil {
					t.Fatal(err)
				}
				var d deviceInfo
				if d.UUID, err = lib.DeviceGetUUID(dev); err != nil {
					t.Fatal(err)
				}
				if d.Name, err = lib.DeviceGetName(dev); err != nil {
					t.Fatal(err)
				}
				if d.Mem, err = lib.DeviceTotalMem(dev); err != nil {
					t.Fatal(err)
				}
				got = append(got, d)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("devices (-want +got):\n%s", diff)
			}
			_, err = lib.DeviceGet(2)
			if !errors.Is(err, ErrInvalidDevice) {
				t.Errorf("DeviceGet(2) = %v, want ErrInvalidDevice", err)
			}
		})
	}
}

func TestLibraryMemory(t *testing.T) {
	lib := openFake(t, "full", nil)
	dev, err := lib.DeviceGet(1)
	if err != nil {
		t.Fatal(err)
	}
	ctx, err := lib.PrimaryCtxRetain(dev)
	if err != nil {
		t.Fatal(err)
	}
	// The fake keeps the current context per thread and refuses memory calls
	// without one, so these only pass if each call made ctx current on the
	// thread it ran on. Many goroutines make thread changes likely.
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.Gosched()
			errs <- roundTrip(lib, ctx, byte(g))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if free, total, err := lib.MemGetInfo(ctx); err != nil || free != 79<<30 || total != 80<<30 {
		t.Errorf("MemGetInfo = %d, %d, %v, want %d, %d, nil", free, total, err, uint64(79<<30), uint64(80<<30))
	}
	if err := lib.CtxSynchronize(ctx); err != nil {
		t.Errorf("CtxSynchronize: %v", err)
	}
	err = lib.CtxSynchronize(Context(0xdead))
	var cerr *Error
	if !errors.As(err, &cerr) || cerr.Code != ErrorInvalidContext || !strings.HasPrefix(cerr.Op, "cuCtxSetCurrent") {
		t.Errorf("CtxSynchronize(bad context) = %v, want CUDA_ERROR_INVALID_CONTEXT from cuCtxSetCurrent", err)
	}
	if err := lib.PrimaryCtxRelease(dev); err != nil {
		t.Errorf("PrimaryCtxRelease: %v", err)
	}
}

func roundTrip(lib Interface, ctx Context, seed byte) error {
	const n = 1 << 16
	p, err := lib.MemAlloc(ctx, n)
	if err != nil {
		return err
	}
	defer lib.MemFree(ctx, p)
	src := make([]byte, n)
	for i := range src {
		src[i] = byte(i) ^ seed
	}
	if err := lib.MemcpyHtoD(ctx, p, src); err != nil {
		return err
	}
	if err := lib.MemsetD8(ctx, p+DevicePtr(n/2), seed, 16); err != nil {
		return err
	}
	pinned, err := lib.MemHostAlloc(ctx, n)
	if err != nil {
		return err
	}
	defer lib.MemFreeHost(ctx, pinned)
	if err := lib.MemcpyDtoH(ctx, pinned, p); err != nil {
		return err
	}
	want := append([]byte(nil), src...)
	for i := n / 2; i < n/2+16; i++ {
		want[i] = seed
	}
	if diff := cmp.Diff(want, pinned); diff != "" {
		return fmt.Errorf("device memory round trip (-want +got):\n%s", diff)
	}
	return nil
}

func TestLibraryCheckpointCalls(t *testing.T) {
	lib := openFake(t, "full", nil)
	type result struct {
		State ProcessState
		TID   int
		Code  Result
		Name  string
		Op    string
	}
	tests := []struct {
		pid  int
		want result
	}{
		{pid: 8, want: result{State: ProcessStateRunning, TID: 9}},
		{pid: 9, want: result{State: ProcessStateLocked, TID: 10}},
		{pid: 10, want: result{State: ProcessStateCheckpointed, TID: 11}},
		{pid: 11, want: result{State: ProcessStateFailed, TID: 12}},
		{pid: 800, want: result{Code: ErrorNotPermitted, Name: "CUDA_ERROR_NOT_PERMITTED", Op: "cuCheckpointProcessGetState"}},
		{pid: 801, want: result{Code: ErrorNotSupported, Name: "CUDA_ERROR_NOT_SUPPORTED", Op: "cuCheckpointProcessGetState"}},
		{pid: -1, want: result{Code: ErrorInvalidValue, Name: "CUDA_ERROR_INVALID_VALUE", Op: "cuCheckpointProcessGetState"}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.pid), func(t *testing.T) {
			var got result
			var err error
			got.State, err = lib.CheckpointProcessGetState(tt.pid)
			if err == nil {
				got.TID, err = lib.CheckpointProcessGetRestoreThreadID(tt.pid)
			}
			var cerr *Error
			if errors.As(err, &cerr) {
				got = result{Code: cerr.Code, Name: cerr.Name, Op: cerr.Op}
			} else if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestLibraryLock(t *testing.T) {
	tests := []struct {
		name      string
		pid       int
		timeout   time.Duration
		expectMs  string
		wantIs    []error
		wantIsNot []error
	}{
		{name: "no limit", pid: 5, timeout: 0, expectMs: "0"},
		{name: "seconds", pid: 5, timeout: 5 * time.Second, expectMs: "5000"},
		{name: "rounds up, never to no limit", pid: 5, timeout: 1200 * time.Microsecond, expectMs: "2"},
		{name: "one nanosecond", pid: 5, timeout: time.Nanosecond, expectMs: "1"},
		{name: "wrong timeout reaches driver", pid: 5, timeout: time.Second, expectMs: "999", wantIs: []error{ErrInvalidValue}},
		{name: "negative", pid: 5, timeout: -time.Second, expectMs: "0", wantIs: []error{ErrInvalidValue}},
		{name: "timed out, not ready", pid: 600, timeout: time.Second, expectMs: "1000",
			wantIs: []error{ErrNotReady, ErrTimeout}, wantIsNot: []error{ErrDriverTimeout}},
		{name: "timed out, timeout", pid: 909, timeout: time.Second, expectMs: "1000",
			wantIs: []error{ErrDriverTimeout, ErrTimeout}, wantIsNot: []error{ErrNotReady}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lib := openFake(t, "full", map[string]string{"KYB_FAKE_LOCK_TIMEOUT_MS": tt.expectMs})
			err := lib.CheckpointProcessLock(tt.pid, tt.timeout)
			if len(tt.wantIs) == 0 && err != nil {
				t.Fatalf("CheckpointProcessLock(%d, %v) = %v, want nil", tt.pid, tt.timeout, err)
			}
			if len(tt.wantIs) > 0 && err == nil {
				t.Fatalf("CheckpointProcessLock(%d, %v) = nil, want error", tt.pid, tt.timeout)
			}
			for _, target := range tt.wantIs {
				if !errors.Is(err, target) {
					t.Errorf("CheckpointProcessLock(%d, %v) = %v, want it to match %v", tt.pid, tt.timeout, err, target)
				}
			}
			for _, target := range tt.wantIsNot {
				if errors.Is(err, target) {
					t.Errorf("CheckpointProcessLock(%d, %v) = %v, want it not to match %v", tt.pid, tt.timeout, err, target)
				}
			}
		})
	}
}

func pairBytes(pairs []GPUPair) string {
	var b []byte
	for _, p := range pairs {
		b = append(b, p.Old[:]...)
		b = append(b, p.New[:]...)
	}
	return hex.EncodeToString(b)
}

func TestLibraryCheckpointRestore(t *testing.T) {
	a, b := fakeUUID(0, 2), fakeUUID(1, 2)
	swap := []GPUPair{{Old: a, New: b}, {Old: b, New: a}}
	tests := []struct {
		name    string
		variant string
		version string
		pairs   []GPUPair
		expect  string // KYB_FAKE_RESTORE_PAIRS
		wantIs  []error
	}{
		{name: "in place", variant: "full", version: "13000", expect: ""},
		{name: "swap", variant: "full", version: "13000", pairs: swap, expect: pairBytes(swap)},
		{name: "driver sees other pairs", variant: "full", version: "13000", pairs: swap,
			expect: pairBytes([]GPUPair{{Old: a, New: a}, {Old: b, New: b}}), wantIs: []error{ErrInvalidValue}},
		{name: "in place on 12.8", variant: "full", version: "12080", expect: ""},
		{name: "remap on 12.8", variant: "full", version: "12080", pairs: swap, expect: pairBytes(swap),
			wantIs: []error{ErrRemapUnsupported, ErrNotSupported}},
		{name: "12.4 has no checkpoint api", variant: "full", version: "12040", expect: "",
			wantIs: []error{ErrCheckpointUnsupported, ErrNotSupported}},
		{name: "symbols missing", variant: "no-checkpoint", version: "13000", expect: "",
			wantIs: []error{ErrCheckpointUnsupported, ErrNotSupported}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lib := openFake(t, tt.variant, map[string]string{
				"KYB_FAKE_VERSION":       tt.version,
				"KYB_FAKE_RESTORE_PAIRS": tt.expect,
			})
			err := lib.CheckpointProcessRestore(7, tt.pairs)
			if len(tt.wantIs) == 0 && err != nil {
				t.Fatalf("CheckpointProcessRestore = %v, want nil", err)
			}
			if len(tt.wantIs) > 0 && err == nil {
				t.Fatal("CheckpointProcessRestore = nil, want error")
			}
			for _, target := range tt.wantIs {
				if !errors.Is(err, target) {
					t.Errorf("CheckpointProcessRestore = %v, want it to match %v", err, target)
				}
			}
		})
	}
}

func TestLibraryCheckpointUnsupported(t *testing.T) {
	lib := openFake(t, "no-checkpoint", map[string]string{"KYB_FAKE_VERSION": "13000"})
	calls := map[string]func() error{
		"GetRestoreThreadID": func() error { _, err := lib.CheckpointProcessGetRestoreThreadID(5); return err },
		"GetState":           func() error { _, err := lib.CheckpointProcessGetState(5); return err },
		"Lock":               func() error { return lib.CheckpointProcessLock(5, time.Second) },
		"Checkpoint":         func() error { return lib.CheckpointProcessCheckpoint(5) },
		"Restore":            func() error { return lib.CheckpointProcessRestore(5, nil) },
		"Unlock":             func() error { return lib.CheckpointProcessUnlock(5) },
	}
	for name, call := range calls {
		err := call()
		if !errors.Is(err, ErrCheckpointUnsupported) || !errors.Is(err, ErrNotSupported) {
			t.Errorf("%s = %v, want ErrCheckpointUnsupported and ErrNotSupported", name, err)
		}
	}
	// The rest of the library works without the checkpoint API.
	if n, err := lib.DeviceGetCount(); err != nil || n != 2 {
		t.Errorf("DeviceGetCount = %d, %v, want 2, nil", n, err)
	}
}

func TestLibraryCheckpointAndUnlock(t *testing.T) {
	lib := openFake(t, "full", nil)
	if err := lib.CheckpointProcessCheckpoint(5); err != nil {
		t.Errorf("CheckpointProcessCheckpoint: %v", err)
	}
	if err := lib.CheckpointProcessUnlock(5); err != nil {
		t.Errorf("CheckpointProcessUnlock: %v", err)
	}
	if v, err := lib.DriverGetVersion(); err != nil || v != 13000 {
		t.Errorf("DriverGetVersion = %d, %v, want 13000, nil", v, err)
	}
}
