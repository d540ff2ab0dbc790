package gpushare

import (
	"fmt"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
)

// GPUNode and GPUCheckpoint events, named as the scheduler's dynamic informers name them:
// <plural>.<version>.<group>.
const (
	gpuNodeResource       fwk.EventResource = "gpunodes.v1alpha1.kybernate.io"
	gpuCheckpointResource fwk.EventResource = "gpucheckpoints.v1alpha1.kybernate.io"
)

// isSchedulableAfterGPUNodeChange queues the pod when a GPUNode appears with GPUs the pod could
// use, or when an update gives the node more room: a GPU added, memory used by foreign
// processes gone, or more slots per GPU.
func isSchedulableAfterGPUNodeChange(logger klog.Logger, pod *v1.Pod, oldObj, newObj interface{}) (fwk.QueueingHint, error) {
	d, err := gpupod.PodDemand(pod)
	if err != nil || d.Count == 0 {
		return fwk.QueueSkip, nil
	}
	newGN, err := asGPUNode(newObj)
	if err != nil {
		return fwk.Queue, err
	}
	fresh := gpupod.NewAccounting(newGN, nil)
	if !fresh.Possible(d) {
		logger.V(5).Info("GPUNode cannot hold the pod", "pod", klog.KObj(pod), "gpuNode", newGN.Name)
		return fwk.QueueSkip, nil
	}
	if oldObj == nil {
		return fwk.Queue, nil
	}
	oldGN, err := asGPUNode(oldObj)
	if err != nil {
		return fwk.Queue, err
	}
	if fresh.MoreRoomThan(gpupod.NewAccounting(oldGN, nil)) {
		return fwk.Queue, nil
	}
	return fwk.QueueSkip, nil
}

// isSchedulableAfterGPUCheckpointChange queues the pod when a suspension or checkpoint freed
// VRAM, and when a suspension made for this pod ended either way (on failure the pod may go
// elsewhere).
func isSchedulableAfterGPUCheckpointChange(logger klog.Logger, pod *v1.Pod, oldObj, newObj interface{}) (fwk.QueueingHint, error) {
	ck, err := asGPUCheckpoint(newObj)
	if err != nil {
		return fwk.Queue, err
	}
	ended := func(p kv1.CheckpointPhase) bool { return p == kv1.PhaseSucceeded || p == kv1.PhaseFailed }
	if oldObj != nil {
		old, err := asGPUCheckpoint(oldObj)
		if err != nil {
			return fwk.Queue, err
		}
		if ended(old.Status.Phase) {
			return fwk.QueueSkip, nil
		}
	}
	if !ended(ck.Status.Phase) {
		return fwk.QueueSkip, nil
	}
	if ck.Spec.Preemptor != nil && ck.Spec.Preemptor.UID == string(pod.UID) {
		logger.V(5).Info("Suspension for the pod ended", "pod", klog.KObj(pod), "gpuCheckpoint", klog.KObj(ck), "phase", ck.Status.Phase)
		return fwk.Queue, nil
	}
	freed := ck.Spec.Action == kv1.ActionSuspend || ck.Spec.Action == kv1.ActionCheckpoint
	if ck.Status.Phase == kv1.PhaseSucceeded && freed {
		return fwk.Queue, nil
	}
	return fwk.QueueSkip, nil
}

// isSchedulableAfterPodDeleted queues the pod when a pod that held GPUs is gone.
func isSchedulableAfterPodDeleted(logger klog.Logger, pod *v1.Pod, oldObj, _ interface{}) (fwk.QueueingHint, error) {
	deleted, ok := asPod(oldObj)
	if !ok {
		return fwk.Queue, fmt.Errorf("unexpected object %T in a pod delete event", oldObj)
	}
	if deleted.Spec.NodeName == "" || len(gpupod.AssignedGPUs(deleted)) == 0 {
		return fwk.QueueSkip, nil
	}
	logger.V(5).Info("Pod holding GPUs deleted", "pod", klog.KObj(pod), "deletedPod", klog.KObj(deleted))
	return fwk.Queue, nil
}

// isWaitableAfterPodAdded queues the pod when a pod of its own priority is bound with GPUs: no
// room is freed, but the new pod's time-slice turn is one the pod may wait for
// (CheckpointPreemption then nominates it to that node).
func isWaitableAfterPodAdded(logger klog.Logger, pod *v1.Pod, _, newObj interface{}) (fwk.QueueingHint, error) {
	added, ok := asPod(newObj)
	if !ok {
		return fwk.Queue, fmt.Errorf("unexpected object %T in a pod add event", newObj)
	}
	if added.UID == pod.UID || added.Spec.NodeName == "" || len(gpupod.AssignedGPUs(added)) == 0 ||
		corev1helpers.PodPriority(added) != corev1helpers.PodPriority(pod) {
		return fwk.QueueSkip, nil
	}
	if d, err := gpupod.PodDemand(pod); err != nil || d.Count == 0 {
		return fwk.QueueSkip, nil
	}
	logger.V(5).Info("Pod of equal priority bound with GPUs", "pod", klog.KObj(pod), "addedPod", klog.KObj(added))
	return fwk.Queue, nil
}

// isSchedulableAfterPodUpdated queues the pod when it changed its own GPU request, or when a pod
// with GPUs freed VRAM (it was suspended or ended) or moved to other GPUs.
func isSchedulableAfterPodUpdated(logger klog.Logger, pod *v1.Pod, oldObj, newObj interface{}) (fwk.QueueingHint, error) {
	oldPod, ok1 := asPod(oldObj)
	newPod, ok2 := asPod(newObj)
	if !ok1 || !ok2 {
		return fwk.Queue, fmt.Errorf("unexpected objects %T, %T in a pod update event", oldObj, newObj)
	}
	if newPod.UID == pod.UID {
		if gpuRequestChanged(oldPod, newPod) {
			return fwk.Queue, nil
		}
		return fwk.QueueSkip, nil
	}
	if len(gpupod.AssignedGPUs(oldPod)) == 0 {
		return fwk.QueueSkip, nil
	}
	if gpupod.Resident(oldPod) && !gpupod.Resident(newPod) {
		logger.V(5).Info("Pod left its GPUs", "pod", klog.KObj(pod), "suspendedPod", klog.KObj(newPod))
		return fwk.Queue, nil
	}
	if !terminal(oldPod) && terminal(newPod) {
		logger.V(5).Info("Pod holding GPUs ended", "pod", klog.KObj(pod), "endedPod", klog.KObj(newPod))
		return fwk.Queue, nil
	}
	if oldPod.Annotations[kv1.AnnotationGPUs] != newPod.Annotations[kv1.AnnotationGPUs] {
		return fwk.Queue, nil
	}
	return fwk.QueueSkip, nil
}

func terminal(pod *v1.Pod) bool {
	return pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed
}

func gpuRequestChanged(oldPod, newPod *v1.Pod) bool {
	for _, key := range []string{kv1.AnnotationGPUMemory, kv1.AnnotationGPUModel} {
		if oldPod.Annotations[key] != newPod.Annotations[key] {
			return true
		}
	}
	oldD, oldErr := gpupod.PodDemand(oldPod)
	newD, newErr := gpupod.PodDemand(newPod)
	return (oldErr == nil) != (newErr == nil) || oldD != newD
}

func asPod(obj interface{}) (*v1.Pod, bool) {
	pod, ok := obj.(*v1.Pod)
	return pod, ok && pod != nil
}

func asGPUCheckpoint(obj interface{}) (*kv1.GPUCheckpoint, error) {
	switch o := obj.(type) {
	case *kv1.GPUCheckpoint:
		return o, nil
	case *unstructured.Unstructured:
		ck := &kv1.GPUCheckpoint{}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.UnstructuredContent(), ck); err != nil {
			return nil, fmt.Errorf("converting GPUCheckpoint %s: %w", o.GetName(), err)
		}
		return ck, nil
	}
	return nil, fmt.Errorf("unexpected object %T in a GPUCheckpoint event", obj)
}

// asGPUNode accepts the typed object and the unstructured one the dynamic informer delivers.
func asGPUNode(obj interface{}) (*kv1.GPUNode, error) {
	switch o := obj.(type) {
	case *kv1.GPUNode:
		return o, nil
	case *unstructured.Unstructured:
		gn := &kv1.GPUNode{}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.UnstructuredContent(), gn); err != nil {
			return nil, fmt.Errorf("converting GPUNode %s: %w", o.GetName(), err)
		}
		return gn, nil
	}
	return nil, fmt.Errorf("unexpected object %T in a GPUNode event", obj)
}
