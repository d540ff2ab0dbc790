package controller

import (
	"context"
	"errors"
	"fmt"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
	ckpt "github.com/kybernate/kybernate/nodeagent/checkpoint"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/image"
)

// A pod without GPUs has no GPU memory to park: on a real node the agent suspends it by
// freezing its containers (containerd pauses the task through the shim; runc freezes its
// cgroup). The processes stay in memory and use no CPU until they are thawed: the same
// processes go on. This is what a CPU pod's sleep is (scale to zero on CPU nodes).

// Cause of a freeze or thaw that failed (the GPUCheckpoint's status reason).
const (
	CauseFreezeFailed = "FreezeFailed"
	CauseThawFailed   = "ThawFailed"
)

// freezeTimeout bounds a freeze or thaw of all of a pod's containers.
const freezeTimeout = 30 * time.Second

// Freezer freezes and thaws the containers of a pod.
type Freezer interface {
	// Freeze freezes all of the pod's containers, or (rolling back) none.
	Freeze(ctx context.Context, pod *v1.Pod) error
	// Thaw thaws all of the pod's containers.
	Thaw(ctx context.Context, pod *v1.Pod) error
}

// Freezers gives the Freezer of each node the agent serves; nil where it cannot freeze.
type Freezers interface {
	Freezer(node string) (Freezer, bool)
}

// FreezerMap is Freezers over a fixed map, for a single node and tests.
type FreezerMap map[string]Freezer

// Freezer returns the freezer of node.
func (m FreezerMap) Freezer(node string) (Freezer, bool) {
	f, ok := m[node]
	return f, ok
}

// SetFreezers gives the Operator the nodes' freezers. Call it before the controller runs.
func (o *Operator) SetFreezers(f Freezers) { o.freezers = f }

// freezer is the freezer of a pod without GPUs on a node that has one.
func (o *Operator) freezer(pod *v1.Pod) (Freezer, bool) {
	if o.freezers == nil || !gpupod.WithoutGPUs(pod) {
		return nil, false
	}
	return o.freezers.Freezer(pod.Spec.NodeName)
}

// freezes reports whether the agent freezes pods without GPUs on node.
func (o *Operator) freezes(node string) bool {
	if o.freezers == nil {
		return false
	}
	_, ok := o.freezers.Freezer(node)
	return ok
}

// serves reports whether this agent acts on the pods of node: it has its engine or, for pods
// without GPUs, its freezer.
func (o *Operator) serves(pod *v1.Pod, node string) bool {
	if _, ok := o.engines.Engine(node); ok {
		return true
	}
	return gpupod.WithoutGPUs(pod) && o.freezes(node)
}

// suspendFrozen suspends a pod without GPUs: its containers frozen.
func (o *Operator) suspendFrozen(ctx context.Context, pod *v1.Pod, f Freezer) (engine.Result, error) {
	if pod.DeletionTimestamp != nil || pod.Status.Phase != v1.PodRunning {
		return engine.Result{}, invalid("pod %s/%s is not running (phase %s)", pod.Namespace, pod.Name, pod.Status.Phase)
	}
	if s := gpupod.StateOf(pod); s != kv1.PodRunning && s != kv1.PodSuspending {
		return engine.Result{}, invalid("pod %s/%s is %s (annotation %s); this needs a pod that is Running", pod.Namespace, pod.Name, s, kv1.AnnotationState)
	}
	if err := o.setState(ctx, pod, gpupod.StateOf(pod), kv1.PodSuspending, ""); err != nil {
		return engine.Result{}, err
	}
	o.recorder.Event(pod, v1.EventTypeNormal, EventSuspending, "Suspending: the pod has no GPUs; freezing its containers")
	start := o.clock.Now()
	fctx, cancel := context.WithTimeout(ctx, freezeTimeout)
	err := f.Freeze(fctx, pod)
	cancel()
	if err != nil {
		serr := o.setState(ctx, pod, kv1.PodSuspending, kv1.PodRunning, "")
		o.recorder.Eventf(pod, v1.EventTypeWarning, EventSuspendFailed, "Suspend failed (%s): %v", CauseFreezeFailed, err)
		return engine.Result{}, errors.Join(&ImageError{Cause: CauseFreezeFailed, RolledBack: true, Err: err}, serr)
	}
	took := o.clock.Since(start)
	msg := fmt.Sprintf("Suspended: the pod has no GPUs; froze its %d containers in %s (the processes stay in memory and use no CPU)", len(pod.Spec.Containers), took.Round(time.Millisecond))
	if err := o.setState(ctx, pod, kv1.PodSuspending, kv1.PodSuspended, ""); err != nil {
		return engine.Result{}, fmt.Errorf("pod suspended, but %w: %w", ErrNotRecorded, err)
	}
	o.recorder.Event(pod, v1.EventTypeNormal, EventSuspended, msg)
	klog.FromContext(ctx).V(2).Info("Froze pod without GPUs", "pod", klog.KObj(pod), "took", took)
	return engine.Result{Steps: []engine.Step{{Name: "Freeze", Duration: took}}}, nil
}

// resumeFrozen thaws a pod without GPUs.
func (o *Operator) resumeFrozen(ctx context.Context, pod *v1.Pod, f Freezer, targets []string) (engine.Result, error) {
	if len(targets) > 0 {
		return engine.Result{}, invalid("pod %s/%s has no GPUs: a resume of it takes no target GPUs", pod.Namespace, pod.Name)
	}
	if s := gpupod.StateOf(pod); s != kv1.PodSuspended && s != kv1.PodResuming {
		return engine.Result{}, invalid("pod %s/%s is %s (annotation %s); this needs a pod that is Suspended or Resuming", pod.Namespace, pod.Name, s, kv1.AnnotationState)
	}
	if err := o.setState(ctx, pod, gpupod.StateOf(pod), kv1.PodResuming, ""); err != nil {
		return engine.Result{}, err
	}
	o.recorder.Event(pod, v1.EventTypeNormal, EventResuming, "Resuming: thawing the pod's containers")
	start := o.clock.Now()
	fctx, cancel := context.WithTimeout(ctx, freezeTimeout)
	err := f.Thaw(fctx, pod)
	cancel()
	if err != nil {
		serr := o.setState(ctx, pod, kv1.PodResuming, kv1.PodSuspended, "")
		o.recorder.Eventf(pod, v1.EventTypeWarning, EventResumeFailed, "Resume failed (%s): %v", CauseThawFailed, err)
		return engine.Result{}, errors.Join(&ImageError{Cause: CauseThawFailed, RolledBack: true, Err: err}, serr)
	}
	took := o.clock.Since(start)
	if err := o.setState(ctx, pod, kv1.PodResuming, kv1.PodRunning, ""); err != nil {
		return engine.Result{}, fmt.Errorf("pod resumed, but %w: %w", ErrNotRecorded, err)
	}
	o.recorder.Eventf(pod, v1.EventTypeNormal, EventResumed, "Resumed: thawed the pod's %d containers in %s", len(pod.Spec.Containers), took.Round(time.Millisecond))
	return engine.Result{Steps: []engine.Step{{Name: "Thaw", Duration: took}}}, nil
}

// ContainerdFreezer freezes a pod's containers through containerd (task pause and resume,
// which our shim passes to runc: the cgroup freezer).
type ContainerdFreezer struct {
	Runtime ckpt.Runtime
}

var _ Freezer = ContainerdFreezer{}

// Freeze pauses every container of the pod; when one fails, those paused are resumed.
func (f ContainerdFreezer) Freeze(ctx context.Context, pod *v1.Pod) error {
	ids, err := f.containers(ctx, pod)
	if err != nil {
		return err
	}
	for i, id := range ids {
		if err := f.Runtime.Pause(ctx, id); err != nil {
			var rb error
			for _, done := range ids[:i] {
				rb = errors.Join(rb, f.Runtime.Resume(context.WithoutCancel(ctx), done))
			}
			if rb != nil {
				return fmt.Errorf("pausing container %s: %w (and thawing the others failed: %w)", id, err, rb)
			}
			return fmt.Errorf("pausing container %s: %w", id, err)
		}
	}
	return nil
}

// Thaw resumes every container of the pod.
func (f ContainerdFreezer) Thaw(ctx context.Context, pod *v1.Pod) error {
	ids, err := f.containers(ctx, pod)
	if err != nil {
		return err
	}
	var errs error
	for _, id := range ids {
		errs = errors.Join(errs, f.Runtime.Resume(ctx, id))
	}
	return errs
}

func (f ContainerdFreezer) containers(ctx context.Context, pod *v1.Pod) ([]string, error) {
	ref := image.Pod{Namespace: pod.Namespace, Name: pod.Name, UID: string(pod.UID)}
	ids := make([]string, 0, len(pod.Spec.Containers))
	for _, c := range pod.Spec.Containers {
		ctr, err := f.Runtime.FindContainer(ctx, ref, c.Name)
		if err != nil {
			return nil, fmt.Errorf("container %s: %w", c.Name, err)
		}
		ids = append(ids, ctr.ID)
	}
	return ids, nil
}
