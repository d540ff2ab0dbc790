package checkpointpreemption

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	"k8s.io/component-base/metrics/testutil"
	"k8s.io/klog/v2"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	st "k8s.io/kubernetes/pkg/scheduler/testing"
	"k8s.io/utils/ptr"

	"github.com/kybernate/kybernate/apis/config"
	listers "github.com/kybernate/kybernate/apis/kybernate/client/listers/kybernate/v1alpha1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/plugins/gpushare"
)

const gi = int64(1) << 30

var now = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

// fakeHandle runs GPUShare as the only filter, as the dry run of a profile would.
type fakeHandle struct {
	framework.Handle
	share    *gpushare.GPUShare
	recorder *events.FakeRecorder
}

func (h *fakeHandle) RunFilterPluginsWithNominatedPods(ctx context.Context, state fwk.CycleState, pod *v1.Pod, ni fwk.NodeInfo) *fwk.Status {
	return h.share.Filter(ctx, state, pod, ni)
}
func (h *fakeHandle) RunPreFilterExtensionRemovePod(context.Context, fwk.CycleState, *v1.Pod, fwk.PodInfo, fwk.NodeInfo) *fwk.Status {
	return nil
}
func (h *fakeHandle) RunPreFilterExtensionAddPod(context.Context, fwk.CycleState, *v1.Pod, fwk.PodInfo, fwk.NodeInfo) *fwk.Status {
	return nil
}
func (h *fakeHandle) GetWaitingPod(types.UID) framework.WaitingPod { return nil }
func (h *fakeHandle) EventRecorder() events.EventRecorder          { return h.recorder }

func gpuNode(name string, slots int32, parkable int64, sizesGiB ...int64) *kv1.GPUNode {
	gn := &kv1.GPUNode{ObjectMeta: metav1.ObjectMeta{Name: name}}
	gn.Spec.SlotsPerGPU = ptr.To(slots)
	gn.Status.HostMemory.ParkableBytes = parkable
	for i, s := range sizesGiB {
		gn.Status.GPUs = append(gn.Status.GPUs, kv1.GPUStatus{UUID: fmt.Sprintf("GPU-%s-%d", name, i), Index: int32(i), MemoryTotalBytes: s * gi})
	}
	return gn
}

// gpuPod is a pod with priority prio asking one GPU with mem VRAM; bound to GPU gpu of node n1
// when gpu >= 0, started an hour before now.
func gpuPod(name string, prio int32, mem string, gpu int) *st.PodWrapper {
	p := st.MakePod().Namespace("ns").Name(name).UID(name).Priority(prio).
		Req(map[v1.ResourceName]string{kv1.ResourceGPU: "1"}).
		Annotation(kv1.AnnotationGPUMemory, mem)
	if gpu >= 0 {
		p = p.Node("n1").Annotation(kv1.AnnotationGPUs, fmt.Sprintf("GPU-n1-%d", gpu))
		p.Status.StartTime = &metav1.Time{Time: now.Add(-time.Hour)}
	}
	return p
}

func newTestPlugin(t *testing.T, gn *kv1.GPUNode, cks ...*kv1.GPUCheckpoint) (*CheckpointPreemption, *fakeHandle) {
	t.Helper()
	nodes := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	if err := nodes.Add(gn); err != nil {
		t.Fatal(err)
	}
	ckIndexer := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	for _, ck := range cks {
		if err := ckIndexer.Add(ck); err != nil {
			t.Fatal(err)
		}
	}
	lister := listers.NewGPUNodeLister(nodes)
	h := &fakeHandle{
		share:    gpushare.NewWithLister(nil, &config.GPUShareArgs{ScoringStrategy: config.MostAllocated}, lister),
		recorder: events.NewFakeRecorder(10),
	}
	args := config.CheckpointPreemptionArgs{MinCandidateNodesPercentage: 10, MinCandidateNodesAbsolute: 100}
	pl := newPlugin(h, args, lister, listers.NewGPUCheckpointLister(ckIndexer))
	pl.now = func() time.Time { return now }
	return pl, h
}

func TestSelectVictimsOnNode(t *testing.T) {
	const parkable = 200 * gi
	failedFor := func(victim, preemptorUID string) *kv1.GPUCheckpoint {
		return &kv1.GPUCheckpoint{
			ObjectMeta: metav1.ObjectMeta{Name: victim + "-suspend", Namespace: "ns", Labels: map[string]string{kv1.LabelPreemptor: preemptorUID}},
			Spec:       kv1.GPUCheckpointSpec{PodName: victim, PodUID: victim, Action: kv1.ActionSuspend, Reason: kv1.ReasonPreemption},
			Status:     kv1.GPUCheckpointStatus{Phase: kv1.PhaseFailed},
		}
	}
	tests := []struct {
		name        string
		gpuNode     *kv1.GPUNode
		pods        []*v1.Pod
		cks         []*kv1.GPUCheckpoint
		preemptor   *v1.Pod
		wantVictims []string
		wantCode    fwk.Code
		wantMsg     string
	}{
		{
			name:    "a pod whose suspension for this preemptor failed is not tried again",
			gpuNode: gpuNode("n1", 4, parkable, 80),
			pods: []*v1.Pod{
				gpuPod("broken", 1, "40Gi", 0).Obj(),
				gpuPod("fine", 1, "40Gi", 0).Obj(),
			},
			cks:         []*kv1.GPUCheckpoint{failedFor("broken", "hi")},
			preemptor:   gpuPod("hi", 10, "30Gi", -1).Obj(),
			wantVictims: []string{"fine"},
		},
		{
			name:    "cheapest set by bytes: two small pods rather than one large",
			gpuNode: gpuNode("n1", 4, parkable, 80),
			pods: []*v1.Pod{
				gpuPod("large", 1, "50Gi", 0).Obj(),
				gpuPod("medium", 1, "20Gi", 0).Obj(),
				gpuPod("small", 1, "10Gi", 0).Obj(),
			},
			preemptor:   gpuPod("hi", 10, "30Gi", -1).Obj(),
			wantVictims: []string{"small", "medium"},
		},
		{
			name:    "one victim is enough",
			gpuNode: gpuNode("n1", 4, parkable, 80),
			pods: []*v1.Pod{
				gpuPod("a", 1, "40Gi", 0).Obj(),
				gpuPod("b", 1, "40Gi", 0).Obj(),
			},
			preemptor:   gpuPod("hi", 10, "30Gi", -1).Obj(),
			wantVictims: []string{"a"},
		},
		{
			name:    "equal bytes: lower priority first",
			gpuNode: gpuNode("n1", 4, parkable, 80),
			pods: []*v1.Pod{
				gpuPod("prio5", 5, "40Gi", 0).Obj(),
				gpuPod("prio1", 1, "40Gi", 0).Obj(),
			},
			preemptor:   gpuPod("hi", 10, "30Gi", -1).Obj(),
			wantVictims: []string{"prio1"},
		},
		{
			name:    "equal bytes and priority: the pod resident longest first",
			gpuNode: gpuNode("n1", 4, parkable, 80),
			pods: []*v1.Pod{
				gpuPod("recent", 1, "40Gi", 0).Obj(),
				func() *v1.Pod {
					p := gpuPod("old", 1, "40Gi", 0).Obj()
					p.Status.StartTime = &metav1.Time{Time: now.Add(-5 * time.Hour)}
					return p
				}(),
			},
			preemptor:   gpuPod("hi", 10, "30Gi", -1).Obj(),
			wantVictims: []string{"old"},
		},
		{
			name:        "equal priority: the running pod's time-slice turn",
			gpuNode:     gpuNode("n1", 4, parkable, 80),
			pods:        []*v1.Pod{gpuPod("peer", 10, "80Gi", 0).Obj()},
			preemptor:   gpuPod("next", 10, "30Gi", -1).Obj(),
			wantVictims: []string{"peer"},
		},
		{
			name:      "equal priority: a preemptor that never gives a turn back gets none",
			gpuNode:   gpuNode("n1", 4, parkable, 80),
			pods:      []*v1.Pod{gpuPod("peer", 10, "80Gi", 0).Obj()},
			preemptor: gpuPod("next", 10, "30Gi", -1).Annotation(kv1.AnnotationPreemption, "Never").Obj(),
			wantCode:  fwk.UnschedulableAndUnresolvable,
			wantMsg:   "no pod on the node may be suspended",
		},
		{
			name:    "lower priority goes before a time-slice turn, even with more bytes",
			gpuNode: gpuNode("n1", 4, parkable, 80),
			pods: []*v1.Pod{
				gpuPod("peer", 10, "20Gi", 0).Obj(),
				gpuPod("low", 1, "60Gi", 0).Obj(),
			},
			preemptor:   gpuPod("next", 10, "30Gi", -1).Obj(),
			wantVictims: []string{"low"},
		},
		{
			name:      "higher priority is never a victim",
			gpuNode:   gpuNode("n1", 4, parkable, 80),
			pods:      []*v1.Pod{gpuPod("boss", 20, "80Gi", 0).Obj()},
			preemptor: gpuPod("hi", 10, "30Gi", -1).Obj(),
			wantCode:  fwk.UnschedulableAndUnresolvable,
			wantMsg:   "no pod on the node may be suspended",
		},
		{
			name:      "preemption Never is respected",
			gpuNode:   gpuNode("n1", 4, parkable, 80),
			pods:      []*v1.Pod{gpuPod("never", 1, "80Gi", 0).Annotation(kv1.AnnotationPreemption, "Never").Obj()},
			preemptor: gpuPod("hi", 10, "30Gi", -1).Obj(),
			wantCode:  fwk.UnschedulableAndUnresolvable,
		},
		{
			name:    "min-runtime since the last resume is respected",
			gpuNode: gpuNode("n1", 4, parkable, 80),
			pods: []*v1.Pod{func() *v1.Pod {
				p := gpuPod("fresh", 1, "80Gi", 0).Annotation(kv1.AnnotationMinRuntime, "10m").Obj()
				p.Status.Conditions = []v1.PodCondition{{
					Type: kv1.ConditionGPUResident, Status: v1.ConditionTrue,
					LastTransitionTime: metav1.Time{Time: now.Add(-time.Minute)},
				}}
				return p
			}()},
			preemptor: gpuPod("hi", 10, "30Gi", -1).Obj(),
			wantCode:  fwk.UnschedulableAndUnresolvable,
		},
		{
			name:      "pods already suspending are not victims again",
			gpuNode:   gpuNode("n1", 4, parkable, 80),
			pods:      []*v1.Pod{gpuPod("busy", 1, "80Gi", 0).Annotation(kv1.AnnotationState, string(kv1.PodSuspending)).Obj()},
			preemptor: gpuPod("hi", 10, "30Gi", -1).Obj(),
			wantCode:  fwk.UnschedulableAndUnresolvable,
		},
		{
			name:      "pods without GPUs are never victims",
			gpuNode:   gpuNode("n1", 4, parkable, 80),
			pods:      []*v1.Pod{st.MakePod().Namespace("ns").Name("cpu").UID("cpu").Priority(1).Node("n1").Obj()},
			preemptor: gpuPod("hi", 10, "30Gi", -1).Obj(),
			wantCode:  fwk.UnschedulableAndUnresolvable,
		},
		{
			name:      "not enough parkable host memory",
			gpuNode:   gpuNode("n1", 4, 10*gi, 80),
			pods:      []*v1.Pod{gpuPod("a", 1, "80Gi", 0).Obj()},
			preemptor: gpuPod("hi", 10, "30Gi", -1).Obj(),
			wantCode:  fwk.UnschedulableAndUnresolvable,
			wantMsg:   "suspending would park 80.0 GiB of GPU memory but the node can park only 10.0 GiB",
		},
		{
			name:    "suspended pods keep their slot: no room even with every candidate suspended",
			gpuNode: gpuNode("n1", 2, parkable, 80),
			pods: []*v1.Pod{
				gpuPod("a", 1, "40Gi", 0).Obj(),
				gpuPod("b", 1, "40Gi", 0).Obj(),
			},
			preemptor: gpuPod("hi", 10, "30Gi", -1).Obj(),
			wantCode:  fwk.Unschedulable,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pl, h := newTestPlugin(t, tt.gpuNode, tt.cks...)
			state := framework.NewCycleState()
			if _, s := h.share.PreFilter(t.Context(), state, tt.preemptor, nil); !s.IsSuccess() {
				t.Fatalf("PreFilter: %v", s)
			}
			ni := framework.NewNodeInfo(tt.pods...)
			ni.SetNode(st.MakeNode().Name("n1").Obj())
			victims, _, status := pl.SelectVictimsOnNode(t.Context(), state, tt.preemptor, ni, nil)
			if status.Code() != tt.wantCode {
				t.Fatalf("code = %v (%q), want %v", status.Code(), status.Message(), tt.wantCode)
			}
			if tt.wantMsg != "" && status.Message() != tt.wantMsg {
				t.Errorf("message = %q, want %q", status.Message(), tt.wantMsg)
			}
			var names []string
			for _, v := range victims {
				names = append(names, v.Name)
			}
			if diff := cmp.Diff(tt.wantVictims, names); diff != "" {
				t.Errorf("victims (-want +got):\n%s", diff)
			}
		})
	}
}

// A victim is asked to suspend through a GPUCheckpoint; nothing is deleted.
func TestSuspendCreatesGPUCheckpoint(t *testing.T) {
	pl, h := newTestPlugin(t, gpuNode("n1", 4, 100*gi, 80))
	var created []*kv1.GPUCheckpoint
	pl.createCheckpoint = func(_ context.Context, ck *kv1.GPUCheckpoint) error {
		created = append(created, ck)
		return nil
	}
	victim := gpuPod("victim", 1, "40Gi", 0).Obj()
	preemptor := gpuPod("hi", 10, "30Gi", -1).UID("0123456789abcdef").Obj()
	candidate := &fakeCandidate{name: "n1"}
	if err := pl.suspend(t.Context(), candidate, preemptor, victim, Name); err != nil {
		t.Fatal(err)
	}
	want := []*kv1.GPUCheckpoint{{
		ObjectMeta: metav1.ObjectMeta{
			Name: "victim-suspend-01234567", Namespace: "ns", Labels: map[string]string{kv1.LabelPreemptor: "0123456789abcdef"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: "victim", UID: "victim"}},
		},
		Spec: kv1.GPUCheckpointSpec{
			PodName: "victim", PodUID: "victim", Action: kv1.ActionSuspend, Reason: kv1.ReasonPreemption,
			Preemptor: &kv1.PodReference{Namespace: "ns", Name: "hi", UID: "0123456789abcdef"},
		},
	}}
	if diff := cmp.Diff(want, created); diff != "" {
		t.Errorf("GPUCheckpoints (-want +got):\n%s", diff)
	}
	select {
	case e := <-h.recorder.Events:
		if !strings.Contains(e, "Preempted") || !strings.Contains(e, "suspending") {
			t.Errorf("event %q does not say the victim is suspended", e)
		}
	default:
		t.Error("no Event on the victim")
	}
}

// An equal-priority victim is a time-slice turn: nothing is suspended now.
func TestSuspendLeavesATurnToTheTimeSliceController(t *testing.T) {
	pl, h := newTestPlugin(t, gpuNode("n1", 4, 100*gi, 80))
	var created []*kv1.GPUCheckpoint
	pl.createCheckpoint = func(_ context.Context, ck *kv1.GPUCheckpoint) error {
		created = append(created, ck)
		return nil
	}
	running := gpuPod("running", 10, "40Gi", 0).Obj()
	next := gpuPod("next", 10, "30Gi", -1).Obj()
	if err := pl.suspend(t.Context(), &fakeCandidate{name: "n1"}, next, running, Name); err != nil {
		t.Fatal(err)
	}
	if len(created) != 0 {
		t.Errorf("%d GPUCheckpoints created for an equal-priority victim, want none", len(created))
	}
	select {
	case e := <-h.recorder.Events:
		t.Errorf("unexpected Event %q", e)
	default:
	}
}

type fakeCandidate struct{ name string }

func (c *fakeCandidate) Name() string                 { return c.name }
func (c *fakeCandidate) Victims() *extenderv1.Victims { return &extenderv1.Victims{} }

func TestPodEligibleToPreemptOthers(t *testing.T) {
	preemptor := gpuPod("hi", 10, "30Gi", -1).UID("hi-uid").Obj()
	inFlight := func(phase kv1.CheckpointPhase) *kv1.GPUCheckpoint {
		return &kv1.GPUCheckpoint{
			ObjectMeta: metav1.ObjectMeta{Name: "v-" + string(phase), Namespace: "ns", Labels: map[string]string{kv1.LabelPreemptor: "hi-uid"}},
			Status:     kv1.GPUCheckpointStatus{Phase: phase},
		}
	}
	tests := []struct {
		name string
		cks  []*kv1.GPUCheckpoint
		pod  *v1.Pod
		want bool
	}{
		{name: "nothing in flight", pod: preemptor, want: true},
		{name: "a pending suspension", cks: []*kv1.GPUCheckpoint{inFlight(kv1.PhasePending)}, pod: preemptor, want: false},
		{name: "a running suspension", cks: []*kv1.GPUCheckpoint{inFlight(kv1.PhaseInProgress)}, pod: preemptor, want: false},
		{name: "finished suspensions", cks: []*kv1.GPUCheckpoint{inFlight(kv1.PhaseSucceeded), inFlight(kv1.PhaseFailed)}, pod: preemptor, want: true},
		{
			name: "preemptionPolicy Never",
			pod: func() *v1.Pod {
				p := preemptor.DeepCopy()
				p.Spec.PreemptionPolicy = ptr.To(v1.PreemptNever)
				return p
			}(),
			want: false,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pl, _ := newTestPlugin(t, gpuNode("n1", 4, 100*gi, 80), tt.cks...)
			got, msg := pl.PodEligibleToPreemptOthers(t.Context(), tt.pod, nil)
			if got != tt.want {
				t.Errorf("eligible = %v (%s), want %v", got, msg, tt.want)
			}
		})
	}
}

func TestCheckpointName(t *testing.T) {
	long := strings.Repeat("x", 300)
	name := gpupod.SuspendCheckpointName(st.MakePod().Name(long).Obj(), st.MakePod().UID("abcdefghijkl").Obj())
	if len(name) > 253 || !strings.HasSuffix(name, "-suspend-abcdefgh") {
		t.Errorf("checkpointName = %q (%d chars)", name, len(name))
	}
}

// A pod that suspended others has its wait from creation to binding recorded; other pods not.
func TestPostBindRecordsPreemptorWait(t *testing.T) {
	registerMetrics()
	preemptor := gpuPod("hi", 10, "30Gi", -1).UID("hi-uid").Obj()
	preemptor.CreationTimestamp = metav1.NewTime(now.Add(-3 * time.Second))
	ck := &kv1.GPUCheckpoint{ObjectMeta: metav1.ObjectMeta{Name: "v-suspend", Namespace: "ns", Labels: map[string]string{kv1.LabelPreemptor: "hi-uid"}}}
	pl, _ := newTestPlugin(t, gpuNode("n1", 4, 100*gi, 80), ck)

	count := func() uint64 {
		n, err := testutil.GetHistogramMetricCount(preemptorBindDuration.ObserverMetric)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := count()
	pl.PostBind(t.Context(), nil, gpuPod("other", 1, "10Gi", -1).Obj(), "n1")
	if got := count(); got != before {
		t.Fatalf("a pod that suspended nobody was recorded (%d -> %d)", before, got)
	}
	pl.PostBind(t.Context(), nil, preemptor, "n1")
	if got := count(); got != before+1 {
		t.Fatalf("preemptor not recorded (%d -> %d)", before, got)
	}
}

func TestIsPreemptorOf(t *testing.T) {
	pod := gpuPod("hi", 10, "30Gi", -1).UID("hi-uid").Obj()
	ck := func(preemptor string) *kv1.GPUCheckpoint {
		return &kv1.GPUCheckpoint{ObjectMeta: metav1.ObjectMeta{Name: "v-suspend", Labels: map[string]string{kv1.LabelPreemptor: preemptor}}}
	}
	asUnstructured := func(obj *kv1.GPUCheckpoint) *unstructured.Unstructured {
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
		if err != nil {
			t.Fatal(err)
		}
		return &unstructured.Unstructured{Object: m}
	}
	tests := []struct {
		name    string
		obj     interface{}
		want    fwk.QueueingHint
		wantErr bool
	}{
		{name: "a suspension for the pod", obj: ck("hi-uid"), want: fwk.Queue},
		{name: "a suspension for the pod, from the dynamic informer", obj: asUnstructured(ck("hi-uid")), want: fwk.Queue},
		{name: "a suspension for another pod", obj: ck("other"), want: fwk.QueueSkip},
		{name: "not a GPUCheckpoint", obj: &v1.Node{}, want: fwk.Queue, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := isPreemptorOf(klog.Background(), pod, nil, tt.obj)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("hint %v (error %v), want %v (error %v)", got, err, tt.want, tt.wantErr)
			}
		})
	}
}
