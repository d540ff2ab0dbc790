package gpushare

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2/ktesting"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	testingclock "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"github.com/kybernate/kybernate/apis/config"
	listers "github.com/kybernate/kybernate/apis/kybernate/client/listers/kybernate/v1alpha1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
)

// TestCachedAccountingFollowsChanges: Filter, run again and again on the same NodeInfo with the
// node's accounting cached, sees every change of the ledger's reservations on the node (made,
// released, moved away, shown by the informer, run out by the clock alone) and of its GPUNode.
// Each step fails when the cache does not notice the change it makes.
func TestCachedAccountingFollowsChanges(t *testing.T) {
	start := time.Date(2026, 12, 7, 1, 0, 0, 0, time.UTC)
	clock := testingclock.NewFakePassiveClock(start)
	indexer := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	gn := gpuNode("n", 80)
	gn.Spec.SlotsPerGPU = ptr.To[int32](4)
	if err := indexer.Add(gn); err != nil {
		t.Fatal(err)
	}
	pl := NewWithLister(nil, &config.GPUShareArgs{ScoringStrategy: config.MostAllocated}, listers.NewGPUNodeLister(indexer))
	pl.ledger = gpupod.NewLedgerWithClock(clock)
	// Bound a moment ago, its GPU not in the snapshot yet: only a reservation gives it one.
	assumed := gpuPod("assumed", 1, "").Node("n").Obj()
	ni := nodeInfo("n", assumed)
	state, _ := preFilter(t, pl, gpuPod("new", 1, "40Gi").Obj())
	onGPU := func(p *v1.Pod, node string) *v1.Pod { return placed(p, node, []string{gpuID("n", 0)}) }
	// resumed is a suspended pod the resume controller gives the GPU back; the snapshot does
	// not list it (a pod of another program's view, say).
	resumed := onGPU(gpuPod("resumed", 1, "").Annotation(kv1.AnnotationState, string(kv1.PodResuming)).Obj(), "n")

	// A small reservation that stays throughout: the node's reservations never all go, so
	// each change below must be told by the version, not by the node's entry going away.
	small := placed(gpuPod("small", 1, "1Gi").Obj(), "n", []string{gpuID("n", 0)})
	pl.ledger.Reserve(gpupod.OwnerScheduler, small, 0)

	steps := []struct {
		name   string
		change func()
		want   fwk.Code
	}{
		{name: "a small pod reserved", change: func() {}, want: fwk.Success},
		{name: "the assumed pod's GPU reserved", change: func() {
			pl.ledger.Reserve(gpupod.OwnerScheduler, onGPU(assumed, "n"), 0)
		}, want: fwk.Unschedulable},
		{name: "released", change: func() { pl.ledger.Release(assumed.UID) }, want: fwk.Success},
		{name: "reserved again", change: func() {
			pl.ledger.Reserve(gpupod.OwnerScheduler, onGPU(assumed, "n"), 0)
		}, want: fwk.Unschedulable},
		{name: "the reservation moved to another node", change: func() {
			pl.ledger.Reserve(gpupod.OwnerScheduler, onGPU(assumed, "n2"), 0)
		}, want: fwk.Success},
		{name: "a resume reserved for a minute", change: func() {
			pl.ledger.Reserve(gpupod.OwnerResume, resumed, time.Minute)
		}, want: fwk.Unschedulable},
		{name: "a second before it runs out", change: func() {
			clock.SetTime(start.Add(time.Minute - time.Second))
		}, want: fwk.Unschedulable},
		{name: "ran out: no event, the clock alone", change: func() {
			clock.SetTime(start.Add(time.Minute))
		}, want: fwk.Success},
		{name: "resumed again", change: func() {
			pl.ledger.Reserve(gpupod.OwnerResume, resumed, time.Minute)
		}, want: fwk.Unschedulable},
		{name: "the informer shows it: it counts for a list read before that", change: func() {
			pl.ledger.Observe(resumed)
		}, want: fwk.Unschedulable},
		{name: "the grace after the informer showed it ends: the list is the truth", change: func() {
			clock.SetTime(clock.Now().Add(gpupod.SeenGrace))
		}, want: fwk.Success},
		{name: "a new GPUNode object, smaller", change: func() {
			gn := gpuNode("n", 20)
			if err := indexer.Update(gn); err != nil {
				t.Fatal(err)
			}
			pl.GPUNodeHandler().OnUpdate(nil, gn) // as the informer does, after its store
		}, want: fwk.UnschedulableAndUnresolvable},
	}
	var want, got []string
	for _, s := range steps {
		s.change()
		want = append(want, s.name+": "+s.want.String())
		got = append(got, s.name+": "+pl.Filter(t.Context(), state, nil, ni).Code().String())
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Filter after each change (-want +got):\n%s", diff)
	}
}

// TestCachedAccountingReused: a cycle over nodes none of which changed computes no accounting;
// a node whose pods, GPUNode or reservations changed is computed afresh, and only that node.
func TestCachedAccountingReused(t *testing.T) {
	names := []string{"n0", "n1", "n2"}
	indexer := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	for _, n := range names {
		if err := indexer.Add(gpuNode(n, 80, 80, 80)); err != nil {
			t.Fatal(err)
		}
	}
	pl := NewWithLister(nil, &config.GPUShareArgs{ScoringStrategy: config.MostAllocated}, listers.NewGPUNodeLister(indexer))
	pod := gpuPod("new", 1, "20Gi").Obj()
	state, _ := preFilter(t, pl, pod)
	nodes := map[string]*framework.NodeInfo{}
	for _, n := range names {
		nodes[n] = nodeInfo(n, on(gpuPod("on-"+n, 1, "20Gi"), n, 0)).(*framework.NodeInfo)
	}
	cycle := func() uint64 {
		before := pl.cache.count()
		for _, n := range names {
			if s := pl.Filter(t.Context(), state, pod, nodes[n]); !s.IsSuccess() {
				t.Fatalf("Filter on %s: %v", n, s)
			}
			if _, s := pl.Score(t.Context(), state, pod, nodes[n]); !s.IsSuccess() {
				t.Fatalf("Score on %s: %v", n, s)
			}
		}
		return pl.cache.count() - before
	}
	steps := []struct {
		name   string
		change func()
		want   uint64 // accountings computed in the cycle after the change
	}{
		{name: "first cycle", change: func() {}, want: 3},
		{name: "nothing changed", change: func() {}, want: 0},
		{name: "a pod added to n0", change: func() {
			nodes["n0"].AddPod(on(gpuPod("more", 1, "20Gi"), "n0", 1))
		}, want: 1},
		{name: "a pod removed from n1 (a preemption dry run's clone)", change: func() {
			clone := nodes["n1"].SnapshotConcrete()
			if err := clone.RemovePod(ktesting.NewLogger(t, ktesting.DefaultConfig), clone.GetPods()[0].GetPod()); err != nil {
				t.Fatal(err)
			}
			nodes["n1"] = clone
		}, want: 1},
		{name: "a reservation on n2", change: func() {
			pl.ledger.Reserve(gpupod.OwnerScheduler, placed(gpuPod("r", 1, "20Gi").Obj(), "n2", []string{gpuID("n2", 1)}), 0)
		}, want: 1},
		{name: "a new GPUNode object of n0", change: func() {
			gn := gpuNode("n0", 80, 80, 80)
			if err := indexer.Update(gn); err != nil {
				t.Fatal(err)
			}
			pl.GPUNodeHandler().OnUpdate(nil, gn)
		}, want: 1},
		{name: "nothing changed again", change: func() {}, want: 0},
	}
	var want, got []string
	for _, s := range steps {
		s.change()
		want = append(want, fmt.Sprintf("%s: %d", s.name, s.want))
		got = append(got, fmt.Sprintf("%s: %d", s.name, cycle()))
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("accountings computed per cycle (-want +got):\n%s", diff)
	}
}

// TestGPUNodeDeletedForgetsAccounting: a GPUNode the informer deletes, seen or only as its
// final state, takes its node's cached accounting with it.
func TestGPUNodeDeletedForgetsAccounting(t *testing.T) {
	for _, tt := range []struct {
		name    string
		deleted func(gn *kv1.GPUNode) any
	}{
		{name: "the object", deleted: func(gn *kv1.GPUNode) any { return gn }},
		{name: "its final state unknown", deleted: func(gn *kv1.GPUNode) any {
			return cache.DeletedFinalStateUnknown{Key: gn.Name, Obj: gn}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			gn := gpuNode("n", 80)
			pl := newTestPlugin(t, config.MostAllocated, gn, gpuNode("other", 80))
			pod := gpuPod("new", 1, "").Obj()
			state, _ := preFilter(t, pl, pod)
			for _, n := range []string{"n", "other"} {
				if s := pl.Filter(t.Context(), state, pod, nodeInfo(n)); !s.IsSuccess() {
					t.Fatalf("Filter on %s: %v", n, s)
				}
			}
			pl.GPUNodeHandler().OnDelete(tt.deleted(gn))
			n, _ := pl.cache.get("n")
			other, _ := pl.cache.get("other")
			if n != nil || other == nil {
				t.Errorf("cached after the delete: n %v, other %v; want only other", n != nil, other != nil)
			}
		})
	}
}

// TestAccountingReadBeforeAnEventIsNotKept: an accounting computed from a GPUNode read before
// an informer event of its node (the informer's store changes before its handlers run) is not
// kept, whether the event updated or deleted the GPUNode; one computed after the event is.
func TestAccountingReadBeforeAnEventIsNotKept(t *testing.T) {
	for _, tt := range []struct {
		name  string
		event func(a *accountings)
	}{
		{name: "updated", event: func(a *accountings) { a.gpuNodeEvent("n") }},
		{name: "deleted", event: func(a *accountings) { a.forget("n") }},
		{name: "another node deleted", event: func(a *accountings) { a.forget("other") }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := newAccountings()
			a.gpuNodeEvent("n")
			_, events := a.get("n")
			tt.event(a)
			a.put("n", &cachedAccounting{events: events})
			got, _ := a.get("n")
			if tt.name == "another node deleted" {
				if got == nil {
					t.Fatal("an event of another node dropped n's accounting")
				}
				return
			}
			if got != nil {
				t.Fatal("an accounting read before the event is served after it")
			}
			_, events = a.get("n")
			a.put("n", &cachedAccounting{events: events})
			if got, _ := a.get("n"); got == nil {
				t.Error("an accounting read after the event is not kept")
			}
		})
	}
}

// TestScoreRemembersEachDemand: Filter and Score of a cached node give for each demand what the
// accounting computes, also when demands alternate and after the node changed.
func TestScoreRemembersEachDemand(t *testing.T) {
	gn := gpuNode("n", 80, 80)
	gn.Spec.SlotsPerGPU = ptr.To[int32](4)
	pl := newTestPlugin(t, config.MostAllocated, gn)
	ni := nodeInfo("n", on(gpuPod("on", 1, "60Gi"), "n", 0)).(*framework.NodeInfo)
	small, _ := preFilter(t, pl, gpuPod("small", 1, "10Gi").Obj())
	big, _ := preFilter(t, pl, gpuPod("big", 1, "40Gi").Obj())
	score := func(state *framework.CycleState) int64 {
		s, status := pl.Score(t.Context(), state, nil, ni)
		if !status.IsSuccess() {
			t.Fatal(status)
		}
		return s
	}
	// small fits beside the 60Gi pod (the fuller GPU: a high score); big only on the empty one.
	want := []int64{score(small), score(big)}
	if want[0] <= want[1] {
		t.Fatalf("scores small %d, big %d: want small's higher (bin-packed onto the used GPU)", want[0], want[1])
	}
	for range 3 {
		if got := []int64{score(small), score(big)}; !slices.Equal(got, want) {
			t.Fatalf("scores %v after alternating, want %v", got, want)
		}
	}
	// Filter alternates too: a pod that fits, one the node can never hold, one that waits.
	huge, _ := preFilter(t, pl, gpuPod("huge", 3, "").Obj())
	both, _ := preFilter(t, pl, gpuPod("both", 2, "30Gi").Obj())
	for range 2 {
		var codes []fwk.Code
		for _, state := range []*framework.CycleState{small, huge, both} {
			codes = append(codes, pl.Filter(t.Context(), state, nil, ni).Code())
		}
		if want := []fwk.Code{fwk.Success, fwk.UnschedulableAndUnresolvable, fwk.Unschedulable}; !slices.Equal(codes, want) {
			t.Fatalf("Filter codes %v, want %v", codes, want)
		}
	}
	ni.AddPod(on(gpuPod("more", 1, "30Gi"), "n", 1))
	if got := score(big); got == want[1] {
		t.Errorf("big's score stayed %d after a pod took half of the GPU it goes to", got)
	}
}
