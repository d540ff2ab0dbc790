package controller

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/nodeagent/engine"
)

// Tiers keeps the memory of suspended pods in storage tiers below host memory (package tier).
type Tiers interface {
	// Holds reports the tier of a suspended pod whose memory is not in host memory.
	Holds(uid types.UID) (kv1.StorageTier, bool)
	// Restore brings such a pod's memory back onto to (one per GPU it was on).
	Restore(ctx context.Context, node string, pod *v1.Pod, to []cuda.UUID) (engine.Result, error)
	// MakeRoom moves suspended pods of node out of host memory until need more bytes fit
	// under the policy's mark.
	MakeRoom(ctx context.Context, node string, need int64) (bool, error)
	// Export writes the checkpoint image of such a pod into dir, from its tier; the pod stays
	// where it is.
	Export(ctx context.Context, pod *v1.Pod, dir string) (ImageResult, error)
}

// SetTiers gives the Operator the storage tiers. Call it before the controller runs.
func (o *Operator) SetTiers(t Tiers) { o.tiers = t }

// makeRoom asks the tiers to make room in host memory for the pod's memory before it is
// suspended. A failure is logged: the suspend still runs, and the engine refuses it when host
// memory is short.
func (o *Operator) makeRoom(ctx context.Context, e *engine.Engine, pod *v1.Pod) {
	if o.tiers == nil {
		return
	}
	need, err := e.ResidentBytes(ctx, ref(pod))
	if err == nil {
		_, err = o.tiers.MakeRoom(ctx, pod.Spec.NodeName, need)
	}
	if err != nil {
		klog.FromContext(ctx).Info("Making room in host memory before a suspend failed", "pod", klog.KObj(pod), "err", err)
	}
}

// EventSleepDepthUnavailable: a pod that sleeps on disk was put to sleep by an agent without
// a disk tier, so it sleeps in host memory.
const EventSleepDepthUnavailable = "SleepDepthUnavailable"

// sleptShallow tells a pod put to sleep for idleness with kybernate.io/sleep Disk that this
// agent has no storage tiers: its memory stays in host memory. With tiers the policy spills it.
func (o *Operator) sleptShallow(pod *v1.Pod, reason kv1.CheckpointReason) {
	if o.tiers != nil || reason != kv1.ReasonIdle {
		return
	}
	if d, err := gpupod.Sleep(pod); err == nil && d == kv1.SleepDisk {
		o.recorder.Eventf(pod, v1.EventTypeWarning, EventSleepDepthUnavailable,
			"%s is %s, but this node agent has no disk tier (--parked-memory-high-water, --disk-tier-dir): the pod sleeps in host memory",
			kv1.AnnotationSleep, kv1.SleepDisk)
	}
}

// tierOf reports the tier of a suspended pod whose memory is below host memory.
func (o *Operator) tierOf(pod *v1.Pod) (kv1.StorageTier, bool) {
	if o.tiers == nil {
		return "", false
	}
	return o.tiers.Holds(pod.UID)
}

// resumeFromTier resumes a pod whose memory is in a storage tier: the pod is Resuming while
// the memory comes back, Running after, Suspended again (its image kept) when it failed.
func (o *Operator) resumeFromTier(ctx context.Context, pod *v1.Pod, tier kv1.StorageTier, from, to []cuda.UUID) (engine.Result, error) {
	logger := klog.FromContext(ctx).WithValues("pod", klog.KObj(pod), "node", pod.Spec.NodeName, "tier", tier)
	target := firstNonEmpty(to, from)
	if err := o.setState(ctx, pod, gpupod.StateOf(pod), kv1.PodResuming, ""); err != nil {
		return engine.Result{}, err
	}
	if gpupod.WithoutGPUs(pod) {
		o.recorder.Eventf(pod, v1.EventTypeNormal, EventResuming, "Resuming from storage tier %s: the container is restored from its image when the kubelet creates it next", tier)
	} else {
		o.recorder.Eventf(pod, v1.EventTypeNormal, EventResuming, "Resuming from storage tier %s onto GPUs %s", tier, uuidList(target))
	}
	res, opErr := o.tiers.Restore(ctx, pod.Spec.NodeName, pod, target)
	o.changed(pod.Spec.NodeName)
	if opErr != nil {
		err := o.setState(ctx, pod, kv1.PodResuming, kv1.PodSuspended, "")
		o.resumeFailed(pod, opErr)
		logger.Info("Resume from storage tier failed", "cause", engine.CauseOf(opErr), "err", opErr)
		return engine.Result{}, errors.Join(opErr, err)
	}
	gpus := ""
	if !slices.Equal(target, from) {
		gpus = gpupod.FormatGPUs(strings.Split(uuidList(target), ", "))
	}
	if len(res.GPUs) == 0 {
		res.GPUs = target
	}
	var msg string
	var resident error
	if gpupod.WithoutGPUs(pod) {
		msg = fmt.Sprintf("Resumed from storage tier %s: the pod has no GPUs; its container was restored from its image in %s", tier, describe(res.Steps))
	} else {
		msg = fmt.Sprintf("Resumed from storage tier %s: moved %s of GPU memory onto GPUs %s in %s", tier, quantity(res.Bytes), uuidList(res.GPUs), describe(res.Steps))
		resident = o.setResident(ctx, pod, true, msg)
	}
	if err := errors.Join(o.setState(ctx, pod, kv1.PodResuming, kv1.PodRunning, gpus), resident); err != nil {
		return res, fmt.Errorf("pod resumed, but %w: %w", ErrNotRecorded, err)
	}
	o.recorder.Event(pod, v1.EventTypeNormal, EventResumed, msg)
	return res, nil
}
