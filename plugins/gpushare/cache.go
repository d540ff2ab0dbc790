package gpushare

import (
	"sync"
	"sync/atomic"

	"k8s.io/client-go/tools/cache"

	"github.com/kybernate/kybernate/apis/config"
	"github.com/kybernate/kybernate/gpupod"
)

// accountings keeps the last GPU accounting computed for each node. Filter and Score run on
// hundreds of nodes per scheduling cycle, and between two cycles usually only the node that
// got the last pod changes. An accounting is reused while everything it was computed from is
// unchanged: the node's pods (the NodeInfo generation, which every pod added, updated or
// removed bumps, the clones of preemption dry runs included), its GPUNode (no informer event
// for it since), and the ledger's reservations on the node (its version, current until the
// first of them runs out by time). Cached accountings are shared between goroutines and
// cycles: they are only read. A nil cache keeps nothing (benchmarks compare).
//
// GPUNode events are counted rather than the object compared, so that a hit needs no look-up
// in the GPUNode lister. seq numbers the events; an accounting remembers the node's number
// when its GPUNode was read and is served only while that is still the node's latest. The
// informer calls its handlers after its store holds the new object, so an accounting computed
// from the old object was read at an older number and is never served after the handler ran.
type accountings struct {
	mu sync.RWMutex
	// seq counts the GPUNode events of all nodes.
	seq uint64
	// deleted is the seq of the latest deletion: the number of every node without an entry,
	// so that an accounting read before a GPUNode went is not stored after it.
	deleted uint64
	byNode  map[string]*nodeEntry
	// builds counts the accountings computed, for tests.
	builds uint64
}

// nodeEntry is a node's latest GPUNode event number and its kept accounting, if any: one map
// look-up finds both.
type nodeEntry struct {
	events uint64
	cached *cachedAccounting
}

type cachedAccounting struct {
	events     uint64 // the node's GPUNode event number when its GPUNode was read
	generation int64
	ledger     gpupod.NodeVersion
	accounting *gpupod.Accounting
	// verdict is what Filter and Score found for the last demand: the pods of a burst ask
	// alike, and the accounting never changes.
	verdict atomic.Pointer[verdict]
}

// verdict is a node's answer to one demand.
type verdict struct {
	demand   gpupod.Demand
	strategy config.ScoringStrategyType
	possible bool  // the node could hold the demand if it were empty
	fits     bool  // some of its GPUs hold the demand now
	score    int64 // of the GPUs the demand would get, when it fits
}

func newAccountings() *accountings {
	return &accountings{byNode: map[string]*nodeEntry{}}
}

// get returns the node's kept accounting if no GPUNode event came after it was computed, and
// the node's current event number for an accounting computed now.
func (a *accountings) get(node string) (*cachedAccounting, uint64) {
	if a == nil {
		return nil, 0
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	e := a.byNode[node]
	if e == nil {
		return nil, a.deleted
	}
	if e.cached != nil && e.cached.events == e.events {
		return e.cached, e.events
	}
	return nil, e.events
}

// put keeps an accounting unless a GPUNode event of its node came after it was read.
func (a *accountings) put(node string, c *cachedAccounting) {
	if a == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.builds++
	e := a.byNode[node]
	switch {
	case e != nil && e.events == c.events:
		e.cached = c
	case e == nil && a.deleted == c.events:
		a.byNode[node] = &nodeEntry{events: c.events, cached: c}
	}
}

// gpuNodeEvent records an added or updated GPUNode: its node's accounting is computed afresh.
func (a *accountings) gpuNodeEvent(node string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.seq++
	a.byNode[node] = &nodeEntry{events: a.seq}
}

// forget drops a node whose GPUNode is gone.
func (a *accountings) forget(node string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.seq++
	a.deleted = a.seq
	delete(a.byNode, node)
}

// GPUNodeHandler keeps the cached accountings in step with the GPUNode informer.
func (pl *GPUShare) GPUNodeHandler() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    pl.gpuNodeChanged,
		UpdateFunc: func(_, obj any) { pl.gpuNodeChanged(obj) },
		DeleteFunc: pl.gpuNodeDeleted,
	}
}

// gpuNodeChanged invalidates the accounting of a node whose GPUNode the informer added or
// updated.
func (pl *GPUShare) gpuNodeChanged(obj any) {
	if name, err := cache.MetaNamespaceKeyFunc(obj); err == nil && pl.cache != nil {
		pl.cache.gpuNodeEvent(name) // GPUNodes are cluster-scoped: the key is the name
	}
}

// gpuNodeDeleted forgets the accounting of a node whose GPUNode the informer deleted.
func (pl *GPUShare) gpuNodeDeleted(obj any) {
	if name, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil && pl.cache != nil {
		pl.cache.forget(name)
	}
}

func (a *accountings) count() uint64 {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.builds
}

// judge returns the node's verdict on the demand, remembered for the last demand.
func (c *cachedAccounting) judge(d gpupod.Demand, strategy config.ScoringStrategyType) *verdict {
	if v := c.verdict.Load(); v != nil && v.demand == d && v.strategy == strategy {
		return v
	}
	v := &verdict{demand: d, strategy: strategy, possible: c.accounting.Possible(d)}
	if v.possible {
		v.score, v.fits = c.accounting.ChooseScore(d, strategy)
	}
	c.verdict.Store(v)
	return v
}
