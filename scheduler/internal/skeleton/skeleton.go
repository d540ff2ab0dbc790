// Package skeleton is what the resume, time-slice and migration controllers of
// kybernate-scheduler share around their sync functions: the informer indexes they read
// through (package index), the pod changes that can change what a node's GPUs hold, the
// unwrapping of informer events, and the work loop (package keyqueue) they are driven by.
package skeleton

import (
	"context"

	v1 "k8s.io/api/core/v1"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/tools/cache"

	kinformers "github.com/kybernate/kybernate/apis/kybernate/client/informers/externalversions/kybernate/v1alpha1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/scheduler/internal/index"
	"github.com/kybernate/kybernate/scheduler/internal/keyqueue"
)

// Register adds the controllers' indexes to the pod and GPUCheckpoint informers (once, whoever
// asks first); call it before the informers start.
func Register(pods coreinformers.PodInformer, checkpoints kinformers.GPUCheckpointInformer) error {
	if err := index.AddPodIndexes(pods.Informer()); err != nil {
		return err
	}
	return index.AddCheckpointIndexes(checkpoints.Informer())
}

// Queue is the work loop of a controller: keys (a node's name, a pod's namespace/name) synced
// one at a time each, retried with backoff on error.
func Queue(name, failure string, sync func(ctx context.Context, key string) error) *keyqueue.Queue {
	return keyqueue.New(name, failure, sync)
}

// QueueNodesOfPods queues the node (see Node) of every pod added or deleted, and the old and new
// node of every pod whose update is a GPUChange.
func QueueNodesOfPods(pods coreinformers.PodInformer, queue *keyqueue.Queue) error {
	queuePod := func(obj interface{}) {
		if pod, ok := Pod(obj); ok && Node(pod) != "" {
			queue.Add(Node(pod))
		}
	}
	_, err := pods.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: queuePod,
		UpdateFunc: func(old, obj interface{}) {
			if o, p := old.(*v1.Pod), obj.(*v1.Pod); GPUChange(o, p) {
				queuePod(o)
				queuePod(p)
			}
		},
		DeleteFunc: queuePod,
	})
	return err
}

// GPUChange reports whether an update of a pod can change what a node's GPUs hold or what the
// controllers decide about it: its node or nominated node, its phase, its kybernate.io/state or
// kybernate.io/gpus, or its deletion.
func GPUChange(old, pod *v1.Pod) bool {
	return old.Spec.NodeName != pod.Spec.NodeName ||
		old.Status.NominatedNodeName != pod.Status.NominatedNodeName ||
		old.Status.Phase != pod.Status.Phase ||
		old.Annotations[kv1.AnnotationState] != pod.Annotations[kv1.AnnotationState] ||
		old.Annotations[kv1.AnnotationGPUs] != pod.Annotations[kv1.AnnotationGPUs] ||
		!old.DeletionTimestamp.Equal(pod.DeletionTimestamp)
}

// Pod returns the pod of an informer event, unwrapping the final state of a deleted one.
func Pod(obj interface{}) (*v1.Pod, bool) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	pod, ok := obj.(*v1.Pod)
	return pod, ok
}

// Node is the node whose GPUs a pod concerns: the one it is bound to, else the one it is
// nominated to; "" when neither.
func Node(pod *v1.Pod) string {
	if pod.Spec.NodeName != "" {
		return pod.Spec.NodeName
	}
	return pod.Status.NominatedNodeName
}
