package gpupod

import (
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// Owners of ledger reservations, for logs and tests.
const (
	OwnerScheduler = "scheduler" // GPUShare's Reserve, or the extender's bind
	OwnerResume    = "resume"    // the resume controller's Resuming mark
	OwnerMigration = "migration" // the migration controller's replacement pod
)

// SeenGrace is how long a reservation outlives the moment the pod informer first showed its
// placement: a scheduling cycle that began before that moment still works on an older
// snapshot of the pod. Cycles last milliseconds; the grace is generous on purpose.
const SeenGrace = 5 * time.Second

// Ledger is the one record of GPU placements that a process (kybernate-scheduler, or
// kybernate-extender) has decided but its pod informer may not show yet. Everything in the
// process that places GPU memory goes through it: GPUShare's Reserve and the extender's bind
// for pending pods, the resume controller for suspended pods it resumes, the migration
// controller for the replacement pods it creates. Each builds its accounting from the pods it
// sees as the ledger corrects them (Pods), chooses GPUs and records the choice (Reserve)
// while holding the ledger's lock (Lock), so no two of them hand out the same free memory,
// however far behind each other's informers and snapshots are.
//
// A reservation ends when its owner releases it (an unreserve, a failed API call), when the
// pod is deleted or shows up bound to another node, when its time to live passes before the
// pod informer showed it, and SeenGrace after the informer showed the pod placed as reserved.
//
// A caller that keeps what it derived from a node's corrected pods (GPUShare keeps each node's
// accounting between scheduling cycles) takes the node's version with NodePods and asks Current
// whether it still holds: every change of a reservation on the node (made, replaced, released,
// seen, ended) gives the node a new version, and a version is only current until the first of
// the node's reservations runs out by time, which happens without any call.
type Ledger struct {
	// place serializes placements: a choice made from Pods while holding it and recorded
	// with Reserve before it is released is seen by every later choice.
	place sync.Mutex
	mu    sync.RWMutex
	byPod map[types.UID]*reservation
	// byNode indexes byPod by the node each reservation places its pod on; a node without
	// reservations has no entry.
	byNode map[string]*nodeReservations
	// changes counts the changes of all nodes: a node's version is the count at its latest
	// change, so a node that lost its entry and got a new one never repeats a version.
	changes uint64
	// nextEnd is no later than the earliest end of the held reservations (zero: none ends by
	// time): purge scans them only once it has passed. Every pod event of the informer
	// purges, and a burst of placements holds hundreds of reservations.
	nextEnd time.Time
	clock   clock.PassiveClock
	// informed is the pod informer's store (Watch); nil without one.
	informed cache.Store
}

// nodeReservations are the reservations that place pods on one node.
type nodeReservations struct {
	version uint64
	pods    map[types.UID]*reservation
}

// NodeVersion is the state of a node's reservations that a result of NodePods reflects. The
// zero value is the state of a node without reservations.
type NodeVersion struct {
	version uint64
	// until is when the first of the node's reservations that count runs out by time; zero
	// when none does.
	until time.Time
}

type reservation struct {
	owner string
	// pod is the pod as placed: spec.nodeName, kybernate.io/gpus and kybernate.io/state as
	// they will be.
	pod *v1.Pod
	// expires is when an unseen reservation is dropped; zero for never (its owner releases it).
	expires time.Time
	// seen is when the pod informer first showed the placement; zero until then.
	seen time.Time
}

// NewLedger returns an empty ledger. A program makes one and hands it to every part that
// places GPU memory.
func NewLedger() *Ledger {
	return NewLedgerWithClock(clock.RealClock{})
}

// NewLedgerWithClock returns an empty ledger whose reservations run out by the given clock;
// tests move a fake one.
func NewLedgerWithClock(c clock.PassiveClock) *Ledger {
	return &Ledger{byPod: map[types.UID]*reservation{}, byNode: map[string]*nodeReservations{}, clock: c}
}

// Lock takes the ledger's placement lock. Hold it from building the accounting (Pods) to
// recording the choice (Reserve); never across an API call.
func (l *Ledger) Lock() { l.place.Lock() }

// Unlock releases the placement lock.
func (l *Ledger) Unlock() { l.place.Unlock() }

// Reserve records that the pod is placed as given: placed is a copy of the version of the pod
// the choice was made from (its UID and resourceVersion) with its node in spec.nodeName, its
// GPUs in kybernate.io/gpus and the kybernate.io/state it will have. ttl
// bounds the wait for the pod informer to show it (zero: until released). A reservation for
// the same pod replaces the earlier one.
func (l *Ledger) Reserve(owner string, placed *v1.Pod, ttl time.Duration) {
	r := &reservation{owner: owner, pod: placed.DeepCopy()}
	now := l.clock.Now()
	if ttl > 0 {
		r.expires = now.Add(ttl)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.purge(now)
	l.drop(placed.UID)
	l.byPod[placed.UID] = r
	node := r.pod.Spec.NodeName
	nr := l.byNode[node]
	if nr == nil {
		nr = &nodeReservations{pods: map[types.UID]*reservation{}}
		l.byNode[node] = nr
	}
	nr.pods[placed.UID] = r
	l.changed(nr)
	l.ends(r.end())
}

// Release forgets the pod's reservation.
func (l *Ledger) Release(uid types.UID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.drop(uid)
}

// drop forgets a reservation; l.mu is held.
func (l *Ledger) drop(uid types.UID) {
	r, ok := l.byPod[uid]
	if !ok {
		return
	}
	delete(l.byPod, uid)
	node := r.pod.Spec.NodeName
	nr := l.byNode[node]
	delete(nr.pods, uid)
	l.changed(nr)
	if len(nr.pods) == 0 {
		delete(l.byNode, node)
	}
}

// changed gives a node a new version; l.mu is held.
func (l *Ledger) changed(nr *nodeReservations) {
	l.changes++
	nr.version = l.changes
}

// Placed returns the node and GPUs reserved for the pod, and whether there is a reservation.
func (l *Ledger) Placed(uid types.UID) (node string, gpus []string, ok bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	r, ok := l.byPod[uid]
	if !ok || !live(r, l.clock.Now()) {
		return "", nil, false
	}
	return r.pod.Spec.NodeName, AssignedGPUs(r.pod), true
}

// Observe takes a version of a pod from the pod informer: once it shows the reserved
// placement the reservation runs out after SeenGrace; a pod bound to another node, or
// finished, ends it at once.
func (l *Ledger) Observe(pod *v1.Pod) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	l.purge(now)
	r, ok := l.byPod[pod.UID]
	if !ok {
		return
	}
	switch {
	case pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed,
		pod.Spec.NodeName != "" && pod.Spec.NodeName != r.pod.Spec.NodeName:
		l.drop(pod.UID)
	case r.seen.IsZero() && shows(pod, r.pod):
		r.seen = now
		l.changed(l.byNode[r.pod.Spec.NodeName])
		l.ends(r.end())
	}
}

// Pods returns the pods of the node as the ledger corrects them: a listed pod whose version
// does not show its reservation and is the version the reservation was made from (or an older
// one) is replaced by its reserved placement, and reserved pods the list lacks are added while
// their reservations live, also after the informer showed them: a list read before that moment
// (the scheduler's snapshot, an informer's index read just before the pod informer's event
// reached the ledger) lacks them too, until the informer shows them deleted. pods are the node's pods as the caller sees them; the
// result shares them. (A preemption dry run does not leave victims out: it lists them as
// suspended copies.)
func (l *Ledger) Pods(node string, pods []*v1.Pod) []*v1.Pod {
	out, _ := l.NodePods(node, pods)
	return out
}

// NodePods is Pods with the version of the node's reservations the result reflects: while
// Current says the version holds, Pods returns the same for the same list (a deletion the
// informer showed drops a reserved pod before the version changes; it is a pod event too).
func (l *Ledger) NodePods(node string, pods []*v1.Pod) ([]*v1.Pod, NodeVersion) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	nr := l.byNode[node]
	if nr == nil {
		return pods, NodeVersion{}
	}
	now := l.clock.Now()
	version := NodeVersion{version: nr.version}
	out := make([]*v1.Pod, 0, len(pods)+len(nr.pods))
	listed := make(map[types.UID]bool, len(pods))
	for _, p := range pods {
		listed[p.UID] = true
		if r, ok := nr.pods[p.UID]; ok && live(r, now) && !shows(p, r.pod) && stale(p, r.pod) {
			p = r.pod
		}
		out = append(out, p)
	}
	for uid, r := range nr.pods {
		if !listed[uid] && live(r, now) && !l.deleted(r) {
			out = append(out, r.pod)
		}
		if end := r.end(); end.After(now) && (version.until.IsZero() || end.Before(version.until)) {
			version.until = end
		}
	}
	return out, version
}

// deleted reports whether the informer showed the reserved pod and holds it no more: the pod
// was deleted. The informer's store changes before any handler hears of it, so a controller
// that looks again on the deletion event never sees the deleted pod's memory as taken, even
// if the ledger's own handler (which releases the reservation) runs after it; l.mu is held.
func (l *Ledger) deleted(r *reservation) bool {
	if r.seen.IsZero() || l.informed == nil {
		return false
	}
	obj, ok, err := l.informed.Get(r.pod)
	switch {
	case err != nil:
		return false
	case !ok:
		return true
	}
	pod, isPod := obj.(*v1.Pod)
	return isPod && pod.UID != r.pod.UID // a new pod of the same name
}

// Current reports whether the node's reservations are still as they were when NodePods
// returned the version: none made, replaced, released, seen or ended since, and none run out.
func (l *Ledger) Current(node string, v NodeVersion) bool {
	l.mu.RLock()
	var version uint64
	if nr := l.byNode[node]; nr != nil {
		version = nr.version
	}
	l.mu.RUnlock()
	return version == v.version && (v.until.IsZero() || l.clock.Now().Before(v.until))
}

// Watch keeps the ledger up to date from the program's pod informer: every version of a pod
// goes to Observe, a deleted pod's reservation ends. Call it once per ledger, before the
// informer starts.
func (l *Ledger) Watch(pods cache.SharedIndexInformer) error {
	l.mu.Lock()
	l.informed = pods.GetStore()
	l.mu.Unlock()
	_, err := pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj interface{}) { l.observe(obj) },
		UpdateFunc: func(_, obj interface{}) { l.observe(obj) },
		DeleteFunc: func(obj interface{}) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if pod, ok := obj.(*v1.Pod); ok {
				l.Release(pod.UID)
			}
		},
	})
	if err != nil {
		return fmt.Errorf("watching pods for the GPU ledger: %w", err)
	}
	return nil
}

func (l *Ledger) observe(obj interface{}) {
	if pod, ok := obj.(*v1.Pod); ok {
		l.Observe(pod)
	}
}

// Len is the number of reservations held, live or not yet purged.
func (l *Ledger) Len() int {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return len(l.byPod)
}

// end is when the reservation stops counting unless something ends it earlier; zero for never.
func (r *reservation) end() time.Time {
	if !r.seen.IsZero() {
		return r.seen.Add(SeenGrace)
	}
	return r.expires
}

func live(r *reservation, now time.Time) bool {
	end := r.end()
	return end.IsZero() || now.Before(end)
}

// purge drops reservations that are no longer live; l.mu is held. Until nextEnd has passed,
// every reservation is live: nothing to scan.
func (l *Ledger) purge(now time.Time) {
	if l.nextEnd.IsZero() || now.Before(l.nextEnd) {
		return
	}
	l.nextEnd = time.Time{}
	for uid, r := range l.byPod {
		if !live(r, now) {
			l.drop(uid)
			continue
		}
		l.ends(r.end())
	}
}

// ends records that a held reservation stops counting at end (zero: never); l.mu is held.
func (l *Ledger) ends(end time.Time) {
	if !end.IsZero() && (l.nextEnd.IsZero() || end.Before(l.nextEnd)) {
		l.nextEnd = end
	}
}

// stale reports whether a listed version of a pod is the version a reservation was made from
// (placed keeps its resourceVersion) or an older one: the view of a caller that has not caught
// up. A newer version that does not show the placement is no stale view but a change made
// since (the agent rolled the resume back) or a copy a caller made on purpose (CheckpointPreemption's
// dry run suspends its candidates on copies): it counts as it is. Resource versions are etcd
// revisions; they are compared as numbers only to tell older from newer, equality else.
func stale(listed, placed *v1.Pod) bool {
	if listed.ResourceVersion == placed.ResourceVersion {
		return true
	}
	l, errL := strconv.ParseUint(listed.ResourceVersion, 10, 64)
	b, errB := strconv.ParseUint(placed.ResourceVersion, 10, 64)
	return errL == nil && errB == nil && l < b
}

// shows reports whether a version of a pod carries the reserved placement: on the node, on
// the GPUs, in the reserved state or already past it (Running). A resumed pod that runs is
// past it wherever the agent put it.
func shows(pod, placed *v1.Pod) bool {
	if pod.Spec.NodeName != placed.Spec.NodeName {
		return false
	}
	s := StateOf(pod)
	if StateOf(placed) == kv1.PodResuming && s == kv1.PodRunning {
		return true
	}
	return slices.Equal(AssignedGPUs(pod), AssignedGPUs(placed)) && (s == StateOf(placed) || s == kv1.PodRunning)
}
