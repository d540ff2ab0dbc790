package gpushare

import (
	"sync"

	"k8s.io/apimachinery/pkg/types"
)

// reservations remembers the GPUs chosen for pods between Reserve and the moment their
// kybernate.io/gpus annotation is in the scheduler's snapshot. The scheduler assumes a pod onto
// its node before binding, so the next scheduling cycle sees the pod on the node but not yet
// the annotation: without this, two pods could be given the same GPU. Entries go on Unreserve
// and when the pod is deleted; while both exist the annotation wins.
type reservations struct {
	mu    sync.RWMutex
	byPod map[types.UID]reservation
}

type reservation struct {
	node string
	gpus []string
}

func newReservations() *reservations {
	return &reservations{byPod: map[types.UID]reservation{}}
}

func (r *reservations) reserve(uid types.UID, node string, gpus []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.byPod[uid] = reservation{node: node, gpus: gpus}
}

func (r *reservations) release(uid types.UID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.byPod, uid)
}

func (r *reservations) get(uid types.UID) (reservation, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	res, ok := r.byPod[uid]
	return res, ok
}

// gpus returns the reserved GPUs of a pod; a reservationLookup.
func (r *reservations) gpus(uid types.UID) []string {
	res, _ := r.get(uid)
	return res.gpus
}

func (r *reservations) len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.byPod)
}
