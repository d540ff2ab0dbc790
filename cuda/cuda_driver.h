/*
 * The part of the CUDA 13.0 driver API (cuda.h) that package cuda calls,
 * written from NVIDIA's public driver API reference. No cuda.h is needed to
 * build: libcuda.so.1 is opened with dlopen at run time and every entry point
 * is called through a function pointer resolved with dlsym.
 *
 * Types are spelled with their ABI in mind: CUresult and CUprocessState are C
 * enums in cuda.h, which are int-sized on every platform CUDA supports, so
 * they are declared as int here.
 */
#ifndef KYBERNATE_CUDA_DRIVER_H
#define KYBERNATE_CUDA_DRIVER_H

#include <stddef.h>
#include <stdint.h>

typedef int CUresult;
typedef int CUdevice;
typedef struct CUctx_st *CUcontext;
typedef unsigned long long CUdeviceptr; /* CUdeviceptr_v2 */
typedef uint64_t cuuint64_t;

typedef struct CUuuid_st {
	char bytes[16];
} CUuuid;

/* CUprocessState */
enum {
	KYB_CU_PROCESS_STATE_RUNNING = 0,
	KYB_CU_PROCESS_STATE_LOCKED = 1,
	KYB_CU_PROCESS_STATE_CHECKPOINTED = 2,
	KYB_CU_PROCESS_STATE_FAILED = 3,
};
typedef int CUprocessState;

/* r570+ (CUDA 12.8). */
typedef struct CUcheckpointLockArgs_st {
	unsigned int timeoutMs; /* 0: wait without limit */
	unsigned int reserved0;
	cuuint64_t reserved1[7];
} CUcheckpointLockArgs;

typedef struct CUcheckpointCheckpointArgs_st {
	cuuint64_t reserved[8];
} CUcheckpointCheckpointArgs;

/* r580+ (CUDA 13.0): restore may map the GPUs a process used to others. */
typedef struct CUcheckpointGpuPair_st {
	CUuuid oldUuid;
	CUuuid newUuid;
} CUcheckpointGpuPair;

/*
 * In CUDA 12.8 this struct was cuuint64_t reserved[8]; CUDA 13.0 carved the
 * pair list out of the reserved space, so an all-zero struct means the same
 * to both drivers.
 */
typedef struct CUcheckpointRestoreArgs_st {
	CUcheckpointGpuPair *gpuPairs;
	unsigned int gpuPairsCount;
	char reserved[44];
	cuuint64_t reserved1;
} CUcheckpointRestoreArgs;

typedef struct CUcheckpointUnlockArgs_st {
	cuuint64_t reserved[8];
} CUcheckpointUnlockArgs;

/* cuMemHostAlloc flags */
#define KYB_CU_MEMHOSTALLOC_PORTABLE 0x01

typedef CUresult (*kyb_pfn_cuInit)(unsigned int flags);
typedef CUresult (*kyb_pfn_cuDriverGetVersion)(int *version);
typedef CUresult (*kyb_pfn_cuGetErrorName)(CUresult error, const char **name);
typedef CUresult (*kyb_pfn_cuDeviceGetCount)(int *count);
typedef CUresult (*kyb_pfn_cuDeviceGet)(CUdevice *device, int ordinal);
typedef CUresult (*kyb_pfn_cuDeviceGetName)(char *name, int len, CUdevice dev);
typedef CUresult (*kyb_pfn_cuDeviceGetUuid)(CUuuid *uuid, CUdevice dev);
typedef CUresult (*kyb_pfn_cuDeviceTotalMem)(size_t *bytes, CUdevice dev);
typedef CUresult (*kyb_pfn_cuDevicePrimaryCtxRetain)(CUcontext *ctx, CUdevice dev);
typedef CUresult (*kyb_pfn_cuDevicePrimaryCtxRelease)(CUdevice dev);
typedef CUresult (*kyb_pfn_cuCtxSetCurrent)(CUcontext ctx);
typedef CUresult (*kyb_pfn_cuCtxSynchronize)(void);
typedef CUresult (*kyb_pfn_cuMemGetInfo)(size_t *free, size_t *total);
typedef CUresult (*kyb_pfn_cuMemAlloc)(CUdeviceptr *dptr, size_t bytesize);
typedef CUresult (*kyb_pfn_cuMemFree)(CUdeviceptr dptr);
typedef CUresult (*kyb_pfn_cuMemsetD8)(CUdeviceptr dst, unsigned char uc, size_t n);
typedef CUresult (*kyb_pfn_cuMemcpyHtoD)(CUdeviceptr dst, const void *src, size_t n);
typedef CUresult (*kyb_pfn_cuMemcpyDtoH)(void *dst, CUdeviceptr src, size_t n);
typedef CUresult (*kyb_pfn_cuMemHostAlloc)(void **pp, size_t bytesize, unsigned int flags);
typedef CUresult (*kyb_pfn_cuMemFreeHost)(void *p);
typedef CUresult (*kyb_pfn_cuCheckpointProcessGetRestoreThreadId)(int pid, int *tid);
typedef CUresult (*kyb_pfn_cuCheckpointProcessGetState)(int pid, CUprocessState *state);
typedef CUresult (*kyb_pfn_cuCheckpointProcessLock)(int pid, CUcheckpointLockArgs *args);
typedef CUresult (*kyb_pfn_cuCheckpointProcessCheckpoint)(int pid, CUcheckpointCheckpointArgs *args);
typedef CUresult (*kyb_pfn_cuCheckpointProcessRestore)(int pid, CUcheckpointRestoreArgs *args);
typedef CUresult (*kyb_pfn_cuCheckpointProcessUnlock)(int pid, CUcheckpointUnlockArgs *args);

#endif
