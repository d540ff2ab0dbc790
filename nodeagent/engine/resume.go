package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"k8s.io/klog/v2"

	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/nodeagent/metrics"
	"github.com/kybernate/kybernate/nodeagent/podmap"
)

// Resume puts a suspended pod's memory back. from are the pod's GPUs (kybernate.io/gpus) and
// to, when not empty, the GPUs to put them on, one per GPU of from, in order.
func (e *Engine) Resume(ctx context.Context, pod podmap.PodRef, from, to []cuda.UUID) (res Result, err error) {
	const op = "resume"
	logger := klog.FromContext(ctx).WithValues("pod", klog.KRef(pod.Namespace, pod.Name))
	ctx = klog.NewContext(ctx, logger)
	start := e.clock.Now()
	defer func() { observe(metrics.OperationResume, start, e.clock.Now(), res, err) }()
	fail := func(cause Cause, rolledBack bool, err error) error {
		return &Error{Op: op, Pod: pod.String(), Cause: cause, RolledBack: rolledBack, Err: err}
	}

	p, err := e.begin(op, pod)
	if err != nil {
		return Result{}, err
	}
	defer e.end(p)
	if p.parked == nil {
		// After an agent restart the driver (or the simulation) may still know.
		procs, err := e.finder.Processes(ctx, pod)
		if err != nil {
			return Result{}, fail(CauseInternal, false, fmt.Errorf("finding the pod's gpu processes: %w", err))
		}
		if len(procs) == 0 || slices.ContainsFunc(procs, func(pr Process) bool { return pr.State != cuda.ProcessStateCheckpointed }) {
			return Result{}, fail(CauseWrongState, false, errors.New("pod is not suspended"))
		}
		e.set(func() { p.parked = procs })
	}
	parked := p.parked

	from, moves, pairs, err := e.resumeTargets(ctx, parked, from, to, fail)
	if err != nil {
		return Result{}, err
	}
	t := e.clock.Now()
	moved, err := e.restoreAll(ctx, p, parked, pairs, fail)
	if err != nil {
		return Result{}, err
	}
	res.Steps = append(res.Steps, Step{Name: StepRestore, Duration: e.clock.Since(t), Bytes: moved})

	t = e.clock.Now()
	if err := e.unlockAll(ctx, parked); err != nil {
		// The memory is on the GPUs but some processes stay locked: nothing to roll back to
		// that would be better. Someone must look.
		e.set(func() { p.parked, p.stuck = nil, err })
		return Result{}, fail(CauseUnlockFailed, false, err)
	}
	res.Steps = append(res.Steps, Step{Name: StepUnlock, Duration: e.clock.Since(t)})
	res.Bytes = moved
	res.GPUs = targetsOf(from, moves)
	e.set(func() { p.parked = nil })
	logger.V(2).Info("Resumed pod", "bytes", moved, "gpus", res.GPUs, "duration", e.clock.Since(start))
	return res, nil
}

// resumeTargets works out where the parked memory goes (from: the GPUs it was parked from,
// moves and the driver's GPU pairs) and checks, before the driver is asked, that the driver
// can move it there and that the targets have the memory free (the restore guard).
func (e *Engine) resumeTargets(ctx context.Context, parked []Process, from, to []cuda.UUID, fail func(Cause, bool, error) error) ([]cuda.UUID, map[cuda.UUID]cuda.UUID, []cuda.GPUPair, error) {
	all, err := e.GPUs()
	if err != nil {
		return nil, nil, nil, fail(CauseInternal, false, err)
	}
	// kybernate.io/gpus may already name the GPUs the memory goes to: the scheduler's resume
	// controller moves it before it asks, so that nothing else is placed there meanwhile. The
	// memory itself is where it was parked.
	if src := parkedGPUs(parked); len(src) == len(from) && !sameSet(src, from) {
		if len(to) == 0 {
			to = from
		}
		from = src
	}
	moves, err := movesOf(parked, all, from, to)
	if err != nil {
		return nil, nil, nil, fail(CauseInvalidTarget, false, err)
	}
	pairs, err := cuda.RemapPairs(all, moves)
	if err != nil {
		return nil, nil, nil, fail(CauseInvalidTarget, false, err)
	}
	if err := e.capability(pairs != nil); err != nil {
		return nil, nil, nil, fail(CauseUnsupported, false, err)
	}
	if err := e.checkGPUMemory(ctx, restoreNeeds(parked, moves)); err != nil {
		cause := CauseInternal
		if errors.Is(err, ErrInsufficientGPUMemory) {
			cause = CauseInsufficientGPUMemory
		}
		klog.FromContext(ctx).V(2).Info("Not restoring: the restore guard refused", "err", err)
		return nil, nil, nil, fail(cause, false, err)
	}
	return from, moves, pairs, nil
}

// restoreAll restores the parked processes one by one and returns the bytes moved. When one
// fails, those restored before it are checkpointed again (rolled back), except when the
// failure left a process stuck or lost its GPU state.
func (e *Engine) restoreAll(ctx context.Context, p *podEntry, parked []Process, pairs []cuda.GPUPair, fail func(Cause, bool, error) error) (int64, error) {
	logger := klog.FromContext(ctx)
	var moved int64
	for i, pr := range parked {
		err := e.restore(ctx, pr.PID, pairs)
		if err == nil {
			moved += pr.Bytes
			continue
		}
		if errors.Is(err, errStepTimeout) {
			e.set(func() { p.stuck = err })
			return 0, fail(CauseStepTimeout, false, err)
		}
		if errors.Is(err, ErrGPUStateLost) {
			// Nothing brings the process back. The others are put back to suspended, but the
			// pod as a whole cannot run on.
			e.set(func() { p.lost = err })
			rbErr := e.checkpointAll(ctx, parked[:i])
			logger.Error(err, "Restore ran out of GPU memory: the pod's GPU state is lost", "pid", pr.PID, "rollbackErr", rbErr)
			return 0, fail(CauseGPUStateLost, false, joinRollback(err, rbErr))
		}
		// Back to suspended: checkpoint again what was restored.
		rbErr := e.checkpointAll(ctx, parked[:i])
		logger.V(2).Info("Resume failed at restore; rolled back", "pid", pr.PID, "err", err, "rollbackErr", rbErr)
		return 0, fail(CauseRestoreFailed, rbErr == nil, joinRollback(err, rbErr))
	}
	return moved, nil
}

// parkedGPUs are the distinct GPUs the parked processes were on, in order of appearance.
func parkedGPUs(parked []Process) []cuda.UUID {
	var out []cuda.UUID
	for _, pr := range parked {
		if !slices.Contains(out, pr.GPU) {
			out = append(out, pr.GPU)
		}
	}
	return out
}

func sameSet(a, b []cuda.UUID) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

// movesOf checks the targets of a resume and returns the GPU moves: from[i] -> to[i].
func movesOf(parked []Process, all, from, to []cuda.UUID) (map[cuda.UUID]cuda.UUID, error) {
	if len(to) == 0 {
		return nil, nil
	}
	if len(to) != len(from) {
		return nil, fmt.Errorf("%d target gpus for a pod on %d gpus: want one per gpu of the pod", len(to), len(from))
	}
	moves := make(map[cuda.UUID]cuda.UUID, len(to))
	for i, t := range to {
		if !slices.Contains(all, t) {
			return nil, fmt.Errorf("target gpu %s is not a gpu of the node", t)
		}
		moves[from[i]] = t
	}
	for _, pr := range parked {
		if !slices.Contains(from, pr.GPU) {
			return nil, fmt.Errorf("pid %d was on gpu %s, which is not among the pod's gpus %v", pr.PID, pr.GPU, from)
		}
	}
	return moves, nil
}

func targetsOf(from []cuda.UUID, moves map[cuda.UUID]cuda.UUID) []cuda.UUID {
	out := make([]cuda.UUID, len(from))
	for i, f := range from {
		out[i] = f
		if t, ok := moves[f]; ok {
			out[i] = t
		}
	}
	return out
}

// restore restores one process, retrying refusals.
func (e *Engine) restore(ctx context.Context, pid int, pairs []cuda.GPUPair) error {
	backoff := e.cfg.RetryBackoff
	var err error
	for attempt := 1; attempt <= e.cfg.RestoreRetries; attempt++ {
		err = e.call(ctx, e.cfg.StepTimeout, "restore", pid, func() error { return e.driver.CheckpointProcessRestore(pid, pairs) })
		if err == nil || errors.Is(err, errStepTimeout) {
			return err
		}
		// OUT_OF_MEMORY destroys the process's GPU state (driver 580): no retry helps.
		if errors.Is(err, cuda.ErrOutOfMemory) {
			return fmt.Errorf("restore of pid %d: %w: %w", pid, ErrGPUStateLost, err)
		}
		// A refusal of the pairs (INVALID_VALUE) leaves the process CHECKPOINTED and may
		// succeed later.
		if !errors.Is(err, cuda.ErrInvalidValue) {
			return err
		}
		klog.FromContext(ctx).V(2).Info("Restore refused; retrying", "pid", pid, "attempt", attempt, "err", err)
		if attempt < e.cfg.RestoreRetries && backoff > 0 {
			select {
			case <-ctx.Done():
				return fmt.Errorf("restore of pid %d: %w (%w)", pid, ctx.Err(), err)
			case <-e.clock.After(backoff):
			}
			backoff *= 2
		}
	}
	return fmt.Errorf("restore of pid %d refused %d times: %w", pid, e.cfg.RestoreRetries, err)
}
