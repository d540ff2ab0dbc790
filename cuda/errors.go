package cuda

import (
	"errors"
	"fmt"
)

// Result is a CUresult. Values are those of the CUDA 13 cuda.h enum.
type Result int

// The results this package names. Others come through as their number.
const (
	Success             Result = 0
	ErrorInvalidValue   Result = 1
	ErrorOutOfMemory    Result = 2
	ErrorNotInitialized Result = 3
	ErrorDeinitialized  Result = 4
	ErrorStubLibrary    Result = 34
	ErrorNoDevice       Result = 100
	ErrorInvalidDevice  Result = 101
	ErrorInvalidContext Result = 201
	// ErrorOperatingSystem is what checkpoint calls return for a pid with no
	// process (measured, driver 580).
	ErrorOperatingSystem Result = 304
	ErrorIllegalState    Result = 401
	ErrorNotFound        Result = 500
	ErrorNotReady        Result = 600
	ErrorNotPermitted    Result = 800
	ErrorNotSupported    Result = 801
	ErrorTimeout         Result = 909
	ErrorUnknown         Result = 999
)

var resultNames = map[Result]string{
	Success:              "CUDA_SUCCESS",
	ErrorInvalidValue:    "CUDA_ERROR_INVALID_VALUE",
	ErrorOutOfMemory:     "CUDA_ERROR_OUT_OF_MEMORY",
	ErrorNotInitialized:  "CUDA_ERROR_NOT_INITIALIZED",
	ErrorDeinitialized:   "CUDA_ERROR_DEINITIALIZED",
	ErrorStubLibrary:     "CUDA_ERROR_STUB_LIBRARY",
	ErrorNoDevice:        "CUDA_ERROR_NO_DEVICE",
	ErrorInvalidDevice:   "CUDA_ERROR_INVALID_DEVICE",
	ErrorInvalidContext:  "CUDA_ERROR_INVALID_CONTEXT",
	ErrorOperatingSystem: "CUDA_ERROR_OPERATING_SYSTEM",
	ErrorIllegalState:    "CUDA_ERROR_ILLEGAL_STATE",
	ErrorNotFound:        "CUDA_ERROR_NOT_FOUND",
	ErrorNotReady:        "CUDA_ERROR_NOT_READY",
	ErrorNotPermitted:    "CUDA_ERROR_NOT_PERMITTED",
	ErrorNotSupported:    "CUDA_ERROR_NOT_SUPPORTED",
	ErrorTimeout:         "CUDA_ERROR_TIMEOUT",
	ErrorUnknown:         "CUDA_ERROR_UNKNOWN",
}

// String returns the cuda.h name of r, or CUresult(n) for others.
func (r Result) String() string {
	if n, ok := resultNames[r]; ok {
		return n
	}
	return fmt.Sprintf("CUresult(%d)", int(r))
}

// Error is a CUresult other than CUDA_SUCCESS returned by a driver call.
// Compare with errors.Is against the Err* values (the code decides) or take
// it apart with errors.As.
type Error struct {
	// Op is the driver entry point, e.g. "cuCheckpointProcessLock".
	Op string
	// Code is the CUresult.
	Code Result
	// Name is the driver's name for Code (cuGetErrorName).
	Name string
}

// NewError returns the error for code as returned by op, named as cuda.h
// names it. Implementations of Interface other than the driver's (fakes) use
// it to fail like the driver.
func NewError(op string, code Result) *Error {
	return &Error{Op: op, Code: code, Name: code.String()}
}

func (e *Error) Error() string {
	name := e.Name
	if name == "" {
		name = e.Code.String()
	}
	if e.Op == "" {
		return fmt.Sprintf("%s (%d)", name, int(e.Code))
	}
	return fmt.Sprintf("%s: %s (%d)", e.Op, name, int(e.Code))
}

// Is reports whether target is an *Error with the same code, or ErrTimeout
// and e is one of the two results the driver uses for a timed-out wait.
func (e *Error) Is(target error) bool {
	if target == ErrTimeout {
		return e.Code == ErrorNotReady || e.Code == ErrorTimeout
	}
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Values to compare driver errors with errors.Is; only the code matters.
var (
	ErrInvalidValue = NewError("", ErrorInvalidValue)
	ErrOutOfMemory  = NewError("", ErrorOutOfMemory)
	// ErrNotInitialized: cuInit was not called, or (checkpoint calls,
	// measured on driver 580) the pid is a process without CUDA.
	ErrNotInitialized = NewError("", ErrorNotInitialized)
	ErrNoDevice       = NewError("", ErrorNoDevice)
	ErrInvalidDevice  = NewError("", ErrorInvalidDevice)
	ErrInvalidContext = NewError("", ErrorInvalidContext)
	// ErrOperatingSystem: checkpoint calls on a pid that does not exist.
	ErrOperatingSystem = NewError("", ErrorOperatingSystem)
	ErrIllegalState    = NewError("", ErrorIllegalState)
	ErrNotFound        = NewError("", ErrorNotFound)
	// ErrNotReady is what cuCheckpointProcessLock returns when its timeout
	// passes; see also ErrTimeout.
	ErrNotReady      = NewError("", ErrorNotReady)
	ErrNotPermitted  = NewError("", ErrorNotPermitted)
	ErrNotSupported  = NewError("", ErrorNotSupported)
	ErrDriverTimeout = NewError("", ErrorTimeout)
	ErrUnknown       = NewError("", ErrorUnknown)
)

// ErrTimeout matches any driver error that means a wait timed out:
// CUDA_ERROR_NOT_READY (what lock timeouts return) and CUDA_ERROR_TIMEOUT.
var ErrTimeout = errors.New("cuda: timed out")

// Errors for what the loaded driver cannot do. Both are returned wrapped
// together with ErrNotSupported and the driver version.
var (
	// ErrCheckpointUnsupported: no cuCheckpointProcess* API (driver < r570,
	// CUDA 12.8).
	ErrCheckpointUnsupported = errors.New("cuda: checkpoint api not supported by driver")
	// ErrRemapUnsupported: no GPU pairs on restore (driver < r580, CUDA 13.0).
	ErrRemapUnsupported = errors.New("cuda: restoring onto other gpus not supported by driver")
)

// ErrNoDriver is wrapped by New when libcuda cannot be opened (machines
// without an NVIDIA driver) or is not a usable driver library.
var ErrNoDriver = errors.New("cuda: no usable nvidia driver library")
