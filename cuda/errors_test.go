package cuda

import (
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestErrorIs(t *testing.T) {
	sentinels := map[string]error{
		"ErrInvalidValue":   ErrInvalidValue,
		"ErrNotInitialized": ErrNotInitialized,
		"ErrNoDevice":       ErrNoDevice,
		"ErrIllegalState":   ErrIllegalState,
		"ErrNotReady":       ErrNotReady,
		"ErrNotPermitted":   ErrNotPermitted,
		"ErrNotSupported":   ErrNotSupported,
		"ErrDriverTimeout":  ErrDriverTimeout,
		"ErrTimeout":        ErrTimeout,
	}
	tests := []struct {
		code Result
		want []string // the sentinels it matches
	}{
		{code: 1, want: []string{"ErrInvalidValue"}},
		{code: 3, want: []string{"ErrNotInitialized"}},
		{code: 100, want: []string{"ErrNoDevice"}},
		{code: 401, want: []string{"ErrIllegalState"}},
		{code: 600, want: []string{"ErrNotReady", "ErrTimeout"}},
		{code: 800, want: []string{"ErrNotPermitted"}},
		{code: 801, want: []string{"ErrNotSupported"}},
		{code: 909, want: []string{"ErrDriverTimeout", "ErrTimeout"}},
		{code: 999, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.code.String(), func(t *testing.T) {
			err := fmt.Errorf("suspend pod: %w", &Error{Op: "cuCheckpointProcessLock", Code: tt.code})
			var got []string
			for _, name := range []string{"ErrInvalidValue", "ErrNotInitialized", "ErrNoDevice", "ErrIllegalState",
				"ErrNotReady", "ErrNotPermitted", "ErrNotSupported", "ErrDriverTimeout", "ErrTimeout"} {
				if errors.Is(err, sentinels[name]) {
					got = append(got, name)
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("errors.Is matches (-want +got):\n%s", diff)
			}
		})
	}
}

func TestResultCodes(t *testing.T) {
	// The numbers of cuda.h (CUDA 13), which the driver returns.
	want := map[string]int{
		"CUDA_SUCCESS":                0,
		"CUDA_ERROR_INVALID_VALUE":    1,
		"CUDA_ERROR_OUT_OF_MEMORY":    2,
		"CUDA_ERROR_NOT_INITIALIZED":  3,
		"CUDA_ERROR_DEINITIALIZED":    4,
		"CUDA_ERROR_STUB_LIBRARY":     34,
		"CUDA_ERROR_NO_DEVICE":        100,
		"CUDA_ERROR_INVALID_DEVICE":   101,
		"CUDA_ERROR_INVALID_CONTEXT":  201,
		"CUDA_ERROR_OPERATING_SYSTEM": 304,
		"CUDA_ERROR_ILLEGAL_STATE":    401,
		"CUDA_ERROR_NOT_FOUND":        500,
		"CUDA_ERROR_NOT_READY":        600,
		"CUDA_ERROR_NOT_PERMITTED":    800,
		"CUDA_ERROR_NOT_SUPPORTED":    801,
		"CUDA_ERROR_TIMEOUT":          909,
		"CUDA_ERROR_UNKNOWN":          999,
	}
	got := map[string]int{}
	for r := range resultNames {
		got[r.String()] = int(r)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("result names (-want +got):\n%s", diff)
	}
}

func TestErrorMessage(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{err: &Error{Op: "cuCheckpointProcessLock", Code: 600, Name: "CUDA_ERROR_NOT_READY"},
			want: "cuCheckpointProcessLock: CUDA_ERROR_NOT_READY (600)"},
		{err: &Error{Op: "cuInit", Code: 12345}, want: "cuInit: CUresult(12345) (12345)"},
		{err: NewError("cuMemAlloc_v2", ErrorOutOfMemory), want: "cuMemAlloc_v2: CUDA_ERROR_OUT_OF_MEMORY (2)"},
		{err: ErrIllegalState, want: "CUDA_ERROR_ILLEGAL_STATE (401)"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
}

func TestCapability(t *testing.T) {
	type result struct {
		Capability            Capability
		Version               string
		CheckpointErr         bool
		RemapErr              bool
		CheckpointUnsupported bool
		RemapUnsupported      bool
	}
	tests := []struct {
		version int
		want    result
	}{
		{version: 12040, want: result{Capability: Capability{DriverVersion: 12040}, Version: "12.4",
			CheckpointErr: true, RemapErr: true, CheckpointUnsupported: true, RemapUnsupported: true}},
		{version: 12080, want: result{Capability: Capability{DriverVersion: 12080, Checkpoint: true}, Version: "12.8",
			RemapErr: true, RemapUnsupported: true}},
		{version: 12090, want: result{Capability: Capability{DriverVersion: 12090, Checkpoint: true}, Version: "12.9",
			RemapErr: true, RemapUnsupported: true}},
		{version: 13000, want: result{Capability: Capability{DriverVersion: 13000, Checkpoint: true, Remap: true}, Version: "13.0"}},
		{version: 13020, want: result{Capability: Capability{DriverVersion: 13020, Checkpoint: true, Remap: true}, Version: "13.2"}},
	}
	for _, tt := range tests {
		c := CapabilityOf(tt.version)
		cerr, rerr := c.CheckCheckpoint(), c.CheckRemap()
		got := result{
			Capability:            c,
			Version:               FormatVersion(tt.version),
			CheckpointErr:         cerr != nil,
			RemapErr:              rerr != nil,
			CheckpointUnsupported: errors.Is(cerr, ErrCheckpointUnsupported) && errors.Is(cerr, ErrNotSupported),
			RemapUnsupported:      errors.Is(rerr, ErrRemapUnsupported) && errors.Is(rerr, ErrNotSupported),
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("version %d (-want +got):\n%s", tt.version, diff)
		}
	}
}

func TestProcessStateString(t *testing.T) {
	got := []string{}
	for s := ProcessState(0); s <= 4; s++ {
		got = append(got, s.String())
	}
	want := []string{"RUNNING", "LOCKED", "CHECKPOINTED", "FAILED", "ProcessState(4)"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
