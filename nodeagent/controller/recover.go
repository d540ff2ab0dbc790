package controller

import (
	"context"
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

// Event reasons of recovery and deletion.
const (
	// EventParkedProcessEnded (on the Node): a parked process whose pod is gone was ended.
	EventParkedProcessEnded = "ParkedProcessEnded"
	// EventParkedProcessesEnded (on the pod): a suspended pod that is being deleted had its
	// parked processes ended.
	EventParkedProcessesEnded = "ParkedProcessesEnded"
	// EventRecoveryFailed (on the Node): the agent could not take over a pod's parked processes.
	EventRecoveryFailed = "RecoveryFailed"
)

// Recover takes over, after the agent started, what the driver holds parked on node: pids are
// the node's processes by pod UID (podmap.Resolver.PIDsByPod), pods the pods bound to the node,
// ckpts the GPUCheckpoints, whose Succeeded Suspends recorded the processes' footprints. Pods
// that are being deleted count as gone: their parked processes are ended, with an Event on the
// Node, as are those of pods that no longer exist.
func (o *Operator) Recover(ctx context.Context, node string, pids map[types.UID][]int, pods []*v1.Pod, ckpts []*kv1.GPUCheckpoint) engine.Recovery {
	logger := klog.FromContext(ctx).WithValues("node", node)
	e, ok := o.engines.Engine(node)
	if !ok {
		return engine.Recovery{}
	}
	known := map[types.UID]engine.KnownPod{}
	for _, pod := range pods {
		if pod.Spec.NodeName != node || pod.DeletionTimestamp != nil {
			continue
		}
		kp := engine.KnownPod{Ref: ref(pod), Declared: declaredMemory(pod)}
		for _, s := range strings.Split(pod.Annotations[kv1.AnnotationGPUs], ",") {
			if u, err := cuda.ParseUUID(strings.TrimSpace(s)); err == nil {
				kp.GPUs = append(kp.GPUs, u)
			}
		}
		if ck := LastSuspend(ckpts, pod, node); ck != nil {
			rec, err := RecordedProcesses(ck.Status.Footprint)
			if err != nil {
				logger.Error(err, "Ignoring the footprint a GPUCheckpoint recorded", "gpuCheckpoint", klog.KObj(ck))
			}
			kp.Recorded = rec
		}
		known[pod.UID] = kp
	}
	rec := e.Recover(ctx, pids, known)
	nodeRef := &v1.ObjectReference{Kind: "Node", Name: node, UID: types.UID(node)}
	for _, p := range rec.Ended {
		o.recorder.Eventf(nodeRef, v1.EventTypeNormal, EventParkedProcessEnded,
			"Ended parked GPU process %d of pod %s, which no longer exists: the host memory holding its GPU memory is free", p.PID, p.PodUID)
	}
	for _, err := range rec.Errors {
		logger.Error(err, "Cannot take over a pod's parked GPU processes")
		o.recorder.Eventf(nodeRef, v1.EventTypeWarning, EventRecoveryFailed, "Cannot take over a pod's parked GPU processes: %v", err)
	}
	if len(rec.Suspended) > 0 || len(rec.Ended) > 0 {
		o.changed(node)
	}
	logger.Info("Recovered the node's suspended pods", "suspended", len(rec.Suspended), "ended", len(rec.Ended), "errors", len(rec.Errors))
	return rec
}

// LastSuspend is the latest Succeeded Suspend of pod on node.
func LastSuspend(ckpts []*kv1.GPUCheckpoint, pod *v1.Pod, node string) *kv1.GPUCheckpoint {
	var last *kv1.GPUCheckpoint
	for _, ck := range ckpts {
		if ck.Namespace != pod.Namespace || ck.Spec.PodName != pod.Name || ck.Spec.Action != kv1.ActionSuspend ||
			ck.Status.Phase != kv1.PhaseSucceeded || ck.Status.NodeName != node || ck.Status.CompletionTime == nil ||
			(ck.Spec.PodUID != "" && types.UID(ck.Spec.PodUID) != pod.UID) {
			continue
		}
		if last == nil || last.Status.CompletionTime.Before(ck.Status.CompletionTime) {
			last = ck
		}
	}
	return last
}

// declaredMemory is the pod's kybernate.io/gpu-memory in bytes, 0 when it declares none (the
// whole GPU) or the annotation does not parse.
func declaredMemory(pod *v1.Pod) int64 {
	b, err := gpupod.GPUMemory(pod)
	if err != nil {
		return 0
	}
	return b
}

// EndDeleted ends the parked processes of a suspended pod that is being deleted: a parked
// process cannot shut down cleanly (its CUDA calls block until a restore), and the host memory
// holding its GPU memory should not wait for the grace period.
func (o *Operator) EndDeleted(ctx context.Context, pod *v1.Pod) {
	e, ok := o.engines.Engine(pod.Spec.NodeName)
	if !ok {
		return
	}
	bytes, parked := e.Parked(pod.UID)
	if !parked {
		return
	}
	logger := klog.FromContext(ctx).WithValues("pod", klog.KObj(pod), "node", pod.Spec.NodeName)
	ended, err := e.End(ctx, pod.UID)
	if err != nil {
		logger.Error(err, "Ending the parked processes of a deleted pod failed", "ended", ended)
	}
	if len(ended) == 0 {
		return
	}
	slices.Sort(ended)
	logger.Info("Ended the parked processes of a deleted suspended pod", "pids", ended, "bytes", bytes)
	o.recorder.Eventf(pod, v1.EventTypeNormal, EventParkedProcessesEnded,
		"The pod is being deleted while suspended: ended its parked GPU processes %v; %s of host memory is free", ended, quantity(bytes))
	o.changed(pod.Spec.NodeName)
}
