package gpushare

import (
	"sync"

	"k8s.io/client-go/tools/cache"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
)

// accountings keeps the last GPU accounting computed for each node. Filter and Score run on
// hundreds of nodes per scheduling cycle, and between two cycles usually only the node that
// got the last pod changes. An accounting is reused while everything it was computed from is
// unchanged: the node's pods (the NodeInfo generation, which every pod added, updated or
// removed bumps, the clones of preemption dry runs included), its GPUNode object (the informer
// delivers every update as a new object), and the ledger's reservations on the node (its
// version, current until the first of them runs out by time). Cached accountings are shared
// between goroutines and cycles: they are only read. A nil cache keeps nothing (benchmarks
// compare).
type accountings struct {
	mu     sync.RWMutex
	byNode map[string]*cachedAccounting
	// builds counts the accountings computed, for tests.
	builds uint64
}

type cachedAccounting struct {
	generation int64
	gpuNode    *kv1.GPUNode
	ledger     gpupod.NodeVersion
	accounting *gpupod.Accounting
}

func newAccountings() *accountings {
	return &accountings{byNode: map[string]*cachedAccounting{}}
}

func (a *accountings) get(node string) *cachedAccounting {
	if a == nil {
		return nil
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.byNode[node]
}

func (a *accountings) put(node string, c *cachedAccounting) {
	if a == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.byNode[node] = c
	a.builds++
}

// forget drops a node's accounting: its GPUNode is gone.
func (a *accountings) forget(node string) {
	if a == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.byNode, node)
}

// gpuNodeDeleted forgets the accounting of a node whose GPUNode the informer deleted.
func (pl *GPUShare) gpuNodeDeleted(obj any) {
	if name, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
		pl.cache.forget(name) // GPUNodes are cluster-scoped: the key is the name
	}
}

func (a *accountings) count() uint64 {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.builds
}
