package extender

import (
	"sync"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// reservations remembers the GPUs this extender bound pods to until the pods are gone: the
// pod informer shows a binding later than the next bind may need it. While both exist the
// pod's kybernate.io/gpus annotation wins.
type reservations struct {
	mu    sync.RWMutex
	byPod map[types.UID]reservation
}

type reservation struct {
	pod  *v1.Pod // as bound: spec.nodeName set
	gpus []string
}

func newReservations() *reservations { return &reservations{byPod: map[types.UID]reservation{}} }

func (r *reservations) reserve(pod *v1.Pod, node string, gpus []string) {
	p := pod.DeepCopy()
	p.Spec.NodeName = node
	r.mu.Lock()
	defer r.mu.Unlock()
	r.byPod[pod.UID] = reservation{pod: p, gpus: gpus}
}

func (r *reservations) release(uid types.UID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.byPod, uid)
}

// gpus returns the GPUs reserved for a pod, nil when none.
func (r *reservations) gpus(uid types.UID) []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.byPod[uid].gpus
}

// podsOn returns the pods reserved on the node that are not in seen.
func (r *reservations) podsOn(node string, seen map[types.UID]bool) []*v1.Pod {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []*v1.Pod
	for uid, res := range r.byPod {
		if res.pod.Spec.NodeName == node && !seen[uid] {
			out = append(out, res.pod)
		}
	}
	return out
}

func (r *reservations) len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.byPod)
}

// labelsHasPreemptor selects GPUCheckpoints made for a preemptor.
var labelsHasPreemptor = func() labels.Selector {
	req, err := labels.NewRequirement(kv1.LabelPreemptor, selection.Exists, nil)
	if err != nil {
		panic(err)
	}
	return labels.NewSelector().Add(*req)
}()

func preemptorSelector(uid types.UID) labels.Selector {
	return labels.SelectorFromSet(labels.Set{kv1.LabelPreemptor: string(uid)})
}
