package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/nodeagent/podmap"
)

// WithParked runs fn with the parked processes of a suspended pod while no other operation
// may touch the pod (they fail with CauseBusy meanwhile). The storage tiers use it to write the
// pod's memory into a checkpoint image and end its processes: when fn returns drop, the
// engine forgets the pod, whose memory is no longer in host memory.
func (e *Engine) WithParked(ctx context.Context, pod podmap.PodRef, fn func(parked []Process) (drop bool, err error)) error {
	const op = "spill"
	p, err := e.begin(op, pod)
	if err != nil {
		return err
	}
	defer e.end(p)
	if p.parked == nil {
		procs, err := e.finder.Processes(ctx, pod)
		if err != nil {
			return &Error{Op: op, Pod: pod.String(), Cause: CauseInternal, Err: fmt.Errorf("finding the pod's gpu processes: %w", err)}
		}
		if len(procs) == 0 || slices.ContainsFunc(procs, func(pr Process) bool { return pr.State != cuda.ProcessStateCheckpointed }) {
			return &Error{Op: op, Pod: pod.String(), Cause: CauseWrongState, Err: errors.New("pod is not suspended")}
		}
		p.parked = procs
	}
	drop, err := fn(slices.Clone(p.parked))
	if drop {
		e.mu.Lock()
		p.parked = nil
		e.mu.Unlock()
	}
	return err
}

// CheckRestore is the restore guard for processes that are not in host memory (their memory
// is in a checkpoint image): it reads free GPU memory and refuses, with CauseInsufficientGPUMemory,
// unless every target GPU has the processes' recorded footprint plus the margin free. from are
// the GPUs the processes were on, to the GPUs they go to (one per GPU of from; empty: the same).
func (e *Engine) CheckRestore(ctx context.Context, pod podmap.PodRef, procs []Process, from, to []cuda.UUID) error {
	const op = "resume"
	all, err := e.GPUs()
	if err != nil {
		return &Error{Op: op, Pod: pod.String(), Cause: CauseInternal, Err: err}
	}
	moves, err := movesOf(procs, all, from, to)
	if err != nil {
		return &Error{Op: op, Pod: pod.String(), Cause: CauseInvalidTarget, Err: err}
	}
	if err := e.checkGPUMemory(ctx, restoreNeeds(procs, moves)); err != nil {
		cause := CauseInternal
		if errors.Is(err, ErrInsufficientGPUMemory) {
			cause = CauseInsufficientGPUMemory
		}
		return &Error{Op: op, Pod: pod.String(), Cause: cause, Err: err}
	}
	return nil
}

// ResidentBytes is the GPU memory of the pod's processes that are not checkpointed: what a
// suspend of it would park in host memory.
func (e *Engine) ResidentBytes(ctx context.Context, pod podmap.PodRef) (int64, error) {
	procs, err := e.finder.Processes(ctx, pod)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, pr := range procs {
		if pr.State != cuda.ProcessStateCheckpointed {
			n += pr.Bytes
		}
	}
	return n, nil
}
