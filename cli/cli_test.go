package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	kfake "github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned/fake"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/test/util"
)

const (
	gi   = int64(1) << 30
	gpu0 = "GPU-00000000-0000-0000-0000-000000000000"
	gpu1 = "GPU-00000000-0000-0000-0000-000000000001"
)

var t0 = time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)

// gpuNode is node n1 with two 80 GiB GPUs: pod ml/a resident on gpu0 with 20 GiB, pod ml/b
// suspended from gpu0 with 30 GiB parked.
func gpuNode() *kv1.GPUNode {
	return &kv1.GPUNode{
		ObjectMeta: metav1.ObjectMeta{Name: "n1"},
		Spec:       kv1.GPUNodeSpec{SlotsPerGPU: ptr(int32(2))},
		Status: kv1.GPUNodeStatus{
			GPUs: []kv1.GPUStatus{
				{UUID: gpu1, Index: 1, Model: "H100", MemoryTotalBytes: 80 * gi},
				{UUID: gpu0, Index: 0, Model: "H100", MemoryTotalBytes: 80 * gi, MemoryUsedBytes: 20 * gi, Pods: []kv1.PodGPUUsage{
					{Namespace: "ml", Name: "a", Residency: kv1.Resident, Bytes: 20 * gi, GPUs: []string{gpu0}},
				}},
			},
			SuspendedPods: []kv1.PodGPUUsage{{Namespace: "ml", Name: "b", Residency: kv1.Suspended, Bytes: 30 * gi, GPUs: []string{gpu0}}},
			HostMemory:    kv1.HostMemoryStatus{ParkableBytes: 100 * gi, ParkedBytes: 30 * gi},
			Conditions: []metav1.Condition{
				{Type: kv1.GPUNodeReady, Status: metav1.ConditionTrue},
				{Type: kv1.GPUNodeSimulated, Status: metav1.ConditionTrue},
			},
		},
	}
}

func ptr[T any](v T) *T { return &v }

func TestNodeView(t *testing.T) {
	want := NodeGPUs{Node: "n1", Simulated: true, Ready: true, ParkableBytes: 100 * gi, ParkedBytes: 30 * gi, GPUs: []GPUView{
		{Index: 0, UUID: gpu0, Model: "H100", MemoryUsedBytes: 20 * gi, MemoryTotalBytes: 80 * gi,
			Resident:  []PodOnGPU{{Namespace: "ml", Name: "a", Bytes: 20 * gi}},
			Suspended: []SuspendedPod{{Namespace: "ml", Name: "b", ParkedBytes: 30 * gi, Tier: TierHostMemory}}},
		{Index: 1, UUID: gpu1, Model: "H100", MemoryTotalBytes: 80 * gi, Resident: []PodOnGPU{}, Suspended: []SuspendedPod{}},
	}}
	if diff := cmp.Diff(want, nodeView(gpuNode())); diff != "" {
		t.Errorf("nodeView (-want +got):\n%s", diff)
	}
}

func TestPrintGPUsTable(t *testing.T) {
	var out strings.Builder
	o := &Options{}
	o.Streams.Out, o.Streams.ErrOut = &out, &out
	if err := o.printGPUs([]NodeGPUs{nodeView(gpuNode())}); err != nil {
		t.Fatal(err)
	}
	want := `NODE   GPU   MODEL   MEMORY          RESIDENT   SUSPENDED
n1*    0     H100    20.0Gi/80.0Gi   ml/a       ml/b 30Gi HostMemory
n1*    1     H100    0.0Gi/80.0Gi    -          -
* simulated GPUs (kybernate-agent --simulate): nothing on these nodes touches a real GPU
`
	if diff := cmp.Diff(want, out.String()); diff != "" {
		t.Errorf("table (-want +got):\n%s", diff)
	}
}

// running is a pod on n1's gpu0 in state s, started at t0.
func running(name, mem string, s kv1.PodGPUState) *v1.Pod {
	p := util.MakePod().Namespace("ml").Name(name).UID(name+"-uid").Node("n1").GPU(1).GPUMemory(mem).
		Annotation(kv1.AnnotationGPUs, gpu0).Annotation(kv1.AnnotationState, string(s)).Phase(v1.PodRunning).Obj()
	p.Status.StartTime = &metav1.Time{Time: t0}
	return p
}

func TestSuspendRefusals(t *testing.T) {
	never := running("never", "10Gi", kv1.PodRunning)
	never.Annotations[kv1.AnnotationPreemption] = string(kv1.PreemptionNever)
	pending := util.MakePod().Namespace("ml").Name("pending").GPU(1).Obj()
	busy := running("busy", "10Gi", kv1.PodRunning)
	inFlight := &kv1.GPUCheckpoint{ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: "busy-x"},
		Spec: kv1.GPUCheckpointSpec{PodName: "busy", PodUID: "busy-uid", Action: kv1.ActionSuspend, Reason: kv1.ReasonPreemption}}
	for _, tc := range []struct{ pod, want string }{
		{"never", "is never suspended"},
		{"pending", "not bound to a node"},
		{"b", "only a Running GPU pod"},
		{"busy", "being moved already"},
		{"gone", "not found"},
	} {
		t.Run(tc.pod, func(t *testing.T) {
			kube := fake.NewClientset(never, pending, busy, running("b", "30Gi", kv1.PodSuspended))
			kyb := kfake.NewSimpleClientset(inFlight)
			_, err := Suspend(t.Context(), kube, kyb, "ml", tc.pod)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Suspend(%s): %v, want an error with %q", tc.pod, err, tc.want)
			}
			list, _ := kyb.KybernateV1alpha1().GPUCheckpoints("ml").List(t.Context(), metav1.ListOptions{})
			if len(list.Items) != 1 {
				t.Errorf("Suspend(%s) refused but left %d GPUCheckpoints", tc.pod, len(list.Items))
			}
		})
	}
}

func TestSuspendCreatesManualCheckpoint(t *testing.T) {
	pod := running("a", "20Gi", kv1.PodRunning)
	kyb := kfake.NewSimpleClientset()
	if _, err := Suspend(t.Context(), fake.NewClientset(pod), kyb, "ml", "a"); err != nil {
		t.Fatal(err)
	}
	list, _ := kyb.KybernateV1alpha1().GPUCheckpoints("ml").List(t.Context(), metav1.ListOptions{})
	if len(list.Items) != 1 {
		t.Fatalf("%d GPUCheckpoints, want 1", len(list.Items))
	}
	ck := list.Items[0]
	want := kv1.GPUCheckpointSpec{PodName: "a", PodUID: "a-uid", Action: kv1.ActionSuspend, Reason: kv1.ReasonManual}
	if diff := cmp.Diff(want, ck.Spec); diff != "" || ck.GenerateName != "a-manual-suspend-" || len(ck.OwnerReferences) != 1 || ck.OwnerReferences[0].UID != "a-uid" {
		t.Errorf("GPUCheckpoint %+v (-want +got spec):\n%s", ck.ObjectMeta, diff)
	}
}

func TestResumeTarget(t *testing.T) {
	for _, tc := range []struct {
		name    string
		pods    []runtime.Object
		gpus    []string
		want    []string
		wantErr string
	}{
		{name: "own GPU has room", want: []string{gpu0}},
		{name: "onto the other GPU", gpus: []string{gpu1}, want: []string{gpu1}},
		{name: "own GPU full: the other", pods: []runtime.Object{running("c", "40Gi", kv1.PodRunning)}, want: []string{gpu1}},
		{name: "not a GPU of the node", gpus: []string{"GPU-ffffffff-0000-0000-0000-000000000000"}, wantErr: "not a GPU of node n1"},
		{name: "two GPUs for one", gpus: []string{gpu0, gpu1}, wantErr: "give one per GPU"},
		{name: "own GPU full, asked for it", gpus: []string{gpu0}, pods: []runtime.Object{running("c", "40Gi", kv1.PodRunning)}, wantErr: "lack the free memory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := running("b", "30Gi", kv1.PodSuspended)
			objs := append([]runtime.Object{running("a", "20Gi", kv1.PodRunning), b}, tc.pods...)
			got, err := resumeTarget(t.Context(), fake.NewClientset(objs...), kfake.NewSimpleClientset(gpuNode()), b, []string{gpu0}, tc.gpus)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("error %v, want one with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("target (-want +got):\n%s", diff)
			}
		})
	}
}

func TestEventTimeOrder(t *testing.T) {
	at := func(s int) metav1.Time { return metav1.NewTime(t0.Add(time.Duration(s) * time.Second)) }
	micro := func(s int) metav1.MicroTime { return metav1.NewMicroTime(t0.Add(time.Duration(s) * time.Second)) }
	for _, tc := range []struct {
		name string
		e    v1.Event
		want int
	}{
		{"core event", v1.Event{LastTimestamp: at(3), FirstTimestamp: at(1)}, 3},
		{"events.k8s.io event", v1.Event{EventTime: micro(2)}, 2},
		{"series", v1.Event{EventTime: micro(2), Series: &v1.EventSeries{LastObservedTime: micro(5)}}, 5},
		{"only created", v1.Event{ObjectMeta: metav1.ObjectMeta{CreationTimestamp: at(7)}}, 7},
	} {
		if got := EventTime(&tc.e); !got.Equal(t0.Add(time.Duration(tc.want) * time.Second)) {
			t.Errorf("%s: %v, want t0+%ds", tc.name, got, tc.want)
		}
	}
}

// Within one second an event of the core API (whole seconds) goes after the events.k8s.io
// events (microseconds) of that second.
func TestPodEventsOrder(t *testing.T) {
	pod := running("a", "1Gi", kv1.PodRunning)
	ev := func(name string, e v1.Event) *v1.Event {
		e.ObjectMeta = metav1.ObjectMeta{Namespace: "ml", Name: name}
		e.InvolvedObject = v1.ObjectReference{Kind: "Pod", Namespace: "ml", Name: "a", UID: pod.UID}
		e.Reason = name
		return &e
	}
	kube := fake.NewClientset(pod,
		ev("Suspending", v1.Event{LastTimestamp: metav1.NewTime(t0.Add(time.Second))}),
		ev("Preempted", v1.Event{EventTime: metav1.NewMicroTime(t0.Add(1200 * time.Millisecond))}),
		ev("Scheduled", v1.Event{EventTime: metav1.NewMicroTime(t0.Add(300 * time.Millisecond))}),
		ev("Suspended", v1.Event{LastTimestamp: metav1.NewTime(t0.Add(3 * time.Second))}),
	)
	events, err := podEvents(t.Context(), kube, pod)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range events {
		got = append(got, e.Reason)
	}
	if diff := cmp.Diff([]string{"Scheduled", "Preempted", "Suspending", "Suspended"}, got); diff != "" {
		t.Errorf("order (-want +got):\n%s", diff)
	}
}

// The node's waiting pods in the order the controllers serve them: higher priority first, then
// the least GPU time; a manual suspension and other nodes' pods wait for nobody here.
func TestTurnOrder(t *testing.T) {
	suspended := func(name string, prio int32, reason kv1.CheckpointReason, node string) (*v1.Pod, *kv1.GPUCheckpoint) {
		p := running(name, "10Gi", kv1.PodSuspended)
		p.Spec.NodeName, p.Spec.Priority = node, ptr(prio)
		return p, &kv1.GPUCheckpoint{ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: name + "-suspend"},
			Spec:   kv1.GPUCheckpointSpec{PodName: name, PodUID: string(p.UID), Action: kv1.ActionSuspend, Reason: reason},
			Status: kv1.GPUCheckpointStatus{Phase: kv1.PhaseSucceeded, StartTime: &metav1.Time{Time: t0.Add(time.Minute)}}}
	}
	long, longCk := suspended("long", 100, kv1.ReasonTimeSlice, "n1") // 1m of GPU time
	high, highCk := suspended("high", 200, kv1.ReasonPreemption, "n1")
	manual, manualCk := suspended("manual", 300, kv1.ReasonManual, "n1")
	elsewhere, elsewhereCk := suspended("elsewhere", 300, kv1.ReasonPreemption, "n2")
	pending := util.MakePod().Namespace("ml").Name("pending").UID("pending-uid").Priority(100).GPU(1).GPUMemory("10Gi").Obj()
	pending.Status.NominatedNodeName = "n1"
	pending.CreationTimestamp = metav1.NewTime(t0.Add(2 * time.Minute)) // no GPU time yet
	kube := fake.NewClientset(long, high, manual, elsewhere, pending)
	kyb := kfake.NewSimpleClientset(longCk, highCk, manualCk, elsewhereCk)
	got, err := turnOrder(t.Context(), kube, kyb, "n1")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range got {
		names = append(names, e.Name+"/"+e.State)
	}
	if diff := cmp.Diff([]string{"high/Suspended", "pending/Pending", "long/Suspended"}, names); diff != "" {
		t.Errorf("turn order (-want +got):\n%s", diff)
	}
}

func TestGPUTimes(t *testing.T) {
	a := running("a", "20Gi", kv1.PodRunning)
	b := running("b", "30Gi", kv1.PodSuspended)
	now := t0.Add(10 * time.Minute)
	suspend := &kv1.GPUCheckpoint{Spec: kv1.GPUCheckpointSpec{PodName: "b", PodUID: "b-uid", Action: kv1.ActionSuspend, Reason: kv1.ReasonManual},
		Status: kv1.GPUCheckpointStatus{Phase: kv1.PhaseSucceeded, StartTime: &metav1.Time{Time: t0.Add(4 * time.Minute)}}}
	s := &snapshot{now: now, pods: []*v1.Pod{b, a}, checkpoints: map[string][]*kv1.GPUCheckpoint{"b-uid": {suspend}}}
	got := gpuTimes(s)
	want := []PodGPUTime{
		{Namespace: "ml", Name: "a", Node: "n1", State: "Running", GPUs: 1, GPUTime: metav1.Duration{Duration: 10 * time.Minute}, Share: 1},
		{Namespace: "ml", Name: "b", Node: "n1", State: "Suspended", GPUs: 1, GPUTime: metav1.Duration{Duration: 4 * time.Minute}, Share: 0.4, Suspensions: 1},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("gpuTimes (-want +got):\n%s", diff)
	}
}

func TestCheckpointNameFitsLongPods(t *testing.T) {
	pod := running(strings.Repeat("p", 253), "1Gi", kv1.PodRunning)
	ck := checkpointFor(pod, "suspend", kv1.GPUCheckpointSpec{})
	// The API server appends 5 characters to a generated name.
	if n := len(ck.GenerateName) + 5; n > 253 {
		t.Errorf("generated names are %d characters long, more than 253", n)
	}
}

// A pod the agent's storage tiers spilled shows the tier it is in.
func TestNodeViewSpilledPod(t *testing.T) {
	gn := gpuNode()
	gn.Status.SuspendedPods = append(gn.Status.SuspendedPods, kv1.PodGPUUsage{Namespace: "ml", Name: "c", Residency: kv1.InObjectStore, Bytes: 8 * gi, GPUs: []string{gpu1}})
	got := nodeView(gn)
	want := []SuspendedPod{{Namespace: "ml", Name: "c", ParkedBytes: 8 * gi, Tier: "ObjectStore"}}
	if diff := cmp.Diff(want, got.GPUs[1].Suspended); diff != "" {
		t.Errorf("suspended pods of gpu1 (-want +got):\n%s", diff)
	}
}
