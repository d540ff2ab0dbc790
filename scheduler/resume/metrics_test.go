package resume

import (
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/component-base/metrics/testutil"

	listers "github.com/kybernate/kybernate/apis/kybernate/client/listers/kybernate/v1alpha1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

func TestCollector(t *testing.T) {
	indexer := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	busy := &kv1.GPUNode{ObjectMeta: metav1.ObjectMeta{Name: "busy"}}
	busy.Status.SuspendedPods = []kv1.PodGPUUsage{{Name: "a"}, {Name: "b"}}
	busy.Status.HostMemory.ParkedBytes = 3 << 30
	idle := &kv1.GPUNode{ObjectMeta: metav1.ObjectMeta{Name: "idle"}}
	for _, gn := range []*kv1.GPUNode{busy, idle} {
		if err := indexer.Add(gn); err != nil {
			t.Fatal(err)
		}
	}
	want := `
# HELP kybernate_scheduler_parked_bytes [ALPHA] GPU memory of suspended pods held in host memory, in bytes, per node, as the nodes' agents report it.
# TYPE kybernate_scheduler_parked_bytes gauge
kybernate_scheduler_parked_bytes{node="busy"} 3.221225472e+09
kybernate_scheduler_parked_bytes{node="idle"} 0
# HELP kybernate_scheduler_suspended_pods [ALPHA] Pods whose GPU memory is parked in host memory, per node, as the nodes' agents report them.
# TYPE kybernate_scheduler_suspended_pods gauge
kybernate_scheduler_suspended_pods{node="busy"} 2
kybernate_scheduler_suspended_pods{node="idle"} 0
`
	c := NewCollector(listers.NewGPUNodeLister(indexer))
	if err := testutil.CustomCollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}
