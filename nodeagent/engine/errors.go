package engine

import (
	"errors"
	"fmt"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// Cause is why an operation failed, in words a person and a metric label can use.
type Cause string

// The causes of failed operations.
const (
	// CauseBusy: another operation on the pod is in progress.
	CauseBusy Cause = "Busy"
	// CauseNoProcesses: the pod has no GPU processes on the node.
	CauseNoProcesses Cause = "NoProcesses"
	// CauseWrongState: the pod is not in the state the operation needs (suspending a suspended
	// pod, resuming a running one).
	CauseWrongState Cause = "WrongState"
	// CauseInvalidTarget: the GPUs to resume onto are not GPUs of the node or do not match the
	// pod's GPUs.
	CauseInvalidTarget Cause = "InvalidTarget"
	// CauseUnsupported: the driver lacks the checkpoint API or GPU remapping.
	CauseUnsupported Cause = "Unsupported"
	// CauseHostMemoryExhausted: parking the pod's GPU memory would exceed the host memory
	// that may be used for it.
	CauseHostMemoryExhausted Cause = "HostMemoryExhausted"
	// CauseLockTimeout: a process did not finish its GPU work within the lock timeout.
	CauseLockTimeout Cause = "LockTimeout"
	// CauseLockFailed, CauseCheckpointFailed, CauseRestoreFailed, CauseUnlockFailed: a driver
	// call failed.
	CauseLockFailed       Cause = "LockFailed"
	CauseCheckpointFailed Cause = "CheckpointFailed"
	CauseRestoreFailed    Cause = "RestoreFailed"
	CauseUnlockFailed     Cause = "UnlockFailed"
	// CauseInsufficientGPUMemory: the restore guard refused a restore because a target GPU has
	// less free memory than the pod's footprint before its checkpoint plus the margin. Nothing
	// changed; it is worth trying again once memory is free.
	CauseInsufficientGPUMemory Cause = kv1.ReasonInsufficientGPUMemory
	// CauseGPUStateLost: the driver refused a restore for lack of GPU memory, which destroys
	// the process's GPU state (driver 580): the pod cannot run on.
	CauseGPUStateLost Cause = "GPUStateLost"
	// CauseStepTimeout: a driver call did not return within the step timeout; the pod's
	// state is unknown and the agent refuses further operations on it.
	CauseStepTimeout Cause = "StepTimeout"
	// CauseFetchFailed: the checkpoint image holding a suspended pod's memory could not be
	// read from its storage tier (object storage unreachable, disk error); nothing changed.
	CauseFetchFailed Cause = "FetchFailed"
	// CauseImageCorrupt: the checkpoint image holding a suspended pod's memory failed its
	// checks (manifest, authentication, SHA-256); it was not restored and nothing was deleted.
	CauseImageCorrupt Cause = "ImageCorrupt"
	// CauseInternal: something else, such as a failure to list the pod's processes.
	CauseInternal Cause = "Internal"
)

// Causes are all causes, for the failure metric's series.
var Causes = []Cause{CauseBusy, CauseNoProcesses, CauseWrongState, CauseInvalidTarget, CauseUnsupported,
	CauseHostMemoryExhausted, CauseLockTimeout, CauseLockFailed, CauseCheckpointFailed, CauseRestoreFailed,
	CauseUnlockFailed, CauseStepTimeout, CauseFetchFailed, CauseImageCorrupt, CauseInternal}

// Error is a failed operation on a pod.
type Error struct {
	// Op is "suspend" or "resume".
	Op string
	// Pod is namespace/name.
	Pod   string
	Cause Cause
	// RolledBack is true when the pod was put back into the state it had before the
	// operation (Running after a failed suspend, Suspended after a failed resume).
	RolledBack bool
	Err        error
}

func (e *Error) Error() string {
	s := fmt.Sprintf("%s pod %s: %s: %v", e.Op, e.Pod, e.Cause, e.Err)
	if e.RolledBack {
		s += " (rolled back)"
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// Attempted reports whether a failure with this cause happened during the action, after the
// driver had begun to change the pod's processes; other causes are refusals that changed
// nothing.
func (c Cause) Attempted() bool {
	switch c {
	case CauseLockTimeout, CauseLockFailed, CauseCheckpointFailed, CauseRestoreFailed, CauseUnlockFailed, CauseStepTimeout, CauseGPUStateLost:
		return true
	}
	return false
}

// Retryable reports whether the same operation may succeed later without anyone changing the
// request: the pod was busy, or the node lacked memory for it just now.
func (c Cause) Retryable() bool {
	switch c {
	case CauseBusy, CauseInsufficientGPUMemory, CauseHostMemoryExhausted:
		return true
	}
	return false
}

// CauseOf returns the Cause of an *Error in err's chain, or CauseInternal.
func CauseOf(err error) Cause {
	var e *Error
	if errors.As(err, &e) {
		return e.Cause
	}
	return CauseInternal
}

// RolledBack reports whether err is an *Error whose operation was undone.
func RolledBack(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.RolledBack
}
