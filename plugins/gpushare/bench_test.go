package gpushare

import (
	"fmt"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	st "k8s.io/kubernetes/pkg/scheduler/testing"
	testingclock "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"github.com/kybernate/kybernate/apis/config"
	listers "github.com/kybernate/kybernate/apis/kybernate/client/listers/kybernate/v1alpha1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
)

// benchNodes is the cluster of the scheduler benchmark (test/bench/scheduler) half way
// through: n nodes of 8 GPUs of 80 GiB with two slots each, one 20Gi pod on each GPU and four
// pods without GPUs per node. Every other node's last GPU pod is still in the ledger, shown by
// the informer a moment ago (the clock does not move). It returns the plugin, a pending 20Gi
// pod's cycle state and the nodes.
func benchNodes(b *testing.B, n int) (*GPUShare, *framework.CycleState, *v1.Pod, []*framework.NodeInfo) {
	b.Helper()
	indexer := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	pl := NewWithLister(nil, &config.GPUShareArgs{ScoringStrategy: config.MostAllocated}, listers.NewGPUNodeLister(indexer))
	pl.ledger = gpupod.NewLedgerWithClock(testingclock.NewFakePassiveClock(time.Date(2026, 12, 7, 1, 0, 0, 0, time.UTC)))
	nodes := make([]*framework.NodeInfo, n)
	for i := range nodes {
		name := fmt.Sprintf("n%d", i)
		gn := gpuNode(name, 80, 80, 80, 80, 80, 80, 80, 80)
		gn.Spec.SlotsPerGPU = ptr.To[int32](2)
		if err := indexer.Add(gn); err != nil {
			b.Fatal(err)
		}
		var pods []*v1.Pod
		for g := range 8 {
			pods = append(pods, on(gpuPod(fmt.Sprintf("%s-g%d", name, g), 1, "20Gi"), name, g))
		}
		for c := range 4 {
			pods = append(pods, st.MakePod().Namespace("ns").Name(fmt.Sprintf("%s-c%d", name, c)).UID(fmt.Sprintf("%s-c%d", name, c)).
				Req(map[v1.ResourceName]string{v1.ResourceCPU: "100m"}).Annotation(kv1.AnnotationGPUMemory, "20Gi").Node(name).Obj())
		}
		if i%2 == 0 {
			last := pods[7]
			pl.ledger.Reserve(gpupod.OwnerScheduler, last, 0)
			pl.ledger.Observe(last)
		}
		nodes[i] = framework.NewNodeInfo(pods...)
		nodes[i].SetNode(st.MakeNode().Name(name).Obj())
	}
	pod := gpuPod("new", 1, "20Gi").Obj()
	state := framework.NewCycleState()
	if _, s := pl.PreFilter(b.Context(), state, pod, nil); !s.IsSuccess() {
		b.Fatal(s)
	}
	return pl, state, pod, nodes
}

// BenchmarkFilterScore is GPUShare's Filter and Score over a 1000-node cluster of 8 GPUs
// each, one scheduling cycle per iteration; ns/node is the time per node. cached: no node
// changed since the last cycle; cached-one-changed: one node got a pod since (the usual case
// between two cycles); uncached: every accounting computed afresh, as without the cache.
func BenchmarkFilterScore(b *testing.B) {
	const n = 1000
	for _, bc := range []struct {
		name     string
		cache    bool
		changing bool
	}{
		{name: "cached", cache: true},
		{name: "cached-one-changed", cache: true, changing: true},
		{name: "uncached"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			pl, state, pod, nodes := benchNodes(b, n)
			if !bc.cache {
				pl.cache = nil
			}
			extra := st.MakePod().Namespace("ns").Name("extra").UID("extra").Obj()
			for _, ni := range nodes { // the cycle before: the cache is warm
				filterScore(b, pl, state, pod, ni)
			}
			cycle := 0
			b.ReportAllocs()
			for b.Loop() {
				if bc.changing {
					ni := nodes[cycle%n]
					if cycle/n%2 == 0 {
						ni.AddPod(extra)
					} else if err := ni.RemovePod(klog.Background(), extra); err != nil {
						b.Fatal(err)
					}
				}
				cycle++
				for _, ni := range nodes {
					filterScore(b, pl, state, pod, ni)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/node")
		})
	}
}

func filterScore(b *testing.B, pl *GPUShare, state fwk.CycleState, pod *v1.Pod, ni fwk.NodeInfo) {
	if s := pl.Filter(b.Context(), state, pod, ni); !s.IsSuccess() {
		b.Fatal(s)
	}
	if _, s := pl.Score(b.Context(), state, pod, ni); !s.IsSuccess() {
		b.Fatal(s)
	}
}

func mustPodInfo(t *testing.T, pod *v1.Pod) fwk.PodInfo {
	t.Helper()
	pi, err := framework.NewPodInfo(pod)
	if err != nil {
		t.Fatal(err)
	}
	return pi
}
