/*
 * A stand-in for libcuda.so.1 that the tests of package cuda build with the C
 * compiler and load through New(WithLibraryPath(...)), so that the dlopen,
 * dlsym and argument marshalling code runs on machines without a GPU.
 *
 * Device memory is host memory from malloc. Checkpoint calls answer from
 * their arguments and from environment variables the test sets:
 *   KYB_FAKE_VERSION          cuDriverGetVersion (default 13000)
 *   KYB_FAKE_LOCK_TIMEOUT_MS  the timeoutMs cuCheckpointProcessLock expects
 *   KYB_FAKE_RESTORE_PAIRS    hex of the pair bytes cuCheckpointProcessRestore
 *                             expects ("" for none)
 * pid 600, 909, 801 and 800 make every checkpoint call fail with that code;
 * cuCheckpointProcessGetState returns pid % 4; the restore thread is pid + 1.
 *
 * Built with -DKYB_FAKE_NO_CHECKPOINT it lacks the checkpoint entry points,
 * with -DKYB_FAKE_UUID_V1 it lacks cuDeviceGetUuid_v2.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_driver.h"

enum {
	OK = 0,
	INVALID_VALUE = 1,
	NOT_INITIALIZED = 3,
	INVALID_DEVICE = 101,
	INVALID_CONTEXT = 201,
	NOT_READY = 600,
	NOT_PERMITTED = 800,
	NOT_SUPPORTED = 801,
	TIMEOUT = 909,
};

static int initialized;
static __thread CUcontext current;
static CUcontext contexts[2] = {(CUcontext)0x1000, (CUcontext)0x2000};

static int env_int(const char *name, int def) {
	const char *v = getenv(name);
	return v && *v ? atoi(v) : def;
}

CUresult cuInit(unsigned int flags) {
	if (flags != 0)
		return INVALID_VALUE;
	initialized = 1;
	return OK;
}

CUresult cuDriverGetVersion(int *v) {
	if (!v)
		return INVALID_VALUE;
	*v = env_int("KYB_FAKE_VERSION", 13000);
	return OK;
}

CUresult cuGetErrorName(CUresult r, const char **name) {
	switch (r) {
	case INVALID_VALUE: *name = "CUDA_ERROR_INVALID_VALUE"; return OK;
	case NOT_INITIALIZED: *name = "CUDA_ERROR_NOT_INITIALIZED"; return OK;
	case INVALID_DEVICE: *name = "CUDA_ERROR_INVALID_DEVICE"; return OK;
	case INVALID_CONTEXT: *name = "CUDA_ERROR_INVALID_CONTEXT"; return OK;
	case NOT_READY: *name = "CUDA_ERROR_NOT_READY"; return OK;
	case NOT_PERMITTED: *name = "CUDA_ERROR_NOT_PERMITTED"; return OK;
	case NOT_SUPPORTED: *name = "CUDA_ERROR_NOT_SUPPORTED"; return OK;
	case TIMEOUT: *name = "CUDA_ERROR_TIMEOUT"; return OK;
	}
	*name = NULL;
	return INVALID_VALUE;
}

CUresult cuDeviceGetCount(int *n) {
	if (!initialized)
		return NOT_INITIALIZED;
	*n = 2;
	return OK;
}

CUresult cuDeviceGet(CUdevice *d, int ordinal) {
	if (!initialized)
		return NOT_INITIALIZED;
	if (ordinal < 0 || ordinal > 1)
		return INVALID_DEVICE;
	*d = ordinal;
	return OK;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice d) {
	if (d < 0 || d > 1)
		return INVALID_DEVICE;
	snprintf(name, len, "Fake GPU %d", d);
	return OK;
}

static CUresult get_uuid(CUuuid *u, CUdevice d, char tag) {
	if (d < 0 || d > 1)
		return INVALID_DEVICE;
	for (int i = 0; i < 16; i++)
		u->bytes[i] = (char)(0x10 * (d + 1) + i);
	u->bytes[15] = tag;
	return OK;
}

#ifndef KYB_FAKE_UUID_V1
CUresult cuDeviceGetUuid_v2(CUuuid *u, CUdevice d) { return get_uuid(u, d, 2); }
#endif
CUresult cuDeviceGetUuid(CUuuid *u, CUdevice d) { return get_uuid(u, d, 1); }

CUresult cuDeviceTotalMem_v2(size_t *n, CUdevice d) {
	if (d < 0 || d > 1)
		return INVALID_DEVICE;
	*n = (size_t)80 << 30;
	return OK;
}

CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice d) {
	if (d < 0 || d > 1)
		return INVALID_DEVICE;
	*ctx = contexts[d];
	return OK;
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) { return d < 0 || d > 1 ? INVALID_DEVICE : OK; }

CUresult cuCtxSetCurrent(CUcontext ctx) {
	if (ctx != contexts[0] && ctx != contexts[1])
		return INVALID_CONTEXT;
	current = ctx;
	return OK;
}

/* Memory calls fail unless the wrapper made a context current first. */
#define NEED_CTX() do { if (current == NULL) return INVALID_CONTEXT; } while (0)

CUresult cuCtxSynchronize(void) { NEED_CTX(); return OK; }

CUresult cuMemGetInfo_v2(size_t *free, size_t *total) {
	NEED_CTX();
	*free = (size_t)79 << 30;
	*total = (size_t)80 << 30;
	return OK;
}

CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) {
	NEED_CTX();
	void *m = malloc(n);
	if (!m)
		return 2;
	*p = (CUdeviceptr)(uintptr_t)m;
	return OK;
}

CUresult cuMemFree_v2(CUdeviceptr p) { NEED_CTX(); free((void *)(uintptr_t)p); return OK; }

CUresult cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) {
	NEED_CTX();
	memset((void *)(uintptr_t)p, v, n);
	return OK;
}

CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t n) {
	NEED_CTX();
	memcpy((void *)(uintptr_t)dst, src, n);
	return OK;
}

CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t n) {
	NEED_CTX();
	memcpy(dst, (void *)(uintptr_t)src, n);
	return OK;
}

CUresult cuMemHostAlloc(void **pp, size_t n, unsigned int flags) {
	NEED_CTX();
	(void)flags;
	*pp = malloc(n);
	return *pp ? OK : 2;
}

CUresult cuMemFreeHost(void *p) { NEED_CTX(); free(p); return OK; }

#ifndef KYB_FAKE_NO_CHECKPOINT
static CUresult pid_error(int pid) {
	switch (pid) {
	case NOT_READY: case TIMEOUT: case NOT_SUPPORTED: case NOT_PERMITTED:
		return pid;
	}
	return pid <= 0 ? INVALID_VALUE : OK;
}

static int all_zero(const void *p, size_t n) {
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++)
		if (b[i])
			return 0;
	return 1;
}

CUresult cuCheckpointProcessGetRestoreThreadId(int pid, int *tid) {
	CUresult r = pid_error(pid);
	if (r)
		return r;
	*tid = pid + 1;
	return OK;
}

CUresult cuCheckpointProcessGetState(int pid, CUprocessState *state) {
	CUresult r = pid_error(pid);
	if (r)
		return r;
	*state = pid % 4;
	return OK;
}

CUresult cuCheckpointProcessLock(int pid, CUcheckpointLockArgs *a) {
	CUresult r = pid_error(pid);
	if (r)
		return r;
	if (!a || a->reserved0 || !all_zero(a->reserved1, sizeof a->reserved1))
		return INVALID_VALUE;
	if ((int)a->timeoutMs != env_int("KYB_FAKE_LOCK_TIMEOUT_MS", -1))
		return INVALID_VALUE;
	return OK;
}

CUresult cuCheckpointProcessCheckpoint(int pid, CUcheckpointCheckpointArgs *a) {
	CUresult r = pid_error(pid);
	if (r)
		return r;
	return a && all_zero(a, sizeof *a) ? OK : INVALID_VALUE;
}

CUresult cuCheckpointProcessRestore(int pid, CUcheckpointRestoreArgs *a) {
	CUresult r = pid_error(pid);
	if (r)
		return r;
	if (!initialized)
		return NOT_INITIALIZED;
	if (!a || !all_zero(a->reserved, sizeof a->reserved) || a->reserved1)
		return INVALID_VALUE;
	const char *want = getenv("KYB_FAKE_RESTORE_PAIRS");
	if (!want)
		want = "";
	size_t n = (size_t)a->gpuPairsCount * sizeof(CUcheckpointGpuPair);
	if (strlen(want) != 2 * n)
		return INVALID_VALUE;
	if (n == 0)
		return a->gpuPairs == NULL ? OK : INVALID_VALUE;
	const unsigned char *got = (const unsigned char *)a->gpuPairs;
	for (size_t i = 0; i < n; i++) {
		char hex[3];
		snprintf(hex, sizeof hex, "%02x", got[i]);
		if (hex[0] != want[2 * i] || hex[1] != want[2 * i + 1])
			return INVALID_VALUE;
	}
	return OK;
}

CUresult cuCheckpointProcessUnlock(int pid, CUcheckpointUnlockArgs *a) {
	CUresult r = pid_error(pid);
	if (r)
		return r;
	return a && all_zero(a, sizeof *a) ? OK : INVALID_VALUE;
}
#endif
