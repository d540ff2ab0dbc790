//go:build cgo

package cuda

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestCLayout checks the argument structs of cuda_driver.h, as the C compiler
// lays them out, against the CUDA 13.0 driver ABI: each args struct is 64
// bytes, a GPU pair 32. A mistake here would hand the driver garbage.
func TestCLayout(t *testing.T) {
	want := map[string]uint64{
		"sizeof(CUuuid)":                                  16,
		"sizeof(CUcheckpointGpuPair)":                     32,
		"offsetof(CUcheckpointGpuPair.oldUuid)":           0,
		"offsetof(CUcheckpointGpuPair.newUuid)":           16,
		"sizeof(CUcheckpointLockArgs)":                    64,
		"offsetof(CUcheckpointLockArgs.timeoutMs)":        0,
		"offsetof(CUcheckpointLockArgs.reserved0)":        4,
		"offsetof(CUcheckpointLockArgs.reserved1)":        8,
		"sizeof(CUcheckpointCheckpointArgs)":              64,
		"offsetof(CUcheckpointCheckpointArgs.reserved)":   0,
		"sizeof(CUcheckpointRestoreArgs)":                 64,
		"offsetof(CUcheckpointRestoreArgs.gpuPairs)":      0,
		"offsetof(CUcheckpointRestoreArgs.gpuPairsCount)": 8,
		"offsetof(CUcheckpointRestoreArgs.reserved)":      12,
		"offsetof(CUcheckpointRestoreArgs.reserved1)":     56,
		"sizeof(CUcheckpointUnlockArgs)":                  64,
		"offsetof(CUcheckpointUnlockArgs.reserved)":       0,
		"sizeof(CUprocessState)":                          4,
		"sizeof(CUresult)":                                4,
		"sizeof(CUdeviceptr)":                             8,
	}
	if diff := cmp.Diff(want, cLayout()); diff != "" {
		t.Errorf("C struct layout (-want +got):\n%s", diff)
	}
}
