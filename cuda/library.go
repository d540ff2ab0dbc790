//go:build cgo

package cuda

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include "cuda_driver.h"

// One per New: the dlopen handle and the entry points resolved from it.
// Optional entry points are NULL when the driver lacks them.
typedef struct kyb_cuda {
	void *handle;
	kyb_pfn_cuInit cuInit;
	kyb_pfn_cuDriverGetVersion cuDriverGetVersion;
	kyb_pfn_cuGetErrorName cuGetErrorName;
	kyb_pfn_cuDeviceGetCount cuDeviceGetCount;
	kyb_pfn_cuDeviceGet cuDeviceGet;
	kyb_pfn_cuDeviceGetName cuDeviceGetName;
	kyb_pfn_cuDeviceGetUuid cuDeviceGetUuid;
	kyb_pfn_cuDeviceTotalMem cuDeviceTotalMem;
	kyb_pfn_cuDevicePrimaryCtxRetain cuDevicePrimaryCtxRetain;
	kyb_pfn_cuDevicePrimaryCtxRelease cuDevicePrimaryCtxRelease;
	kyb_pfn_cuCtxSetCurrent cuCtxSetCurrent;
	kyb_pfn_cuCtxSynchronize cuCtxSynchronize;
	kyb_pfn_cuMemGetInfo cuMemGetInfo;
	kyb_pfn_cuMemAlloc cuMemAlloc;
	kyb_pfn_cuMemFree cuMemFree;
	kyb_pfn_cuMemsetD8 cuMemsetD8;
	kyb_pfn_cuMemcpyHtoD cuMemcpyHtoD;
	kyb_pfn_cuMemcpyDtoH cuMemcpyDtoH;
	kyb_pfn_cuMemHostAlloc cuMemHostAlloc;
	kyb_pfn_cuMemFreeHost cuMemFreeHost;
	kyb_pfn_cuCheckpointProcessGetRestoreThreadId cuCheckpointProcessGetRestoreThreadId;
	kyb_pfn_cuCheckpointProcessGetState cuCheckpointProcessGetState;
	kyb_pfn_cuCheckpointProcessLock cuCheckpointProcessLock;
	kyb_pfn_cuCheckpointProcessCheckpoint cuCheckpointProcessCheckpoint;
	kyb_pfn_cuCheckpointProcessRestore cuCheckpointProcessRestore;
	kyb_pfn_cuCheckpointProcessUnlock cuCheckpointProcessUnlock;
} kyb_cuda;

// dlopen and dlerror in one C call: dlerror is per thread, and a goroutine
// may change threads between two cgo calls.
static void *kyb_dlopen(const char *path, char *err, size_t errlen) {
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (h == NULL) {
		const char *e = dlerror();
		snprintf(err, errlen, "%s", e ? e : "unknown dlopen error");
	}
	return h;
}

#define KYB_SYM(c, field, name) (*(void **)(&(c)->field) = dlsym((c)->handle, (name)))
#define KYB_REQUIRE(c, field, name) do { if (KYB_SYM(c, field, name) == NULL) return (name); } while (0)

// kyb_resolve fills c from c->handle and returns NULL, or the name of the
// first required entry point the library lacks. The _v2 names are the ABI of
// the unversioned API names since CUDA 3.2 / 4.0; they are still exported.
static const char *kyb_resolve(kyb_cuda *c) {
	KYB_REQUIRE(c, cuInit, "cuInit");
	KYB_REQUIRE(c, cuDriverGetVersion, "cuDriverGetVersion");
	KYB_REQUIRE(c, cuGetErrorName, "cuGetErrorName");
	KYB_REQUIRE(c, cuDeviceGetCount, "cuDeviceGetCount");
	KYB_REQUIRE(c, cuDeviceGet, "cuDeviceGet");
	KYB_REQUIRE(c, cuDeviceGetName, "cuDeviceGetName");
	if (KYB_SYM(c, cuDeviceGetUuid, "cuDeviceGetUuid_v2") == NULL)
		KYB_REQUIRE(c, cuDeviceGetUuid, "cuDeviceGetUuid");
	KYB_REQUIRE(c, cuDeviceTotalMem, "cuDeviceTotalMem_v2");
	KYB_REQUIRE(c, cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain");
	KYB_REQUIRE(c, cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2");
	KYB_REQUIRE(c, cuCtxSetCurrent, "cuCtxSetCurrent");
	KYB_REQUIRE(c, cuCtxSynchronize, "cuCtxSynchronize");
	KYB_REQUIRE(c, cuMemGetInfo, "cuMemGetInfo_v2");
	KYB_REQUIRE(c, cuMemAlloc, "cuMemAlloc_v2");
	KYB_REQUIRE(c, cuMemFree, "cuMemFree_v2");
	KYB_REQUIRE(c, cuMemsetD8, "cuMemsetD8_v2");
	KYB_REQUIRE(c, cuMemcpyHtoD, "cuMemcpyHtoD_v2");
	KYB_REQUIRE(c, cuMemcpyDtoH, "cuMemcpyDtoH_v2");
	KYB_SYM(c, cuMemHostAlloc, "cuMemHostAlloc");
	KYB_SYM(c, cuMemFreeHost, "cuMemFreeHost");
	KYB_SYM(c, cuCheckpointProcessGetRestoreThreadId, "cuCheckpointProcessGetRestoreThreadId");
	KYB_SYM(c, cuCheckpointProcessGetState, "cuCheckpointProcessGetState");
	KYB_SYM(c, cuCheckpointProcessLock, "cuCheckpointProcessLock");
	KYB_SYM(c, cuCheckpointProcessCheckpoint, "cuCheckpointProcessCheckpoint");
	KYB_SYM(c, cuCheckpointProcessRestore, "cuCheckpointProcessRestore");
	KYB_SYM(c, cuCheckpointProcessUnlock, "cuCheckpointProcessUnlock");
	return NULL;
}

static int kyb_has_checkpoint(kyb_cuda *c) {
	return c->cuCheckpointProcessGetRestoreThreadId && c->cuCheckpointProcessGetState &&
		c->cuCheckpointProcessLock && c->cuCheckpointProcessCheckpoint &&
		c->cuCheckpointProcessRestore && c->cuCheckpointProcessUnlock;
}

static int kyb_has_host_alloc(kyb_cuda *c) {
	return c->cuMemHostAlloc && c->cuMemFreeHost;
}

static CUresult kyb_init(kyb_cuda *c) { return c->cuInit(0); }
static CUresult kyb_driver_get_version(kyb_cuda *c, int *v) { return c->cuDriverGetVersion(v); }
static CUresult kyb_get_error_name(kyb_cuda *c, CUresult r, const char **name) { return c->cuGetErrorName(r, name); }
static CUresult kyb_device_get_count(kyb_cuda *c, int *n) { return c->cuDeviceGetCount(n); }
static CUresult kyb_device_get(kyb_cuda *c, CUdevice *d, int ordinal) { return c->cuDeviceGet(d, ordinal); }
static CUresult kyb_device_get_name(kyb_cuda *c, char *name, int len, CUdevice d) { return c->cuDeviceGetName(name, len, d); }
static CUresult kyb_device_get_uuid(kyb_cuda *c, CUuuid *u, CUdevice d) { return c->cuDeviceGetUuid(u, d); }
static CUresult kyb_device_total_mem(kyb_cuda *c, size_t *n, CUdevice d) { return c->cuDeviceTotalMem(n, d); }
static CUresult kyb_primary_ctx_retain(kyb_cuda *c, uintptr_t *ctx, CUdevice d) {
	CUcontext x = NULL;
	CUresult r = c->cuDevicePrimaryCtxRetain(&x, d);
	*ctx = (uintptr_t)x;
	return r;
}
static CUresult kyb_primary_ctx_release(kyb_cuda *c, CUdevice d) { return c->cuDevicePrimaryCtxRelease(d); }

// Calls on a context make it current first, in the same C call and so on
// the same thread. *set is 1 when making it current failed.
#define KYB_WITH_CTX(c, ctx, set) do { \
	CUresult r_ = (c)->cuCtxSetCurrent((CUcontext)(ctx)); \
	if (r_ != 0) { *(set) = 1; return r_; } \
} while (0)

static CUresult kyb_ctx_synchronize(kyb_cuda *c, uintptr_t ctx, int *set) {
	KYB_WITH_CTX(c, ctx, set);
	return c->cuCtxSynchronize();
}
static CUresult kyb_mem_get_info(kyb_cuda *c, uintptr_t ctx, size_t *free, size_t *total, int *set) {
	KYB_WITH_CTX(c, ctx, set);
	return c->cuMemGetInfo(free, total);
}
static CUresult kyb_mem_alloc(kyb_cuda *c, uintptr_t ctx, CUdeviceptr *p, size_t n, int *set) {
	KYB_WITH_CTX(c, ctx, set);
	return c->cuMemAlloc(p, n);
}
static CUresult kyb_mem_free(kyb_cuda *c, uintptr_t ctx, CUdeviceptr p, int *set) {
	KYB_WITH_CTX(c, ctx, set);
	return c->cuMemFree(p);
}
static CUresult kyb_memset_d8(kyb_cuda *c, uintptr_t ctx, CUdeviceptr p, unsigned char v, size_t n, int *set) {
	KYB_WITH_CTX(c, ctx, set);
	return c->cuMemsetD8(p, v, n);
}
static CUresult kyb_memcpy_htod(kyb_cuda *c, uintptr_t ctx, CUdeviceptr dst, const void *src, size_t n, int *set) {
	KYB_WITH_CTX(c, ctx, set);
	return c->cuMemcpyHtoD(dst, src, n);
}
static CUresult kyb_memcpy_dtoh(kyb_cuda *c, uintptr_t ctx, void *dst, CUdeviceptr src, size_t n, int *set) {
	KYB_WITH_CTX(c, ctx, set);
	return c->cuMemcpyDtoH(dst, src, n);
}
static CUresult kyb_mem_host_alloc(kyb_cuda *c, uintptr_t ctx, void **p, size_t n, int *set) {
	KYB_WITH_CTX(c, ctx, set);
	return c->cuMemHostAlloc(p, n, KYB_CU_MEMHOSTALLOC_PORTABLE);
}
static CUresult kyb_mem_free_host(kyb_cuda *c, uintptr_t ctx, void *p, int *set) {
	KYB_WITH_CTX(c, ctx, set);
	return c->cuMemFreeHost(p);
}

// The checkpoint calls build their argument structs here, zeroed as the
// reserved fields require, so no Go memory is handed to the driver.
static CUresult kyb_checkpoint_get_restore_thread_id(kyb_cuda *c, int pid, int *tid) {
	return c->cuCheckpointProcessGetRestoreThreadId(pid, tid);
}
static CUresult kyb_checkpoint_get_state(kyb_cuda *c, int pid, int *state) {
	CUprocessState s = 0;
	CUresult r = c->cuCheckpointProcessGetState(pid, &s);
	*state = s;
	return r;
}
static CUresult kyb_checkpoint_lock(kyb_cuda *c, int pid, unsigned int timeoutMs) {
	CUcheckpointLockArgs a;
	memset(&a, 0, sizeof a);
	a.timeoutMs = timeoutMs;
	return c->cuCheckpointProcessLock(pid, &a);
}
static CUresult kyb_checkpoint_checkpoint(kyb_cuda *c, int pid) {
	CUcheckpointCheckpointArgs a;
	memset(&a, 0, sizeof a);
	return c->cuCheckpointProcessCheckpoint(pid, &a);
}
static CUresult kyb_checkpoint_restore(kyb_cuda *c, int pid, CUcheckpointGpuPair *pairs, unsigned int n) {
	CUcheckpointRestoreArgs a;
	memset(&a, 0, sizeof a);
	a.gpuPairs = pairs;
	a.gpuPairsCount = n;
	return c->cuCheckpointProcessRestore(pid, &a);
}
static CUresult kyb_checkpoint_unlock(kyb_cuda *c, int pid) {
	CUcheckpointUnlockArgs a;
	memset(&a, 0, sizeof a);
	return c->cuCheckpointProcessUnlock(pid, &a);
}

static void kyb_close(kyb_cuda *c) {
	if (c->handle != NULL)
		dlclose(c->handle);
	free(c);
}

enum { KYB_LAYOUT_N = 20 };

// The layout of the argument structs as this C compiler sees cuda_driver.h.
static void kyb_layout(size_t *out) {
	size_t v[KYB_LAYOUT_N] = {
		sizeof(CUuuid),
		sizeof(CUcheckpointGpuPair),
		offsetof(CUcheckpointGpuPair, oldUuid),
		offsetof(CUcheckpointGpuPair, newUuid),
		sizeof(CUcheckpointLockArgs),
		offsetof(CUcheckpointLockArgs, timeoutMs),
		offsetof(CUcheckpointLockArgs, reserved0),
		offsetof(CUcheckpointLockArgs, reserved1),
		sizeof(CUcheckpointCheckpointArgs),
		offsetof(CUcheckpointCheckpointArgs, reserved),
		sizeof(CUcheckpointRestoreArgs),
		offsetof(CUcheckpointRestoreArgs, gpuPairs),
		offsetof(CUcheckpointRestoreArgs, gpuPairsCount),
		offsetof(CUcheckpointRestoreArgs, reserved),
		offsetof(CUcheckpointRestoreArgs, reserved1),
		sizeof(CUcheckpointUnlockArgs),
		offsetof(CUcheckpointUnlockArgs, reserved),
		sizeof(CUprocessState),
		sizeof(CUresult),
		sizeof(CUdeviceptr),
	};
	memcpy(out, v, sizeof v);
}
*/
import "C"

import (
	"fmt"
	"math"
	"time"
	"unsafe"
)

// DefaultLibrary is the soname of the driver's user-space library.
const DefaultLibrary = "libcuda.so.1"

type options struct {
	path string
}

// Option configures New.
type Option func(*options)

// WithLibraryPath loads the driver library from path (a soname or a file)
// instead of DefaultLibrary.
func WithLibraryPath(path string) Option {
	return func(o *options) { o.path = path }
}

// library is the Interface backed by a dlopen'ed libcuda.
type library struct {
	c       *C.kyb_cuda
	path    string
	version int
}

var _ Interface = (*library)(nil)

// New opens the driver library and resolves its entry points. It does not
// call cuInit. On machines without a driver it returns an error wrapping
// ErrNoDriver. Close the result when done.
func New(opts ...Option) (Interface, error) {
	o := options{path: DefaultLibrary}
	for _, opt := range opts {
		opt(&o)
	}
	cpath := C.CString(o.path)
	defer C.free(unsafe.Pointer(cpath))

	c := (*C.kyb_cuda)(C.calloc(1, C.sizeof_kyb_cuda))
	if c == nil {
		return nil, fmt.Errorf("cuda: allocate library state: %w", ErrNoDriver)
	}
	var errbuf [512]C.char
	c.handle = C.kyb_dlopen(cpath, &errbuf[0], C.size_t(len(errbuf)))
	if c.handle == nil {
		C.free(unsafe.Pointer(c))
		return nil, fmt.Errorf("%w: load %s: %s", ErrNoDriver, o.path, C.GoString(&errbuf[0]))
	}
	if missing := C.kyb_resolve(c); missing != nil {
		name := C.GoString(missing)
		C.kyb_close(c)
		return nil, fmt.Errorf("%w: %s does not export %s", ErrNoDriver, o.path, name)
	}
	l := &library{c: c, path: o.path}
	var v C.int
	if r := C.kyb_driver_get_version(c, &v); r != 0 {
		err := l.check("cuDriverGetVersion", r)
		C.kyb_close(c)
		return nil, fmt.Errorf("%w: %w", ErrNoDriver, err)
	}
	l.version = int(v)
	return l, nil
}

func (l *library) Close() error {
	if l.c != nil {
		C.kyb_close(l.c)
		l.c = nil
	}
	return nil
}

// check turns a CUresult into nil or an *Error named by the driver.
func (l *library) check(op string, r C.CUresult) error {
	if r == 0 {
		return nil
	}
	return &Error{Op: op, Code: Result(r), Name: l.errorName(r)}
}

// checkCtx is check for the calls that first make a context current.
func (l *library) checkCtx(op string, r C.CUresult, setFailed C.int) error {
	if setFailed != 0 {
		op = "cuCtxSetCurrent (for " + op + ")"
	}
	return l.check(op, r)
}

func (l *library) errorName(r C.CUresult) string {
	var name *C.char
	if C.kyb_get_error_name(l.c, r, &name) != 0 || name == nil {
		return Result(r).String()
	}
	return C.GoString(name)
}

func (l *library) Init() error {
	return l.check("cuInit", C.kyb_init(l.c))
}

func (l *library) DriverGetVersion() (int, error) {
	var v C.int
	if err := l.check("cuDriverGetVersion", C.kyb_driver_get_version(l.c, &v)); err != nil {
		return 0, err
	}
	return int(v), nil
}

func (l *library) DeviceGetCount() (int, error) {
	var n C.int
	if err := l.check("cuDeviceGetCount", C.kyb_device_get_count(l.c, &n)); err != nil {
		return 0, err
	}
	return int(n), nil
}

func (l *library) DeviceGet(ordinal int) (Device, error) {
	var d C.CUdevice
	if err := l.check("cuDeviceGet", C.kyb_device_get(l.c, &d, C.int(ordinal))); err != nil {
		return 0, err
	}
	return Device(d), nil
}

func (l *library) DeviceGetUUID(dev Device) (UUID, error) {
	var u C.CUuuid
	if err := l.check("cuDeviceGetUuid", C.kyb_device_get_uuid(l.c, &u, C.CUdevice(dev))); err != nil {
		return UUID{}, err
	}
	var out UUID
	for i := range out {
		out[i] = byte(u.bytes[i])
	}
	return out, nil
}

func (l *library) DeviceGetName(dev Device) (string, error) {
	var buf [256]C.char
	if err := l.check("cuDeviceGetName", C.kyb_device_get_name(l.c, &buf[0], C.int(len(buf)-1), C.CUdevice(dev))); err != nil {
		return "", err
	}
	return C.GoString(&buf[0]), nil
}

func (l *library) DeviceTotalMem(dev Device) (uint64, error) {
	var n C.size_t
	if err := l.check("cuDeviceTotalMem_v2", C.kyb_device_total_mem(l.c, &n, C.CUdevice(dev))); err != nil {
		return 0, err
	}
	return uint64(n), nil
}

func (l *library) PrimaryCtxRetain(dev Device) (Context, error) {
	var ctx C.uintptr_t
	if err := l.check("cuDevicePrimaryCtxRetain", C.kyb_primary_ctx_retain(l.c, &ctx, C.CUdevice(dev))); err != nil {
		return 0, err
	}
	return Context(ctx), nil
}

func (l *library) PrimaryCtxRelease(dev Device) error {
	return l.check("cuDevicePrimaryCtxRelease_v2", C.kyb_primary_ctx_release(l.c, C.CUdevice(dev)))
}

func (l *library) CtxSynchronize(ctx Context) error {
	var set C.int
	r := C.kyb_ctx_synchronize(l.c, C.uintptr_t(ctx), &set)
	return l.checkCtx("cuCtxSynchronize", r, set)
}

func (l *library) MemGetInfo(ctx Context) (free, total uint64, err error) {
	var f, t C.size_t
	var set C.int
	r := C.kyb_mem_get_info(l.c, C.uintptr_t(ctx), &f, &t, &set)
	if err := l.checkCtx("cuMemGetInfo_v2", r, set); err != nil {
		return 0, 0, err
	}
	return uint64(f), uint64(t), nil
}

func (l *library) MemAlloc(ctx Context, size uint64) (DevicePtr, error) {
	var p C.CUdeviceptr
	var set C.int
	r := C.kyb_mem_alloc(l.c, C.uintptr_t(ctx), &p, C.size_t(size), &set)
	if err := l.checkCtx("cuMemAlloc_v2", r, set); err != nil {
		return 0, err
	}
	return DevicePtr(p), nil
}

func (l *library) MemFree(ctx Context, ptr DevicePtr) error {
	var set C.int
	r := C.kyb_mem_free(l.c, C.uintptr_t(ctx), C.CUdeviceptr(ptr), &set)
	return l.checkCtx("cuMemFree_v2", r, set)
}

func (l *library) MemsetD8(ctx Context, dst DevicePtr, value byte, n uint64) error {
	var set C.int
	r := C.kyb_memset_d8(l.c, C.uintptr_t(ctx), C.CUdeviceptr(dst), C.uchar(value), C.size_t(n), &set)
	return l.checkCtx("cuMemsetD8_v2", r, set)
}

func (l *library) MemcpyHtoD(ctx Context, dst DevicePtr, src []byte) error {
	if len(src) == 0 {
		return nil
	}
	var set C.int
	// src holds no Go pointers, so cgo may pass it for the call's duration.
	r := C.kyb_memcpy_htod(l.c, C.uintptr_t(ctx), C.CUdeviceptr(dst), unsafe.Pointer(&src[0]), C.size_t(len(src)), &set)
	return l.checkCtx("cuMemcpyHtoD_v2", r, set)
}

func (l *library) MemcpyDtoH(ctx Context, dst []byte, src DevicePtr) error {
	if len(dst) == 0 {
		return nil
	}
	var set C.int
	r := C.kyb_memcpy_dtoh(l.c, C.uintptr_t(ctx), unsafe.Pointer(&dst[0]), C.CUdeviceptr(src), C.size_t(len(dst)), &set)
	return l.checkCtx("cuMemcpyDtoH_v2", r, set)
}

func (l *library) MemHostAlloc(ctx Context, size uint64) ([]byte, error) {
	if C.kyb_has_host_alloc(l.c) == 0 {
		return nil, fmt.Errorf("cuMemHostAlloc: %s does not export it: %w", l.path, ErrNotSupported)
	}
	if size == 0 {
		return nil, fmt.Errorf("cuMemHostAlloc: size 0: %w", ErrInvalidValue)
	}
	var p unsafe.Pointer
	var set C.int
	r := C.kyb_mem_host_alloc(l.c, C.uintptr_t(ctx), &p, C.size_t(size), &set)
	if err := l.checkCtx("cuMemHostAlloc", r, set); err != nil {
		return nil, err
	}
	return unsafe.Slice((*byte)(p), size), nil
}

func (l *library) MemFreeHost(ctx Context, buf []byte) error {
	if C.kyb_has_host_alloc(l.c) == 0 {
		return fmt.Errorf("cuMemFreeHost: %s does not export it: %w", l.path, ErrNotSupported)
	}
	if len(buf) == 0 {
		return nil
	}
	var set C.int
	r := C.kyb_mem_free_host(l.c, C.uintptr_t(ctx), unsafe.Pointer(&buf[0]), &set)
	return l.checkCtx("cuMemFreeHost", r, set)
}

// checkpointAPI returns nil when op can be called: the driver version has
// the checkpoint API and the library exports all six entry points.
func (l *library) checkpointAPI(op string) error {
	if err := CapabilityOf(l.version).CheckCheckpoint(); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if C.kyb_has_checkpoint(l.c) == 0 {
		return fmt.Errorf("%s: %w: %s (CUDA %s) does not export the cuCheckpointProcess* calls: %w",
			op, ErrCheckpointUnsupported, l.path, FormatVersion(l.version), ErrNotSupported)
	}
	return nil
}

func (l *library) CheckpointProcessGetRestoreThreadID(pid int) (int, error) {
	const op = "cuCheckpointProcessGetRestoreThreadId"
	if err := l.checkpointAPI(op); err != nil {
		return 0, err
	}
	var tid C.int
	if err := l.check(op, C.kyb_checkpoint_get_restore_thread_id(l.c, C.int(pid), &tid)); err != nil {
		return 0, err
	}
	return int(tid), nil
}

func (l *library) CheckpointProcessGetState(pid int) (ProcessState, error) {
	const op = "cuCheckpointProcessGetState"
	if err := l.checkpointAPI(op); err != nil {
		return 0, err
	}
	var s C.int
	if err := l.check(op, C.kyb_checkpoint_get_state(l.c, C.int(pid), &s)); err != nil {
		return 0, err
	}
	return ProcessState(s), nil
}

// lockTimeoutMs converts a lock timeout to the driver's milliseconds,
// rounding up so that a short timeout never becomes 0 (no limit).
func lockTimeoutMs(d time.Duration) (uint32, error) {
	if d < 0 {
		return 0, fmt.Errorf("negative lock timeout %v: %w", d, ErrInvalidValue)
	}
	ms := (d + time.Millisecond - 1) / time.Millisecond
	if ms > math.MaxUint32 {
		return 0, fmt.Errorf("lock timeout %v exceeds %d ms: %w", d, uint32(math.MaxUint32), ErrInvalidValue)
	}
	return uint32(ms), nil
}

func (l *library) CheckpointProcessLock(pid int, timeout time.Duration) error {
	const op = "cuCheckpointProcessLock"
	if err := l.checkpointAPI(op); err != nil {
		return err
	}
	ms, err := lockTimeoutMs(timeout)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return l.check(op, C.kyb_checkpoint_lock(l.c, C.int(pid), C.uint(ms)))
}

func (l *library) CheckpointProcessCheckpoint(pid int) error {
	const op = "cuCheckpointProcessCheckpoint"
	if err := l.checkpointAPI(op); err != nil {
		return err
	}
	return l.check(op, C.kyb_checkpoint_checkpoint(l.c, C.int(pid)))
}

func (l *library) CheckpointProcessRestore(pid int, pairs []GPUPair) error {
	const op = "cuCheckpointProcessRestore"
	if err := l.checkpointAPI(op); err != nil {
		return err
	}
	if len(pairs) == 0 {
		return l.check(op, C.kyb_checkpoint_restore(l.c, C.int(pid), nil, 0))
	}
	if err := CapabilityOf(l.version).CheckRemap(); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if len(pairs) > math.MaxInt32 {
		return fmt.Errorf("%s: %d gpu pairs: %w", op, len(pairs), ErrInvalidValue)
	}
	// The pair array is C memory: the driver gets no Go pointer.
	cpairs := (*C.CUcheckpointGpuPair)(C.calloc(C.size_t(len(pairs)), C.sizeof_CUcheckpointGpuPair))
	if cpairs == nil {
		return fmt.Errorf("%s: allocate %d gpu pairs: %w", op, len(pairs), ErrOutOfMemory)
	}
	defer C.free(unsafe.Pointer(cpairs))
	dst := unsafe.Slice(cpairs, len(pairs))
	for i, p := range pairs {
		for j := range p.Old {
			dst[i].oldUuid.bytes[j] = C.char(p.Old[j])
			dst[i].newUuid.bytes[j] = C.char(p.New[j])
		}
	}
	return l.check(op, C.kyb_checkpoint_restore(l.c, C.int(pid), cpairs, C.uint(len(pairs))))
}

func (l *library) CheckpointProcessUnlock(pid int) error {
	const op = "cuCheckpointProcessUnlock"
	if err := l.checkpointAPI(op); err != nil {
		return err
	}
	return l.check(op, C.kyb_checkpoint_unlock(l.c, C.int(pid)))
}

// cLayout returns sizeof and offsetof of the driver argument structs as the C
// compiler lays out cuda_driver.h, keyed like "sizeof(CUuuid)" and
// "offsetof(CUcheckpointRestoreArgs.gpuPairs)".
func cLayout() map[string]uint64 {
	names := [...]string{
		"sizeof(CUuuid)",
		"sizeof(CUcheckpointGpuPair)",
		"offsetof(CUcheckpointGpuPair.oldUuid)",
		"offsetof(CUcheckpointGpuPair.newUuid)",
		"sizeof(CUcheckpointLockArgs)",
		"offsetof(CUcheckpointLockArgs.timeoutMs)",
		"offsetof(CUcheckpointLockArgs.reserved0)",
		"offsetof(CUcheckpointLockArgs.reserved1)",
		"sizeof(CUcheckpointCheckpointArgs)",
		"offsetof(CUcheckpointCheckpointArgs.reserved)",
		"sizeof(CUcheckpointRestoreArgs)",
		"offsetof(CUcheckpointRestoreArgs.gpuPairs)",
		"offsetof(CUcheckpointRestoreArgs.gpuPairsCount)",
		"offsetof(CUcheckpointRestoreArgs.reserved)",
		"offsetof(CUcheckpointRestoreArgs.reserved1)",
		"sizeof(CUcheckpointUnlockArgs)",
		"offsetof(CUcheckpointUnlockArgs.reserved)",
		"sizeof(CUprocessState)",
		"sizeof(CUresult)",
		"sizeof(CUdeviceptr)",
	}
	var v [C.KYB_LAYOUT_N]C.size_t
	C.kyb_layout(&v[0])
	out := make(map[string]uint64, len(names))
	for i, n := range names {
		out[n] = uint64(v[i])
	}
	return out
}
