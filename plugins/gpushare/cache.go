package gpushare

import (
	"sync"

	"k8s.io/apimachinery/pkg/types"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
)

// reservations remembers the GPUs chosen for pods between Reserve and the moment their
// kybernate.io/gpus annotation is in the scheduler's snapshot. The scheduler assumes a pod onto
// its node before binding, so the next scheduling cycle sees the pod on the node but not yet
// the annotation: without this, two pods could be given the same GPU. Entries go on Unreserve
// and when the pod is deleted; while both exist the annotation wins.
type reservations struct {
	mu    sync.RWMutex
	byPod map[types.UID]reservation
	// versions counts the changes of each node's reservations, so that an accounting cached
	// for a node can tell it is stale.
	versions map[string]uint64
}

type reservation struct {
	node string
	gpus []string
}

func newReservations() *reservations {
	return &reservations{byPod: map[types.UID]reservation{}, versions: map[string]uint64{}}
}

func (r *reservations) reserve(uid types.UID, node string, gpus []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.byPod[uid]; ok {
		r.versions[old.node]++
	}
	r.byPod[uid] = reservation{node: node, gpus: gpus}
	r.versions[node]++
}

func (r *reservations) release(uid types.UID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.byPod[uid]; ok {
		r.versions[old.node]++
		delete(r.byPod, uid)
	}
}

// version is the number of changes to a node's reservations so far.
func (r *reservations) version(node string) uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.versions[node]
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

// accountings keeps the last GPU accounting computed for each node. Filter and Score run on
// hundreds of nodes per scheduling cycle, and between two cycles only the node that got the
// last pod changes: an accounting is reused while the node's NodeInfo generation (every
// change of its pods bumps it, clones of dry runs included), its GPUNode object and its
// reservations are the ones it was computed from. Cached accountings are only read.
type accountings struct {
	mu     sync.RWMutex
	byNode map[string]cachedAccounting
}

type cachedAccounting struct {
	generation   int64
	gpuNode      *kv1.GPUNode
	reservations uint64
	accounting   *gpupod.Accounting
}

func newAccountings() *accountings {
	return &accountings{byNode: map[string]cachedAccounting{}}
}

// get returns the cached accounting of a node if it was computed from the same inputs.
func (a *accountings) get(node string, generation int64, gn *kv1.GPUNode, reservations uint64) *gpupod.Accounting {
	a.mu.RLock()
	c, ok := a.byNode[node]
	a.mu.RUnlock()
	if !ok || c.generation != generation || c.gpuNode != gn || c.reservations != reservations {
		return nil
	}
	return c.accounting
}

func (a *accountings) put(node string, c cachedAccounting) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.byNode[node] = c
}

func (a *accountings) forget(node string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.byNode, node)
}
