package controller

import (
	"errors"
	"sync"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/image"
)

// checkRestoreFrom refuses a restore of pod from dir unless dir is an image of the pod's
// namespace under the agent's checkpoint folder, reached without symbolic links
// (image.ResolveRestore). A refusal is a Warning Event RestoreRefused on the pod and an
// InvalidError; a missing image is left to the restore, which says so.
func (o *Operator) checkRestoreFrom(pod *v1.Pod, dir string) error {
	_, err := image.ResolveRestore(o.imageRoot, pod.Namespace, dir)
	var re *image.RefusedError
	if !errors.As(err, &re) {
		return nil
	}
	o.recorder.Eventf(pod, v1.EventTypeWarning, EventRestoreRefused, "%s refused: %v", kv1.AnnotationRestoreFrom, err)
	return invalid("pod %s/%s: %s refused: %v", pod.Namespace, pod.Name, kv1.AnnotationRestoreFrom, err)
}

// RestoreFromGuard looks at kybernate.io/restore-from of every pod bound to a node the agent
// serves as soon as the pod appears, so that a path the pod may not restore from gets its
// Event (RestoreRefused) at once, not only when a restore is tried (the shim refuses it
// too, and the kubelet reports that as the container's creation error). Each pod and path
// is reported once.
type RestoreFromGuard struct {
	op *Operator

	mu sync.Mutex
	// reported are the paths reported, by pod.
	reported map[types.UID]string
}

// NewRestoreFromGuard returns a guard that reports through op's recorder, against op's
// checkpoint folder.
func NewRestoreFromGuard(op *Operator) *RestoreFromGuard {
	return &RestoreFromGuard{op: op, reported: map[types.UID]string{}}
}

// EventHandler checks pods as they are added and change, and forgets deleted ones.
func (g *RestoreFromGuard) EventHandler() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj interface{}) { g.Check(obj) },
		UpdateFunc: func(_, obj interface{}) { g.Check(obj) },
		DeleteFunc: func(obj interface{}) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if pod, ok := obj.(*v1.Pod); ok {
				g.mu.Lock()
				delete(g.reported, pod.UID)
				g.mu.Unlock()
			}
		},
	}
}

// Check reports the pod's restore-from if the agent serves its node and refuses the path.
func (g *RestoreFromGuard) Check(obj interface{}) {
	pod, ok := obj.(*v1.Pod)
	if !ok || pod.Spec.NodeName == "" {
		return
	}
	dir := pod.Annotations[kv1.AnnotationRestoreFrom]
	if dir == "" {
		return
	}
	if _, ours := g.op.engines.Engine(pod.Spec.NodeName); !ours {
		return
	}
	g.mu.Lock()
	done := g.reported[pod.UID] == dir
	g.mu.Unlock()
	if done {
		return
	}
	if err := g.op.checkRestoreFrom(pod, dir); err != nil {
		g.mu.Lock()
		g.reported[pod.UID] = dir
		g.mu.Unlock()
	}
}
