// Package engine suspends and resumes the GPU processes of pods through the CUDA checkpoint
// API (cuda.Interface): the real driver on a GPU node, cuda/fake on simulated ones.
//
// Suspend locks every GPU process of a pod (with a timeout: the lock waits for work in
// flight), then checkpoints each, which moves its GPU memory into its own host memory and
// frees the GPUs. Resume restores each process, onto other GPUs of the node when asked (GPU
// pairs from cuda.RemapPairs), then unlocks it. A pod with several processes or GPUs moves as
// one: all of them or none. Every driver call has a timeout; a failed operation rolls the pod
// back to its last good state (Running after a failed suspend, Suspended after a failed
// resume) and never deletes anything. A refused restore is retried before the resume is
// reported failed. One operation per pod runs at a time; different pods run in parallel.
package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/nodeagent/metrics"
	"github.com/kybernate/kybernate/nodeagent/podmap"
)

// Process is a CUDA process of a pod.
type Process struct {
	// PID in the agent's (host) PID namespace.
	PID int
	// GPU holds the process's memory, or held it before it was checkpointed.
	GPU cuda.UUID
	// Bytes of GPU memory the process uses.
	Bytes int64
	// State is the process's checkpoint state as far as the finder knows.
	State cuda.ProcessState
	// Footprint is the process's memory per GPU as NVML reports it (its context included),
	// when the finder knows it per GPU; empty means Bytes on GPU. Recorded at suspend time, it
	// is what a restore needs free.
	Footprint map[cuda.UUID]int64
}

// ProcessFinder finds the CUDA processes of a pod on the node. Processes whose memory is
// parked may be missing where the finder cannot see them (NVML lists only resident ones).
type ProcessFinder interface {
	Processes(ctx context.Context, pod podmap.PodRef) ([]Process, error)
}

// HostMemory reports the host's available memory (MemAvailable).
type HostMemory interface {
	MemAvailable() (int64, error)
}

// Config bounds the engine's operations.
type Config struct {
	// LockTimeout is how long a lock waits for a process's GPU work when the caller gives none.
	LockTimeout time.Duration
	// StepTimeout bounds each checkpoint, restore and unlock call (and a lock beyond its own
	// timeout).
	StepTimeout time.Duration
	// RestoreRetries is how many times a refused restore is tried.
	RestoreRetries int
	// RetryBackoff is the wait before the first retry of a restore; it doubles each retry.
	RetryBackoff time.Duration
	// HostMemoryReserve is host memory a suspend may not use.
	HostMemoryReserve int64
	// RestoreMargin is free GPU memory a restore must leave beyond the processes' footprint
	// (the restore guard).
	RestoreMargin int64
	// HugePages, when set, is held open around the checkpoint calls (package thp: the node's
	// transparent huge pages set to always while the driver fills the host buffers).
	HugePages HugePageWindow
}

// HugePageWindow is a node setting held for the duration of checkpoints; concurrent holders
// share it. Open fails without changing anything; the checkpoint then runs without it.
type HugePageWindow interface {
	Open(ctx context.Context) (closeFn func(), err error)
}

// Step is one timed step of an operation.
type Step struct {
	Name     string
	Duration time.Duration
	Bytes    int64
}

// Result is what a successful operation did.
type Result struct {
	// Bytes of GPU memory moved.
	Bytes int64
	Steps []Step
	// GPUs the pod's memory is on afterwards, in the order of the pod's GPUs; empty after a
	// suspend.
	GPUs []cuda.UUID
	// Parked are the processes a suspend parked, with their footprints: what a restore needs
	// free, recorded where it survives an agent restart.
	Parked []Process
	// Storage is set when a resume brought the memory back from a checkpoint image in a
	// storage tier below host memory: the tier it came from.
	Storage *kv1.CheckpointStorage
}

// Step names.
const (
	StepLock       = "Lock"
	StepCheckpoint = "Checkpoint"
	StepRestore    = "Restore"
	StepUnlock     = "Unlock"
)

// Engine suspends and resumes pods on one node.
type Engine struct {
	cfg    Config
	driver cuda.Interface
	finder ProcessFinder
	host   HostMemory
	gpuMem GPUMemory
	kill   Killer
	clock  clock.Clock

	mu   sync.Mutex
	pods map[types.UID]*podEntry
}

type podEntry struct {
	ref  podmap.PodRef
	busy bool
	// parked are the processes of a suspended pod, as they were before the suspend.
	parked []Process
	// stuck is set when a driver call did not return: the pod's state is unknown.
	stuck error
	// lost is set when the driver refused a restore for lack of memory: the pod's GPU state
	// is gone.
	lost error
}

// New returns an Engine on an initialised driver. gpuMem is what the restore guard reads
// free GPU memory from; kill ends the processes of pods that are gone.
func New(driver cuda.Interface, finder ProcessFinder, host HostMemory, gpuMem GPUMemory, kill Killer, cfg Config, clk clock.Clock) *Engine {
	if cfg.RestoreRetries < 1 {
		cfg.RestoreRetries = 1
	}
	return &Engine{cfg: cfg, driver: driver, finder: finder, host: host, gpuMem: gpuMem, kill: kill, clock: clk, pods: map[types.UID]*podEntry{}}
}

// GPUs returns the UUIDs of every GPU the driver sees, in ordinal order: what restore pairs
// must cover.
func (e *Engine) GPUs() ([]cuda.UUID, error) {
	n, err := e.driver.DeviceGetCount()
	if err != nil {
		return nil, fmt.Errorf("counting gpus: %w", err)
	}
	out := make([]cuda.UUID, 0, n)
	for i := range n {
		dev, err := e.driver.DeviceGet(i)
		if err != nil {
			return nil, fmt.Errorf("gpu %d: %w", i, err)
		}
		u, err := e.driver.DeviceGetUUID(dev)
		if err != nil {
			return nil, fmt.Errorf("gpu %d: %w", i, err)
		}
		out = append(out, u)
	}
	return out, nil
}

// begin takes the pod for one operation.
func (e *Engine) begin(op string, pod podmap.PodRef) (*podEntry, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	p, ok := e.pods[pod.UID]
	if !ok {
		p = &podEntry{ref: pod}
		e.pods[pod.UID] = p
	}
	if p.busy {
		return nil, &Error{Op: op, Pod: pod.String(), Cause: CauseBusy, Err: errors.New("another operation on the pod is in progress")}
	}
	if p.lost != nil {
		return nil, &Error{Op: op, Pod: pod.String(), Cause: CauseGPUStateLost,
			Err: fmt.Errorf("an earlier restore destroyed the pod's gpu state; it cannot run on: %w", p.lost)}
	}
	if p.stuck != nil {
		return nil, &Error{Op: op, Pod: pod.String(), Cause: CauseStepTimeout,
			Err: fmt.Errorf("an earlier operation left the pod in an unknown state, refusing to touch it: %w", p.stuck)}
	}
	p.busy = true
	return p, nil
}

// set changes the outcome of a pod's operation (parked, stuck, lost) under the engine's lock:
// the operation that holds the pod busy is its only writer, but IsSuspended and Parked read it
// from other goroutines (a second request for the pod that found it busy).
func (e *Engine) set(change func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	change()
}

func (e *Engine) end(p *podEntry) {
	e.mu.Lock()
	defer e.mu.Unlock()
	p.busy = false
	if p.parked == nil && p.stuck == nil && p.lost == nil {
		delete(e.pods, p.ref.UID)
	}
}

// Busy reports whether an operation is moving memory on the node now.
func (e *Engine) Busy() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, p := range e.pods {
		if p.busy {
			return true
		}
	}
	return false
}

// PodBusy reports whether an operation on the pod is in progress.
func (e *Engine) PodBusy(uid types.UID) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	p, ok := e.pods[uid]
	return ok && p.busy
}

// Forget drops what the engine knows about a pod that is gone.
func (e *Engine) Forget(uid types.UID) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if p, ok := e.pods[uid]; ok && !p.busy {
		delete(e.pods, uid)
	}
}

// errStepTimeout is wrapped when a driver call does not return in time.
var errStepTimeout = errors.New("driver call did not return in time")

// call runs a driver call with a timeout. A call that times out keeps running: the driver
// cannot be interrupted.
func (e *Engine) call(ctx context.Context, timeout time.Duration, name string, pid int, fn func() error) error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("%s of pid %d: %w (%w)", name, pid, errStepTimeout, ctx.Err())
	case <-e.clock.After(timeout):
		return fmt.Errorf("%s of pid %d after %v: %w", name, pid, timeout, errStepTimeout)
	}
}

// Suspend moves the GPU memory of all of a pod's processes into host memory. lockTimeout 0
// uses the configured one.
func (e *Engine) Suspend(ctx context.Context, pod podmap.PodRef, lockTimeout time.Duration) (res Result, err error) {
	const op = "suspend"
	logger := klog.FromContext(ctx).WithValues("pod", klog.KRef(pod.Namespace, pod.Name))
	start := e.clock.Now()
	defer func() { observe(metrics.OperationSuspend, start, e.clock.Now(), res, err) }()
	fail := func(cause Cause, rolledBack bool, err error) error {
		return &Error{Op: op, Pod: pod.String(), Cause: cause, RolledBack: rolledBack, Err: err}
	}
	if lockTimeout <= 0 {
		lockTimeout = e.cfg.LockTimeout
	}

	p, err := e.begin(op, pod)
	if err != nil {
		return Result{}, err
	}
	defer e.end(p)
	if p.parked != nil {
		return Result{}, fail(CauseWrongState, false, errors.New("pod is suspended already"))
	}
	if err := e.capability(false); err != nil {
		return Result{}, fail(CauseUnsupported, false, err)
	}
	procs, err := e.finder.Processes(ctx, pod)
	if err != nil {
		return Result{}, fail(CauseInternal, false, fmt.Errorf("finding the pod's gpu processes: %w", err))
	}
	var running []Process
	for _, pr := range procs {
		if pr.State != cuda.ProcessStateCheckpointed {
			running = append(running, pr)
		}
	}
	switch {
	case len(procs) > 0 && len(running) == 0:
		e.set(func() { p.parked = procs }) // suspended before the agent (re)started
		return Result{}, fail(CauseWrongState, false, errors.New("pod is suspended already"))
	case len(running) == 0:
		return Result{}, fail(CauseNoProcesses, false, errors.New("pod has no gpu processes on the node"))
	case len(running) < len(procs):
		return Result{}, fail(CauseWrongState, false, fmt.Errorf("%d of the pod's %d gpu processes are checkpointed already", len(procs)-len(running), len(procs)))
	}

	var need int64
	for _, pr := range running {
		need += pr.Bytes
	}
	if err := e.checkHostMemory(need); err != nil {
		return Result{}, fail(CauseHostMemoryExhausted, false, err)
	}

	// Lock all, or none.
	t := e.clock.Now()
	for i, pr := range running {
		err := e.call(ctx, lockTimeout+e.cfg.StepTimeout, "lock", pr.PID, func() error { return e.driver.CheckpointProcessLock(pr.PID, lockTimeout) })
		if err == nil {
			continue
		}
		if errors.Is(err, errStepTimeout) {
			e.set(func() { p.stuck = err })
			return Result{}, fail(CauseStepTimeout, false, err)
		}
		cause := CauseLockFailed
		if errors.Is(err, cuda.ErrTimeout) {
			cause = CauseLockTimeout
			err = fmt.Errorf("pid %d did not finish its gpu work within %v: %w", pr.PID, lockTimeout, err)
		}
		rbErr := e.unlockAll(ctx, running[:i])
		logger.V(2).Info("Suspend failed at lock; unlocked the pod's processes", "pid", pr.PID, "err", err, "rollbackErr", rbErr)
		return Result{}, fail(cause, rbErr == nil, joinRollback(err, rbErr))
	}
	res.Steps = append(res.Steps, Step{Name: StepLock, Duration: e.clock.Since(t)})

	t = e.clock.Now()
	closeWindow := e.openHugePages(ctx)
	defer closeWindow()
	for i, pr := range running {
		err := e.call(ctx, e.cfg.StepTimeout, "checkpoint", pr.PID, func() error { return e.driver.CheckpointProcessCheckpoint(pr.PID) })
		if err == nil {
			continue
		}
		if errors.Is(err, errStepTimeout) {
			e.set(func() { p.stuck = err })
			return Result{}, fail(CauseStepTimeout, false, err)
		}
		// Back to running: restore what was checkpointed, unlock everything.
		rbErr := e.restoreInPlace(ctx, running[:i])
		rbErr = errors.Join(rbErr, e.unlockAll(ctx, running))
		logger.V(2).Info("Suspend failed at checkpoint; rolled back", "pid", pr.PID, "err", err, "rollbackErr", rbErr)
		return Result{}, fail(CauseCheckpointFailed, rbErr == nil, joinRollback(err, rbErr))
	}
	closeWindow()
	res.Steps = append(res.Steps, Step{Name: StepCheckpoint, Duration: e.clock.Since(t), Bytes: need})
	res.Bytes = need
	res.Parked = slices.Clone(running)
	e.set(func() { p.parked = running })
	logger.V(2).Info("Suspended pod", "bytes", need, "processes", len(running), "duration", e.clock.Since(start))
	return res, nil
}

// openHugePages opens the huge page window for a checkpoint, when one is configured; the
// returned function closes it (once, however often it is called). A window that cannot open
// costs speed, not the suspend.
func (e *Engine) openHugePages(ctx context.Context) func() {
	if e.cfg.HugePages == nil {
		return func() {}
	}
	closeFn, err := e.cfg.HugePages.Open(ctx)
	if err != nil {
		klog.FromContext(ctx).Error(err, "Opening the huge page window failed; checkpointing without it")
		return func() {}
	}
	var once sync.Once
	return func() { once.Do(closeFn) }
}

func (e *Engine) unlockAll(ctx context.Context, procs []Process) error {
	var errs []error
	for _, pr := range procs {
		errs = append(errs, e.call(ctx, e.cfg.StepTimeout, "unlock", pr.PID, func() error { return e.driver.CheckpointProcessUnlock(pr.PID) }))
	}
	return errors.Join(errs...)
}

func (e *Engine) restoreInPlace(ctx context.Context, procs []Process) error {
	var errs []error
	for _, pr := range procs {
		errs = append(errs, e.call(ctx, e.cfg.StepTimeout, "restore", pr.PID, func() error { return e.driver.CheckpointProcessRestore(pr.PID, nil) }))
	}
	return errors.Join(errs...)
}

func (e *Engine) checkpointAll(ctx context.Context, procs []Process) error {
	var errs []error
	for _, pr := range procs {
		errs = append(errs, e.call(ctx, e.cfg.StepTimeout, "checkpoint", pr.PID, func() error { return e.driver.CheckpointProcessCheckpoint(pr.PID) }))
	}
	return errors.Join(errs...)
}

func joinRollback(err, rbErr error) error {
	if rbErr == nil {
		return err
	}
	return fmt.Errorf("%w; rolling back failed too: %w", err, rbErr)
}

func (e *Engine) capability(remap bool) error {
	v, err := e.driver.DriverGetVersion()
	if err != nil {
		return fmt.Errorf("driver version: %w", err)
	}
	c := cuda.CapabilityOf(v)
	if err := c.CheckCheckpoint(); err != nil {
		return err
	}
	if remap {
		return c.CheckRemap()
	}
	return nil
}

// checkHostMemory refuses a suspend whose memory the host cannot hold.
func (e *Engine) checkHostMemory(need int64) error {
	avail, err := e.host.MemAvailable()
	if err != nil {
		return fmt.Errorf("reading host memory: %w", err)
	}
	parkable := max(avail-e.cfg.HostMemoryReserve, 0)
	if need > parkable {
		return fmt.Errorf("parking the pod's %s of gpu memory needs as much host memory, but only %s is parkable (%s available minus a reserve of %s)",
			quantity(need), quantity(parkable), quantity(avail), quantity(e.cfg.HostMemoryReserve))
	}
	return nil
}

func quantity(n int64) string { return resource.NewQuantity(n, resource.BinarySI).String() }

// IsSuspended reports whether the engine holds the pod suspended.
func (e *Engine) IsSuspended(uid types.UID) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	p, ok := e.pods[uid]
	return ok && p.parked != nil
}

// Parked reports the GPU memory the engine holds parked in host memory for a suspended pod;
// ok is false when the pod is not suspended.
func (e *Engine) Parked(uid types.UID) (bytes int64, ok bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	p, found := e.pods[uid]
	if !found || p.parked == nil {
		return 0, false
	}
	for _, pr := range p.parked {
		bytes += pr.Bytes
	}
	return bytes, true
}

// SuspendedPods lists the pods the engine holds suspended, for the GPUNode status.
func (e *Engine) SuspendedPods() []kv1.PodGPUUsage {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []kv1.PodGPUUsage
	for _, p := range e.pods {
		if p.parked == nil {
			continue
		}
		u := kv1.PodGPUUsage{Namespace: p.ref.Namespace, Name: p.ref.Name, UID: string(p.ref.UID), Residency: kv1.Suspended}
		for _, pr := range p.parked {
			u.Bytes += pr.Bytes
			if g := pr.GPU.String(); !slices.Contains(u.GPUs, g) {
				u.GPUs = append(u.GPUs, g)
			}
		}
		out = append(out, u)
	}
	return out
}

// RegisterMetrics registers the agent's metrics (package metrics) and starts the failure
// series of every cause at zero, so that dashboards and alerts see them before a failure.
func RegisterMetrics() {
	metrics.Register()
	for _, op := range []string{metrics.OperationSuspend, metrics.OperationResume} {
		for _, c := range Causes {
			metrics.Failures.WithLabelValues(op, string(c))
		}
	}
}

func observe(op string, start, end time.Time, res Result, err error) {
	result := metrics.ResultSuccess
	if err != nil {
		result = metrics.ResultFailure
		metrics.Failures.WithLabelValues(op, string(CauseOf(err))).Inc()
	} else {
		metrics.BytesMoved.WithLabelValues(op).Add(float64(res.Bytes))
		metrics.OperationBytes.WithLabelValues(op).Observe(float64(res.Bytes))
		if d := end.Sub(start).Seconds(); res.Bytes > 0 && d > 0 {
			metrics.OperationThroughput.WithLabelValues(op).Observe(float64(res.Bytes) / d)
		}
	}
	metrics.OperationDuration.WithLabelValues(op, result).Observe(end.Sub(start).Seconds())
}

// ProcessState asks the driver for a process's checkpoint state.
func (e *Engine) ProcessState(pid int) (cuda.ProcessState, error) {
	return e.driver.CheckpointProcessGetState(pid)
}
