package gpupod

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/kybernate/kybernate/apis/config"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/test/util"
)

const ledgerGiB = int64(1) << 30

// ledgerNode is a node of two 80 GiB GPUs, GPU-0 and GPU-1, four slots each.
func ledgerNode() *kv1.GPUNode {
	slots := int32(4)
	gn := &kv1.GPUNode{Spec: kv1.GPUNodeSpec{SlotsPerGPU: &slots}}
	for i := range 2 {
		gn.Status.GPUs = append(gn.Status.GPUs, kv1.GPUStatus{UUID: fmt.Sprintf("GPU-%d", i), Index: int32(i), MemoryTotalBytes: 80 * ledgerGiB})
	}
	return gn
}

// ledgerPod is a pod of 50Gi on one GPU; node and gpu empty leave it pending.
func ledgerPod(name, node, gpu string, state kv1.PodGPUState) *v1.Pod {
	w := util.MakePod().Namespace("ns").Name(name).UID(name).GPU(1).GPUMemory("50Gi")
	if node != "" {
		w = w.Node(node)
	}
	if gpu != "" {
		w = w.Annotation(kv1.AnnotationGPUs, gpu)
	}
	if state != "" {
		w = w.Annotation(kv1.AnnotationState, string(state))
	}
	return w.Obj()
}

// free is the 50Gi pods each GPU of the node can still take, by the accounting of pods as
// the ledger corrects them.
func free(l *Ledger, pods []*v1.Pod) map[string]bool {
	acc := NewAccounting(ledgerNode(), l.Pods("n1", pods))
	d := Demand{Count: 1, Bytes: 50 * ledgerGiB}
	return map[string]bool{"GPU-0": acc.Fits(d, []string{"GPU-0"}), "GPU-1": acc.Fits(d, []string{"GPU-1"})}
}

func TestLedgerPods(t *testing.T) {
	tests := []struct {
		name    string
		reserve []*v1.Pod // reservations, as placed
		listed  []*v1.Pod // the node's pods as the caller sees them
		want    map[string]bool
	}{
		{
			name:   "nothing reserved: the list as it is",
			listed: []*v1.Pod{ledgerPod("a", "n1", "GPU-0", "")},
			want:   map[string]bool{"GPU-0": false, "GPU-1": true},
		},
		{
			name:    "a pod the scheduler placed that no informer shows yet counts",
			reserve: []*v1.Pod{ledgerPod("new", "n1", "GPU-1", "")},
			want:    map[string]bool{"GPU-0": true, "GPU-1": false},
		},
		{
			name:    "a reservation on another node does not count here",
			reserve: []*v1.Pod{ledgerPod("new", "n2", "GPU-1", "")},
			want:    map[string]bool{"GPU-0": true, "GPU-1": true},
		},
		{
			name:    "an assumed pod without its GPUs yet takes the reserved ones",
			reserve: []*v1.Pod{ledgerPod("new", "n1", "GPU-0", "")},
			listed:  []*v1.Pod{ledgerPod("new", "n1", "", "")},
			want:    map[string]bool{"GPU-0": false, "GPU-1": true},
		},
		{
			// The scheduler's snapshot still shows the pod Suspended: it holds no memory there,
			// but the resume controller has given it GPU-1.
			name:    "a suspended pod being resumed counts on its target GPUs",
			reserve: []*v1.Pod{ledgerPod("back", "n1", "GPU-1", kv1.PodResuming)},
			listed:  []*v1.Pod{ledgerPod("back", "n1", "GPU-0", kv1.PodSuspended)},
			want:    map[string]bool{"GPU-0": true, "GPU-1": false},
		},
		{
			name:    "a resume in place counts while the pod still shows Suspended",
			reserve: []*v1.Pod{ledgerPod("back", "n1", "GPU-0", kv1.PodResuming)},
			listed:  []*v1.Pod{ledgerPod("back", "n1", "GPU-0", kv1.PodSuspended)},
			want:    map[string]bool{"GPU-0": false, "GPU-1": true},
		},
		{
			name:    "a resumed pod that runs counts where it runs",
			reserve: []*v1.Pod{ledgerPod("back", "n1", "GPU-0", kv1.PodResuming)},
			listed:  []*v1.Pod{ledgerPod("back", "n1", "GPU-1", kv1.PodRunning)},
			want:    map[string]bool{"GPU-0": true, "GPU-1": false},
		},
		{
			name:    "a pod that shows its placement counts as it is",
			reserve: []*v1.Pod{ledgerPod("back", "n1", "GPU-0", kv1.PodResuming)},
			listed:  []*v1.Pod{ledgerPod("back", "n1", "GPU-0", kv1.PodRunning)},
			want:    map[string]bool{"GPU-0": false, "GPU-1": true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := NewLedger()
			for _, p := range tt.reserve {
				l.Reserve(OwnerScheduler, p, 0)
			}
			if diff := cmp.Diff(tt.want, free(l, tt.listed)); diff != "" {
				t.Errorf("GPUs with room for 50Gi (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLedgerEnds(t *testing.T) {
	start := time.Date(2026, 12, 7, 1, 0, 0, 0, time.UTC)
	suspended := ledgerPod("back", "n1", "GPU-0", kv1.PodSuspended)
	placed := ledgerPod("back", "n1", "GPU-0", kv1.PodResuming)
	tests := []struct {
		name string
		ttl  time.Duration
		// observed are the versions the pod informer brings, in order, each after step.
		observed []*v1.Pod
		step     time.Duration
		release  bool
		want     bool // whether the reservation still counts at the end
	}{
		{name: "unseen, no time to live: counts until released", step: time.Hour, want: true},
		{name: "released by its owner", release: true, want: false},
		{name: "unseen past its time to live", ttl: time.Minute, step: 2 * time.Minute, want: false},
		{name: "unseen within its time to live", ttl: time.Minute, step: 30 * time.Second, want: true},
		{
			// An older version (a label change, say) shows the same node and GPUs but not the
			// state: it is no sign of the placement.
			name: "a version without the placement does not start the grace", observed: []*v1.Pod{suspended, suspended},
			step: SeenGrace, want: true,
		},
		{name: "shown placed: counts within the grace", observed: []*v1.Pod{placed}, step: SeenGrace / 2, want: true},
		{name: "shown placed: ends after the grace", observed: []*v1.Pod{placed, placed}, step: SeenGrace, want: false},
		{name: "bound to another node: ends", observed: []*v1.Pod{ledgerPod("back", "n2", "GPU-7", "")}, want: false},
		{name: "finished: ends", observed: []*v1.Pod{func() *v1.Pod {
			p := placed.DeepCopy()
			p.Status.Phase = v1.PodSucceeded
			return p
		}()}, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := testingclock.NewFakePassiveClock(start)
			l := NewLedgerWithClock(clock)
			l.Reserve(OwnerResume, placed, tt.ttl)
			for _, p := range tt.observed {
				l.Observe(p)
				clock.SetTime(clock.Now().Add(tt.step))
			}
			if len(tt.observed) == 0 {
				clock.SetTime(clock.Now().Add(tt.step))
			}
			if tt.release {
				l.Release(placed.UID)
			}
			// The caller's view still shows the pod Suspended: only a live reservation
			// makes it count.
			got := !free(l, []*v1.Pod{suspended})["GPU-0"]
			if got != tt.want {
				t.Errorf("reservation counts = %v, want %v", got, tt.want)
			}
			if _, _, ok := l.Placed(placed.UID); ok != tt.want {
				t.Errorf("Placed ok = %v, want %v", ok, tt.want)
			}
		})
	}
}

// A pod the informer has shown still counts, until the grace ends, for a list that lacks it: the
// list may have been read a moment before the informer's event reached the ledger (a
// kill storm saw the resume controller place two pods onto a GPU a preemptor had been bound
// to, and the extender a ninth pod onto a full GPU).
func TestLedgerSeenPodCountsForAnOlderList(t *testing.T) {
	clk := testingclock.NewFakePassiveClock(time.Unix(1000, 0))
	l := NewLedgerWithClock(clk)
	placed := ledgerPod("a", "n1", "GPU-0", "")
	l.Reserve(OwnerScheduler, placed, 0)
	if diff := cmp.Diff(map[string]bool{"GPU-0": false, "GPU-1": true}, free(l, nil)); diff != "" {
		t.Errorf("before the informer shows the pod (-want +got):\n%s", diff)
	}
	l.Observe(placed)
	if diff := cmp.Diff(map[string]bool{"GPU-0": false, "GPU-1": true}, free(l, nil)); diff != "" {
		t.Errorf("a list read before the informer showed the pod (-want +got):\n%s", diff)
	}
	// Within the grace an older version that does not show the placement still counts as
	// placed (a snapshot taken before the informer's update).
	if diff := cmp.Diff(map[string]bool{"GPU-0": false, "GPU-1": true}, free(l, []*v1.Pod{ledgerPod("a", "n1", "", "")})); diff != "" {
		t.Errorf("an older version of the pod (-want +got):\n%s", diff)
	}
	clk.SetTime(clk.Now().Add(SeenGrace))
	if diff := cmp.Diff(map[string]bool{"GPU-0": true, "GPU-1": true}, free(l, nil)); diff != "" {
		t.Errorf("after the grace the list is the truth (-want +got):\n%s", diff)
	}
}

// A reserved pod the informer showed and then deleted frees its GPUs at once, also for a
// controller whose deletion handler runs before the ledger's own (which releases the
// reservation): the resume controller left a preempted pod suspended for a minute because it
// looked on the preemptor's deletion and still found the preemptor's reservation counting.
func TestLedgerDeletedPodFreesAtOnce(t *testing.T) {
	clk := testingclock.NewFakePassiveClock(time.Unix(1000, 0))
	l := NewLedgerWithClock(clk)
	l.informed = cache.NewStore(cache.MetaNamespaceKeyFunc)
	placed := ledgerPod("a", "n1", "GPU-0", "")
	l.Reserve(OwnerScheduler, placed, 0)
	if err := l.informed.Add(placed); err != nil {
		t.Fatal(err)
	}
	l.Observe(placed)
	if diff := cmp.Diff(map[string]bool{"GPU-0": false, "GPU-1": true}, free(l, nil)); diff != "" {
		t.Errorf("shown and not deleted, for a list that lacks it (-want +got):\n%s", diff)
	}
	// A new pod of the same name does not keep the deleted one's reservation alive.
	renamed := ledgerPod("a", "n1", "", "")
	renamed.UID = "a-2"
	if err := l.informed.Update(renamed); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]bool{"GPU-0": true, "GPU-1": true}, free(l, nil)); diff != "" {
		t.Errorf("replaced by a new pod of its name (-want +got):\n%s", diff)
	}
	if err := l.informed.Delete(renamed); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]bool{"GPU-0": true, "GPU-1": true}, free(l, nil)); diff != "" {
		t.Errorf("deleted, before the ledger's handler released it (-want +got):\n%s", diff)
	}
	// Not yet shown: the informer lacking it says nothing, the reservation counts.
	unseen := ledgerPod("b", "n1", "GPU-1", "")
	l.Reserve(OwnerScheduler, unseen, 0)
	if diff := cmp.Diff(map[string]bool{"GPU-0": true, "GPU-1": false}, free(l, nil)); diff != "" {
		t.Errorf("reserved, not yet shown (-want +got):\n%s", diff)
	}
}

// Only the version a reservation was made from, or an older one, is a stale view the ledger
// corrects: a newer version that does not show the placement is a change since or a copy made
// on purpose, and counts as it is.
func TestLedgerCorrectsOnlyStaleVersions(t *testing.T) {
	version := func(p *v1.Pod, rv string) *v1.Pod {
		p.ResourceVersion = rv
		return p
	}
	l := NewLedger()
	l.Reserve(OwnerResume, version(ledgerPod("back", "n1", "GPU-0", kv1.PodResuming), "100"), time.Minute)
	for _, tt := range []struct {
		rv   string
		want bool // GPU-0 free
	}{{"100", false}, {"99", false}, {"101", true}} {
		got := free(l, []*v1.Pod{version(ledgerPod("back", "n1", "GPU-0", kv1.PodSuspended), tt.rv)})["GPU-0"]
		if got != tt.want {
			t.Errorf("pod Suspended at resourceVersion %s: GPU-0 free = %v, want %v", tt.rv, got, tt.want)
		}
	}
}

// TestLedgerSerializesPlacements: placers that each build their accounting from their own
// stale view of the node (nothing on it) and choose under the ledger's lock never hand out the
// same memory: of eight 50Gi pods, one fits on each 80 GiB GPU.
func TestLedgerSerializesPlacements(t *testing.T) {
	l := NewLedger()
	d := Demand{Count: 1, Bytes: 50 * ledgerGiB}
	var wg sync.WaitGroup
	placedOn := make([][]string, 8)
	for i := range placedOn {
		wg.Go(func() {
			l.Lock()
			defer l.Unlock()
			acc := NewAccounting(ledgerNode(), l.Pods("n1", nil))
			gpus := acc.Choose(d, config.MostAllocated)
			if gpus == nil {
				return
			}
			p := ledgerPod(fmt.Sprintf("p%d", i), "n1", FormatGPUs(gpus), "")
			l.Reserve(OwnerScheduler, p, 0)
			placedOn[i] = gpus
		})
	}
	wg.Wait()
	count := map[string]int{}
	for _, gpus := range placedOn {
		for _, g := range gpus {
			count[g]++
		}
	}
	if diff := cmp.Diff(map[string]int{"GPU-0": 1, "GPU-1": 1}, count); diff != "" {
		t.Errorf("pods placed per GPU (-want +got):\n%s", diff)
	}
	if n := l.Len(); n != 2 {
		t.Errorf("%d reservations, want 2", n)
	}
	l.Release(types.UID("p0"))
}

// TestLedgerNodeVersion: a version taken from NodePods stays current exactly while nothing
// that NodePods reads of the node changes: every change of a reservation on the node, on the
// node a replaced reservation left too, and the moment a reservation runs out by time, which
// comes with no call.
func TestLedgerNodeVersion(t *testing.T) {
	start := time.Date(2026, 12, 7, 1, 0, 0, 0, time.UTC)
	placed := ledgerPod("a", "n1", "GPU-0", "")
	tests := []struct {
		name string
		// setup runs before the versions are taken, change after.
		setup, change func(l *Ledger, clock *testingclock.FakePassiveClock)
		want          map[string]bool // node -> version still current
	}{
		{
			name:   "reserved on n1",
			change: func(l *Ledger, _ *testingclock.FakePassiveClock) { l.Reserve(OwnerScheduler, placed, 0) },
			want:   map[string]bool{"n1": false, "n2": true},
		},
		{
			name:  "moved from n1 to n2: both change",
			setup: func(l *Ledger, _ *testingclock.FakePassiveClock) { l.Reserve(OwnerScheduler, placed, 0) },
			change: func(l *Ledger, _ *testingclock.FakePassiveClock) {
				l.Reserve(OwnerScheduler, ledgerPod("a", "n2", "GPU-1", ""), 0)
			},
			want: map[string]bool{"n1": false, "n2": false},
		},
		{
			name:   "released",
			setup:  func(l *Ledger, _ *testingclock.FakePassiveClock) { l.Reserve(OwnerScheduler, placed, 0) },
			change: func(l *Ledger, _ *testingclock.FakePassiveClock) { l.Release(placed.UID) },
			want:   map[string]bool{"n1": false, "n2": true},
		},
		{
			name: "released while another stays",
			setup: func(l *Ledger, _ *testingclock.FakePassiveClock) {
				l.Reserve(OwnerScheduler, placed, 0)
				l.Reserve(OwnerScheduler, ledgerPod("b", "n1", "GPU-1", ""), 0)
			},
			change: func(l *Ledger, _ *testingclock.FakePassiveClock) { l.Release(placed.UID) },
			want:   map[string]bool{"n1": false, "n2": true},
		},
		{
			name:   "releasing a pod without a reservation changes nothing",
			setup:  func(l *Ledger, _ *testingclock.FakePassiveClock) { l.Reserve(OwnerScheduler, placed, 0) },
			change: func(l *Ledger, _ *testingclock.FakePassiveClock) { l.Release("other") },
			want:   map[string]bool{"n1": true, "n2": true},
		},
		{
			name:   "shown by the informer",
			setup:  func(l *Ledger, _ *testingclock.FakePassiveClock) { l.Reserve(OwnerScheduler, placed, 0) },
			change: func(l *Ledger, _ *testingclock.FakePassiveClock) { l.Observe(placed) },
			want:   map[string]bool{"n1": false, "n2": true},
		},
		{
			name:   "a version that does not show the placement changes nothing",
			setup:  func(l *Ledger, _ *testingclock.FakePassiveClock) { l.Reserve(OwnerScheduler, placed, 0) },
			change: func(l *Ledger, _ *testingclock.FakePassiveClock) { l.Observe(ledgerPod("a", "", "", "")) },
			want:   map[string]bool{"n1": true, "n2": true},
		},
		{
			name:   "bound to another node: ends",
			setup:  func(l *Ledger, _ *testingclock.FakePassiveClock) { l.Reserve(OwnerScheduler, placed, 0) },
			change: func(l *Ledger, _ *testingclock.FakePassiveClock) { l.Observe(ledgerPod("a", "n2", "", "")) },
			want:   map[string]bool{"n1": false, "n2": true},
		},
		{
			name:  "unseen, within its time to live",
			setup: func(l *Ledger, _ *testingclock.FakePassiveClock) { l.Reserve(OwnerResume, placed, time.Minute) },
			change: func(_ *Ledger, clock *testingclock.FakePassiveClock) {
				clock.SetTime(start.Add(time.Minute - time.Nanosecond))
			},
			want: map[string]bool{"n1": true, "n2": true},
		},
		{
			name:   "unseen, runs out: no call, the clock alone",
			setup:  func(l *Ledger, _ *testingclock.FakePassiveClock) { l.Reserve(OwnerResume, placed, time.Minute) },
			change: func(_ *Ledger, clock *testingclock.FakePassiveClock) { clock.SetTime(start.Add(time.Minute)) },
			want:   map[string]bool{"n1": false, "n2": true},
		},
		{
			name: "seen, the grace runs out",
			setup: func(l *Ledger, _ *testingclock.FakePassiveClock) {
				l.Reserve(OwnerScheduler, placed, 0)
				l.Observe(placed)
			},
			change: func(_ *Ledger, clock *testingclock.FakePassiveClock) { clock.SetTime(start.Add(SeenGrace)) },
			want:   map[string]bool{"n1": false, "n2": true},
		},
		{
			name: "the earliest of several ends counts",
			setup: func(l *Ledger, _ *testingclock.FakePassiveClock) {
				l.Reserve(OwnerResume, placed, time.Hour)
				l.Reserve(OwnerResume, ledgerPod("b", "n1", "GPU-1", ""), time.Minute)
				l.Reserve(OwnerScheduler, ledgerPod("c", "n1", "GPU-1", ""), 0)
			},
			change: func(_ *Ledger, clock *testingclock.FakePassiveClock) { clock.SetTime(start.Add(time.Minute)) },
			want:   map[string]bool{"n1": false, "n2": true},
		},
		{
			// The node's entry goes with its last reservation; the next one must not bring
			// back a version taken before.
			name:  "released, then another pod reserved: a new version",
			setup: func(l *Ledger, _ *testingclock.FakePassiveClock) { l.Reserve(OwnerScheduler, placed, 0) },
			change: func(l *Ledger, _ *testingclock.FakePassiveClock) {
				l.Release(placed.UID)
				l.Reserve(OwnerScheduler, ledgerPod("b", "n1", "GPU-1", ""), 0)
			},
			want: map[string]bool{"n1": false, "n2": true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := testingclock.NewFakePassiveClock(start)
			l := NewLedgerWithClock(clock)
			if tt.setup != nil {
				tt.setup(l, clock)
			}
			versions := map[string]NodeVersion{}
			for node := range tt.want {
				_, versions[node] = l.NodePods(node, nil)
			}
			tt.change(l, clock)
			got := map[string]bool{}
			for node, v := range versions {
				got[node] = l.Current(node, v)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("versions current (-want +got):\n%s", diff)
			}
		})
	}
}

// TestLedgerIndexFollowsReservations: NodePods of each node after a mix of reservations,
// moves, releases and ends is what a scan of all reservations gives (the index by node agrees
// with the reservations).
func TestLedgerIndexFollowsReservations(t *testing.T) {
	start := time.Date(2026, 12, 7, 1, 0, 0, 0, time.UTC)
	clock := testingclock.NewFakePassiveClock(start)
	l := NewLedgerWithClock(clock)
	for i := range 6 {
		l.Reserve(OwnerScheduler, ledgerPod(fmt.Sprintf("p%d", i), fmt.Sprintf("n%d", i%3), "GPU-0", ""), time.Duration(i+1)*time.Minute)
	}
	l.Reserve(OwnerScheduler, ledgerPod("p0", "n2", "GPU-1", ""), 0) // moved from n0
	l.Release("p1")
	clock.SetTime(start.Add(3 * time.Minute)) // p2 runs out
	l.Observe(ledgerPod("p3", "", "", ""))    // purges p2; p3 still unseen
	l.Observe(ledgerPod("p4", "n0", "", ""))  // on n1, bound to n0: ends
	got := map[string][]string{}
	for _, node := range []string{"n0", "n1", "n2"} {
		pods, _ := l.NodePods(node, nil)
		for _, p := range pods {
			got[node] = append(got[node], p.Name)
		}
		slices.Sort(got[node])
	}
	want := map[string][]string{"n0": {"p3"}, "n2": {"p0", "p5"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("reserved pods by node (-want +got):\n%s", diff)
	}
	if l.Len() != 3 {
		t.Errorf("%d reservations, want 3", l.Len())
	}
	if n := len(l.byNode); n != 2 {
		t.Errorf("index holds %d nodes, want 2 (no entry for a node without reservations)", n)
	}
}
