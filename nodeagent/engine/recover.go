package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"syscall"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/nodeagent/podmap"
)

// Killer ends a process. On a node it is SIGKILL; the simulation removes the simulated
// process.
type Killer interface {
	Kill(pid int) error
}

// SignalKiller ends processes with SIGKILL.
type SignalKiller struct{}

// Kill sends SIGKILL to pid.
func (SignalKiller) Kill(pid int) error {
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill -9 %d: %w", pid, err)
	}
	return nil
}

// KnownPod is a pod of the node as the API shows it, with what the agent recorded about its
// processes: what Recover needs to take a suspended pod over after an agent restart.
type KnownPod struct {
	Ref podmap.PodRef
	// GPUs are the pod's kybernate.io/gpus.
	GPUs []cuda.UUID
	// Recorded are the pod's processes as the suspend that parked them recorded them (the
	// GPUCheckpoint status): PID, GPU and footprint.
	Recorded []Process
	// Declared is the pod's kybernate.io/gpu-memory per GPU (0: the whole GPU), the footprint
	// assumed for a parked process nothing was recorded for.
	Declared int64
}

// Recovery is what Recover found.
type Recovery struct {
	// Suspended are the pods whose processes are all parked, now held suspended.
	Suspended []podmap.PodRef
	// Ended are parked processes whose pod is gone, ended so that their host memory returns.
	Ended []EndedProcess
	// Errors are pods the engine could not take over, with why.
	Errors []error
}

// EndedProcess is a parked process Recover ended.
type EndedProcess struct {
	PID    int
	PodUID types.UID
}

// Recover takes over, after an agent restart, what the driver holds parked on the node. pids
// are the node's processes by the pod UID of their cgroup; known are the pods the API has on
// the node. For each process it asks the driver's checkpoint state: a LOCKED one (an operation
// the old agent did not finish) is unlocked; a pod whose CUDA processes are all CHECKPOINTED
// is held suspended with the footprints recorded at its suspend; CHECKPOINTED processes of
// pods that no longer exist are ended (their memory is parked for nobody). A pod with some
// processes parked and some running is left alone and reported.
func (e *Engine) Recover(ctx context.Context, pids map[types.UID][]int, known map[types.UID]KnownPod) Recovery {
	logger := klog.FromContext(ctx)
	var out Recovery
	for _, uid := range sortedUIDs(pids) {
		procs, err := e.cudaStates(ctx, pids[uid])
		if err != nil {
			out.Errors = append(out.Errors, fmt.Errorf("pod uid %s: %w", uid, err))
			continue
		}
		var parked []int
		for pid, st := range procs {
			if st == cuda.ProcessStateCheckpointed {
				parked = append(parked, pid)
			}
		}
		slices.Sort(parked)
		kp, ok := known[uid]
		if !ok {
			for _, pid := range parked {
				if err := e.endParked(pid); err != nil {
					out.Errors = append(out.Errors, fmt.Errorf("ending parked pid %d of gone pod uid %s: %w", pid, uid, err))
					continue
				}
				logger.Info("Ended a parked GPU process whose pod is gone", "pid", pid, "podUID", uid)
				out.Ended = append(out.Ended, EndedProcess{PID: pid, PodUID: uid})
			}
			continue
		}
		switch {
		case len(parked) == 0:
			continue
		case len(parked) < len(procs):
			out.Errors = append(out.Errors, fmt.Errorf("pod %s: %d of its %d gpu processes are parked, the others run: leaving it alone", kp.Ref, len(parked), len(procs)))
			continue
		}
		ps, err := parkedProcesses(kp, parked)
		if err != nil {
			out.Errors = append(out.Errors, fmt.Errorf("pod %s: %w", kp.Ref, err))
			continue
		}
		if err := e.Adopt(kp.Ref, ps); err != nil {
			out.Errors = append(out.Errors, err)
			continue
		}
		logger.Info("Took over a suspended pod", "pod", klog.KRef(kp.Ref.Namespace, kp.Ref.Name), "pids", parked)
		out.Suspended = append(out.Suspended, kp.Ref)
	}
	return out
}

func sortedUIDs(m map[types.UID][]int) []types.UID {
	out := make([]types.UID, 0, len(m))
	for uid := range m {
		out = append(out, uid)
	}
	slices.Sort(out)
	return out
}

// cudaStates returns the checkpoint state of the CUDA processes among pids; LOCKED ones are
// unlocked first and reported RUNNING.
func (e *Engine) cudaStates(ctx context.Context, pids []int) (map[int]cuda.ProcessState, error) {
	out := map[int]cuda.ProcessState{}
	for _, pid := range pids {
		var st cuda.ProcessState
		err := e.call(ctx, e.cfg.StepTimeout, "get state", pid, func() error {
			var err error
			st, err = e.driver.CheckpointProcessGetState(pid)
			return err
		})
		if errors.Is(err, errStepTimeout) {
			return nil, err
		}
		if err != nil {
			continue // not a CUDA process, or gone
		}
		if st == cuda.ProcessStateLocked {
			// An operation the old agent began: the process holds its memory on the GPUs
			// (locked before its checkpoint, or restored and not yet unlocked).
			if err := e.call(ctx, e.cfg.StepTimeout, "unlock", pid, func() error { return e.driver.CheckpointProcessUnlock(pid) }); err != nil {
				return nil, fmt.Errorf("unlocking pid %d, left locked by an earlier agent: %w", pid, err)
			}
			klog.FromContext(ctx).Info("Unlocked a GPU process an earlier agent left locked", "pid", pid)
			st = cuda.ProcessStateRunning
		}
		out[pid] = st
	}
	return out, nil
}

// parkedProcesses builds the parked processes of a known pod from what its suspend recorded;
// a process nothing was recorded for is on the pod's only GPU with its declared memory.
func parkedProcesses(kp KnownPod, pids []int) ([]Process, error) {
	out := make([]Process, 0, len(pids))
	for _, pid := range pids {
		i := slices.IndexFunc(kp.Recorded, func(p Process) bool { return p.PID == pid })
		if i >= 0 {
			pr := kp.Recorded[i]
			pr.State = cuda.ProcessStateCheckpointed
			out = append(out, pr)
			continue
		}
		if len(kp.GPUs) != 1 {
			return nil, fmt.Errorf("parked pid %d has no recorded footprint and the pod has %d gpus: cannot tell which gpu it was on", pid, len(kp.GPUs))
		}
		if kp.Declared <= 0 {
			return nil, fmt.Errorf("parked pid %d has no recorded footprint and the pod declares no gpu memory", pid)
		}
		out = append(out, Process{PID: pid, GPU: kp.GPUs[0], Bytes: kp.Declared, State: cuda.ProcessStateCheckpointed})
	}
	return out, nil
}

// Adopt holds a pod suspended whose processes the driver has parked, found after an agent
// restart.
func (e *Engine) Adopt(pod podmap.PodRef, procs []Process) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	p, ok := e.pods[pod.UID]
	if ok && (p.busy || p.parked != nil) {
		return fmt.Errorf("pod %s: the engine holds it already", pod)
	}
	e.pods[pod.UID] = &podEntry{ref: pod, parked: slices.Clone(procs)}
	return nil
}

// endParked ends a process if the driver still has it parked: a PID reused by another
// process is never CHECKPOINTED.
func (e *Engine) endParked(pid int) error {
	st, err := e.driver.CheckpointProcessGetState(pid)
	if err != nil {
		return fmt.Errorf("checking pid %d: %w", pid, err)
	}
	if st != cuda.ProcessStateCheckpointed {
		return fmt.Errorf("pid %d is %s, not parked: left alone", pid, st)
	}
	return e.kill.Kill(pid)
}

// End ends the parked processes of a suspended pod that is being deleted, so that the host
// memory holding its GPU memory returns at once: a parked process cannot shut down cleanly
// (its CUDA calls block until a restore). It returns the processes ended and forgets the pod.
func (e *Engine) End(ctx context.Context, uid types.UID) ([]int, error) {
	e.mu.Lock()
	p, ok := e.pods[uid]
	if !ok || p.busy || p.parked == nil {
		e.mu.Unlock()
		return nil, nil
	}
	p.busy = true
	parked := p.parked
	e.mu.Unlock()

	var ended []int
	var errs []error
	for _, pr := range parked {
		if err := e.endParked(pr.PID); err != nil {
			errs = append(errs, err)
			continue
		}
		ended = append(ended, pr.PID)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	p.busy = false
	if len(errs) == 0 {
		delete(e.pods, uid)
	}
	klog.FromContext(ctx).V(2).Info("Ended the parked processes of a deleted pod", "pod", klog.KRef(p.ref.Namespace, p.ref.Name), "pids", ended)
	return ended, errors.Join(errs...)
}
