// Package index holds the informer indexes the controllers of kybernate-scheduler share.
package index

import (
	"fmt"

	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// Index names.
const (
	// PodsByNode indexes pods by spec.nodeName.
	PodsByNode = "kybernate.io/by-node"
	// PodsByNominatedNode indexes pods by status.nominatedNodeName.
	PodsByNominatedNode = "kybernate.io/by-nominated-node"
	// PodsByGPUState indexes pods by their kybernate.io/state ("" for none).
	PodsByGPUState = "kybernate.io/by-gpu-state"
	// CheckpointsByPod indexes GPUCheckpoints by spec.podUID.
	CheckpointsByPod = "kybernate.io/by-pod-uid"
)

// AddPodIndexes adds the pod indexes unless they are there already; call it before the
// informer starts.
func AddPodIndexes(informer cache.SharedIndexInformer) error {
	return add(informer, cache.Indexers{
		PodsByNode:          func(obj interface{}) ([]string, error) { return []string{obj.(*v1.Pod).Spec.NodeName}, nil },
		PodsByNominatedNode: func(obj interface{}) ([]string, error) { return []string{obj.(*v1.Pod).Status.NominatedNodeName}, nil },
		PodsByGPUState: func(obj interface{}) ([]string, error) {
			return []string{obj.(*v1.Pod).Annotations[kv1.AnnotationState]}, nil
		},
	})
}

// AddCheckpointIndexes adds the GPUCheckpoint index unless it is there already.
func AddCheckpointIndexes(informer cache.SharedIndexInformer) error {
	return add(informer, cache.Indexers{
		CheckpointsByPod: func(obj interface{}) ([]string, error) {
			return []string{obj.(*kv1.GPUCheckpoint).Spec.PodUID}, nil
		},
	})
}

func add(informer cache.SharedIndexInformer, indexers cache.Indexers) error {
	have := informer.GetIndexer().GetIndexers()
	missing := cache.Indexers{}
	for name, fn := range indexers {
		if _, ok := have[name]; !ok {
			missing[name] = fn
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if err := informer.AddIndexers(missing); err != nil {
		return fmt.Errorf("adding informer indexes: %w", err)
	}
	return nil
}

// Pods returns the pods of an index value that have not ended.
func Pods(indexer cache.Indexer, index, value string) ([]*v1.Pod, error) {
	objs, err := indexer.ByIndex(index, value)
	if err != nil {
		return nil, err
	}
	pods := make([]*v1.Pod, 0, len(objs))
	for _, obj := range objs {
		if pod := obj.(*v1.Pod); pod.Status.Phase != v1.PodSucceeded && pod.Status.Phase != v1.PodFailed {
			pods = append(pods, pod)
		}
	}
	return pods, nil
}

// Checkpoints returns the GPUCheckpoints of a pod.
func Checkpoints(indexer cache.Indexer, podUID string) []*kv1.GPUCheckpoint {
	objs, err := indexer.ByIndex(CheckpointsByPod, podUID)
	if err != nil {
		return nil
	}
	cks := make([]*kv1.GPUCheckpoint, len(objs))
	for i, obj := range objs {
		cks[i] = obj.(*kv1.GPUCheckpoint)
	}
	return cks
}

// WaitingPreemptors are the unbound, live pods that Suspend GPUCheckpoints not Failed were
// requested for (spec.preemptor) on victims bound to the node: the extender makes room this
// way without a nominatedNodeName, so the room is theirs as a nominated pod's would be.
func WaitingPreemptors(checkpoints, pods cache.Indexer, node string) []*v1.Pod {
	var out []*v1.Pod
	seen := map[string]bool{}
	for _, obj := range checkpoints.List() {
		ck, ok := obj.(*kv1.GPUCheckpoint)
		if !ok || ck.Spec.Preemptor == nil || ck.Spec.Action != kv1.ActionSuspend || ck.Status.Phase == kv1.PhaseFailed {
			continue
		}
		victim, ok := podByKey(pods, ck.Namespace+"/"+ck.Spec.PodName)
		if !ok || victim.Spec.NodeName != node {
			continue
		}
		ref := ck.Spec.Preemptor
		p, ok := podByKey(pods, ref.Namespace+"/"+ref.Name)
		if !ok || string(p.UID) != ref.UID || p.Spec.NodeName != "" || p.DeletionTimestamp != nil || seen[ref.UID] {
			continue
		}
		seen[ref.UID] = true
		out = append(out, p)
	}
	return out
}

func podByKey(pods cache.Indexer, key string) (*v1.Pod, bool) {
	obj, ok, err := pods.GetByKey(key)
	if err != nil || !ok {
		return nil, false
	}
	p, ok := obj.(*v1.Pod)
	return p, ok
}
