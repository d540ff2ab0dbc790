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

// StepFind is the step of RestoreImage that picks the checkpointed processes among the
// container's.
const StepFind = "Find"

// ImageRestore is the GPU half of a restore from a checkpoint image: the container's processes
// were restored by CRIU (runc restore) and are CHECKPOINTED in the driver, their GPU memory
// in their host memory; RestoreImage puts it onto GPUs of this node and unlocks them.
type ImageRestore struct {
	// PIDs of the restored container's processes, in the agent's PID namespace. Processes
	// without CUDA or not checkpointed are left alone.
	PIDs []int
	// From are the GPUs the memory was on when the image was written (metadata.json), in the
	// order of the pod's GPUs; they may belong to another node.
	From []cuda.UUID
	// To are the GPUs of this node to put it on, one per GPU of From, in order.
	To []cuda.UUID
	// Bytes of GPU memory in the image (metadata.json), reported as moved.
	Bytes int64
	// Footprint is the image's GPU memory per GPU of From, when the image records it; without
	// it the restore guard asks for all of Bytes free on every target GPU.
	Footprint map[cuda.UUID]int64
}

// RestoreImage puts the GPU memory of processes restored from a checkpoint image onto the
// GPUs req.To and unlocks them. There is no state to roll back to: a process whose memory
// cannot go back cannot run, so on failure the caller stops the container (the image stays
// as it was) and the error says which step failed. Every driver call is bounded by the step
// timeout; refused restores are retried like a resume's.
func (e *Engine) RestoreImage(ctx context.Context, pod podmap.PodRef, req ImageRestore) (res Result, err error) {
	const op = "restore"
	logger := klog.FromContext(ctx).WithValues("pod", klog.KRef(pod.Namespace, pod.Name))
	start := e.clock.Now()
	defer func() { observe(metrics.OperationResume, start, e.clock.Now(), res, err) }()
	fail := func(cause Cause, err error) error {
		return &Error{Op: op, Pod: pod.String(), Cause: cause, Err: err}
	}

	p, err := e.begin(op, pod)
	if err != nil {
		return Result{}, err
	}
	defer e.end(p)

	if len(req.From) == 0 || len(req.To) != len(req.From) {
		return Result{}, fail(CauseInvalidTarget, fmt.Errorf("%d target gpus for an image of %d gpus: want one per gpu of the image", len(req.To), len(req.From)))
	}
	all, err := e.GPUs()
	if err != nil {
		return Result{}, fail(CauseInternal, err)
	}
	pairs, err := imagePairs(all, req.From, req.To)
	if err != nil {
		return Result{}, fail(CauseInvalidTarget, err)
	}
	if err := e.capability(pairs != nil); err != nil {
		return Result{}, fail(CauseUnsupported, err)
	}

	t := e.clock.Now()
	var procs []int
	for _, pid := range req.PIDs {
		var st cuda.ProcessState
		err := e.call(ctx, e.cfg.StepTimeout, "get state", pid, func() error {
			var err error
			st, err = e.driver.CheckpointProcessGetState(pid)
			return err
		})
		switch {
		case errors.Is(err, errStepTimeout):
			e.set(func() { p.stuck = err })
			return Result{}, fail(CauseStepTimeout, err)
		case err != nil:
			// No CUDA in this process (NOT_INITIALIZED), or it is gone.
			logger.V(4).Info("Not a checkpointed CUDA process", "pid", pid, "err", err)
		case st == cuda.ProcessStateCheckpointed:
			procs = append(procs, pid)
		default:
			logger.V(4).Info("CUDA process not checkpointed, left alone", "pid", pid, "state", st)
		}
	}
	if len(procs) == 0 {
		return Result{}, fail(CauseNoProcesses, fmt.Errorf("none of the container's %d processes %v is a checkpointed CUDA process", len(req.PIDs), req.PIDs))
	}
	res.Steps = append(res.Steps, Step{Name: StepFind, Duration: e.clock.Since(t)})
	if err := e.checkGPUMemory(ctx, imageNeeds(req)); err != nil {
		cause := CauseInternal
		if errors.Is(err, ErrInsufficientGPUMemory) {
			cause = CauseInsufficientGPUMemory
		}
		logger.V(2).Info("Not restoring the image's GPU memory: the restore guard refused", "err", err)
		return Result{}, fail(cause, err)
	}

	t = e.clock.Now()
	for _, pid := range procs {
		if err := e.restore(ctx, pid, pairs); err != nil {
			if errors.Is(err, errStepTimeout) {
				e.set(func() { p.stuck = err })
				return Result{}, fail(CauseStepTimeout, err)
			}
			if errors.Is(err, ErrGPUStateLost) {
				return Result{}, fail(CauseGPUStateLost, err)
			}
			return Result{}, fail(CauseRestoreFailed, fmt.Errorf("gpu pairs %s: %w", pairsString(pairs), err))
		}
	}
	res.Steps = append(res.Steps, Step{Name: StepRestore, Duration: e.clock.Since(t), Bytes: req.Bytes})

	t = e.clock.Now()
	var errs []error
	for _, pid := range procs {
		err := e.call(ctx, e.cfg.StepTimeout, "unlock", pid, func() error { return e.driver.CheckpointProcessUnlock(pid) })
		if errors.Is(err, errStepTimeout) {
			e.set(func() { p.stuck = err })
		}
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return Result{}, fail(CauseUnlockFailed, err)
	}
	res.Steps = append(res.Steps, Step{Name: StepUnlock, Duration: e.clock.Since(t)})
	res.Bytes = req.Bytes
	res.GPUs = slices.Clone(req.To)
	logger.V(2).Info("Restored GPU memory of an image", "pids", procs, "from", req.From, "to", req.To, "bytes", req.Bytes, "duration", e.clock.Since(start))
	return res, nil
}

// imageNeeds is the memory each target GPU of an image restore must have free.
func imageNeeds(req ImageRestore) map[cuda.UUID]int64 {
	need := map[cuda.UUID]int64{}
	for i, t := range req.To {
		if b, ok := req.Footprint[req.From[i]]; ok {
			need[t] += b
			continue
		}
		need[t] += req.Bytes
	}
	return need
}

// imagePairs are the restore pairs for memory that was on from (in an image) going to to:
// a bijection over every GPU of the node, which is what the driver accepts.
//
// When every GPU of from is a GPU of this node (an image restored on the node that wrote it)
// these are cuda.RemapPairs' pairs. Otherwise the image comes from another node: each old GPU
// pairs with its target and every other GPU of this node with itself, so that the pairs still
// cover every GPU here once on each side. That second form is not proven on a driver yet.
func imagePairs(all, from, to []cuda.UUID) ([]cuda.GPUPair, error) {
	for i, t := range to {
		if !slices.Contains(all, t) {
			return nil, fmt.Errorf("target gpu %s is not a gpu of the node", t)
		}
		if slices.Contains(to[:i], t) {
			return nil, fmt.Errorf("target gpu %s named twice", t)
		}
		if slices.Contains(from[:i], from[i]) {
			return nil, fmt.Errorf("image gpu %s named twice", from[i])
		}
	}
	local := true
	for _, f := range from {
		local = local && slices.Contains(all, f)
	}
	if local {
		moves := make(map[cuda.UUID]cuda.UUID, len(from))
		for i := range from {
			moves[from[i]] = to[i]
		}
		return cuda.RemapPairs(all, moves)
	}
	for _, f := range from {
		if slices.Contains(all, f) {
			return nil, fmt.Errorf("image gpus %v are partly gpus of this node (%s) and partly not: cannot pair them", from, f)
		}
	}
	pairs := make([]cuda.GPUPair, 0, len(all))
	for i := range from {
		pairs = append(pairs, cuda.GPUPair{Old: from[i], New: to[i]})
	}
	for _, u := range all {
		if !slices.Contains(to, u) {
			pairs = append(pairs, cuda.GPUPair{Old: u, New: u})
		}
	}
	return pairs, nil
}

func pairsString(pairs []cuda.GPUPair) string {
	if len(pairs) == 0 {
		return "none (same gpus)"
	}
	s := ""
	for i, p := range pairs {
		if i > 0 {
			s += ","
		}
		s += p.Old.String() + ">" + p.New.String()
	}
	return s
}
