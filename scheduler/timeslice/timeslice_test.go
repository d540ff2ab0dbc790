package timeslice

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/events"
	st "k8s.io/kubernetes/pkg/scheduler/testing"
	"k8s.io/utils/ptr"

	"github.com/kybernate/kybernate/apis/config"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/scheduler/internal/controllertest"
)

const gi = int64(1) << 30

var now = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

var args = config.ControllerConfiguration{
	TimeSliceQuantum:          metav1.Duration{Duration: time.Minute},
	TimeSliceMinQuantumFactor: 10,
}

func gpuNode(slots int32, sizesGiB ...int64) *kv1.GPUNode {
	gn := &kv1.GPUNode{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}
	gn.Spec.SlotsPerGPU = ptr.To(slots)
	for i, s := range sizesGiB {
		gn.Status.GPUs = append(gn.Status.GPUs, kv1.GPUStatus{UUID: fmt.Sprintf("GPU-%d", i), Index: int32(i), MemoryTotalBytes: s * gi})
	}
	return gn
}

// running is a pod on GPU-<gpu> of n1 that started ago before now and has been on it since.
func running(name string, prio int32, mem string, gpu int, ago time.Duration) *v1.Pod {
	p := st.MakePod().Namespace("ns").Name(name).UID(name).Priority(prio).Node("n1").
		Req(map[v1.ResourceName]string{kv1.ResourceGPU: "1"}).
		Annotation(kv1.AnnotationGPUMemory, mem).
		Annotation(kv1.AnnotationGPUs, fmt.Sprintf("GPU-%d", gpu)).
		Annotation(kv1.AnnotationState, string(kv1.PodRunning)).Obj()
	p.Status.Phase = v1.PodRunning
	p.Status.StartTime = &metav1.Time{Time: now.Add(-ago)}
	p.CreationTimestamp = metav1.Time{Time: now.Add(-ago)}
	return p
}

func suspended(p *v1.Pod) *v1.Pod {
	p.Annotations[kv1.AnnotationState] = string(kv1.PodSuspended)
	return p
}

// pending is a pod nominated to n1, created ago before now.
func pending(name string, prio int32, mem string, ago time.Duration) *v1.Pod {
	p := st.MakePod().Namespace("ns").Name(name).UID(name).Priority(prio).
		Req(map[v1.ResourceName]string{kv1.ResourceGPU: "1"}).
		Annotation(kv1.AnnotationGPUMemory, mem).Obj()
	p.Status.NominatedNodeName = "n1"
	p.CreationTimestamp = metav1.Time{Time: now.Add(-ago)}
	return p
}

// moved is a finished GPUCheckpoint of a pod: action from start to end, both ago before now.
func moved(pod string, action kv1.CheckpointAction, reason kv1.CheckpointReason, startAgo, endAgo time.Duration) *kv1.GPUCheckpoint {
	return &kv1.GPUCheckpoint{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%s-%d", pod, strings.ToLower(string(action)), startAgo), Namespace: "ns"},
		Spec:       kv1.GPUCheckpointSpec{PodName: pod, PodUID: pod, Action: action, Reason: reason},
		Status: kv1.GPUCheckpointStatus{
			Phase:          kv1.PhaseSucceeded,
			StartTime:      &metav1.Time{Time: now.Add(-startAgo)},
			CompletionTime: &metav1.Time{Time: now.Add(-endAgo)},
		},
	}
}

func failed(ck *kv1.GPUCheckpoint) *kv1.GPUCheckpoint {
	ck.Status.Phase = kv1.PhaseFailed
	return ck
}

func TestUsageOf(t *testing.T) {
	tests := []struct {
		name string
		pod  *v1.Pod
		cks  []*kv1.GPUCheckpoint
		want Usage
	}{
		{
			name: "running since its start",
			pod:  running("a", 1, "10Gi", 0, 5*time.Minute),
			want: Usage{Received: 5 * time.Minute, TurnStart: now.Add(-5 * time.Minute)},
		},
		{
			name: "not started",
			pod:  pending("a", 1, "10Gi", time.Minute),
		},
		{
			name: "suspended: GPU time until the suspension began",
			pod:  suspended(running("a", 1, "10Gi", 0, 10*time.Minute)),
			cks:  []*kv1.GPUCheckpoint{moved("a", kv1.ActionSuspend, kv1.ReasonTimeSlice, 4*time.Minute, 3*time.Minute)},
			want: Usage{Received: 6 * time.Minute, Completed: 6 * time.Minute},
		},
		{
			name: "resumed: the time suspended does not count; the move cost is measured",
			pod:  running("a", 1, "10Gi", 0, 10*time.Minute),
			cks: []*kv1.GPUCheckpoint{
				moved("a", kv1.ActionResume, kv1.ReasonTimeSlice, 2*time.Minute, time.Minute),
				moved("a", kv1.ActionSuspend, kv1.ReasonTimeSlice, 4*time.Minute, 3*time.Minute),
			},
			want: Usage{
				Received: 7 * time.Minute, Completed: 6 * time.Minute, TurnStart: now.Add(-time.Minute),
				MoveCost: 2 * time.Minute,
			},
		},
		{
			// Found by TestRotation: a preemption suspended the pod in the second its Resume
			// began (the API's time stamps have whole seconds), the Suspend came first in the
			// list, and the 21 s the preemptor held the GPU counted as the pod's GPU time.
			name: "a Resume and a Suspend that began in the same second: the one written last ended last",
			pod: func() *v1.Pod {
				// Being resumed again now.
				p := running("a", 1, "10Gi", 0, 10*time.Minute)
				p.Annotations[kv1.AnnotationState] = string(kv1.PodResuming)
				return p
			}(),
			cks: func() []*kv1.GPUCheckpoint {
				sus := moved("a", kv1.ActionSuspend, kv1.ReasonPreemption, 3*time.Minute, 3*time.Minute-time.Second)
				res := moved("a", kv1.ActionResume, kv1.ReasonTimeSlice, 3*time.Minute, 3*time.Minute)
				sus.Name, sus.ResourceVersion, res.ResourceVersion = "a-suspend-2", "725", "703"
				return []*kv1.GPUCheckpoint{
					sus, res,
					moved("a", kv1.ActionSuspend, kv1.ReasonTimeSlice, 4*time.Minute, 4*time.Minute),
				}
			}(),
			// Resident from its start until the first suspension (6 min), back for no time
			// until the resume now.
			want: Usage{Received: 6 * time.Minute, Completed: 6 * time.Minute, TurnStart: now, MoveCost: time.Second},
		},
		{
			name: "resumed, the Resume not seen yet: the turn began when the pod became resident",
			pod: func() *v1.Pod {
				p := running("a", 1, "10Gi", 0, 10*time.Minute)
				p.Status.Conditions = []v1.PodCondition{{Type: kv1.ConditionGPUResident, Status: v1.ConditionTrue,
					LastTransitionTime: metav1.Time{Time: now.Add(-20 * time.Second)}}}
				return p
			}(),
			cks:  []*kv1.GPUCheckpoint{moved("a", kv1.ActionSuspend, kv1.ReasonTimeSlice, 4*time.Minute, 3*time.Minute)},
			want: Usage{Received: 6*time.Minute + 20*time.Second, Completed: 6 * time.Minute, TurnStart: now.Add(-20 * time.Second)},
		},
		{
			name: "resumed, neither the Resume nor the condition seen yet: the turn begins now",
			pod:  running("a", 1, "10Gi", 0, 10*time.Minute),
			cks:  []*kv1.GPUCheckpoint{moved("a", kv1.ActionSuspend, kv1.ReasonTimeSlice, 4*time.Minute, 3*time.Minute)},
			want: Usage{Received: 6 * time.Minute, Completed: 6 * time.Minute, TurnStart: now},
		},
		{
			name: "a suspension stamped as begun before the resume before it ended: taken in the order they began",
			pod: func() *v1.Pod {
				p := running("a", 1, "10Gi", 0, time.Minute)
				p.Status.Conditions = []v1.PodCondition{{Type: kv1.ConditionGPUResident, Status: v1.ConditionTrue,
					LastTransitionTime: metav1.Time{Time: now.Add(-100 * time.Millisecond)}}}
				return p
			}(),
			cks: []*kv1.GPUCheckpoint{
				moved("a", kv1.ActionSuspend, kv1.ReasonTimeSlice, 40*time.Second, 39*time.Second),
				moved("a", kv1.ActionResume, kv1.ReasonTimeSlice, 22*time.Second, 20*time.Second),
				// Requested for a preemptor while the resume finished; its start is stamped 50 ms
				// before the resume's end. The resume that followed is not seen yet.
				moved("a", kv1.ActionSuspend, kv1.ReasonPreemption, 20*time.Second+50*time.Millisecond, 19*time.Second),
			},
			want: Usage{
				Received: 20*time.Second + 100*time.Millisecond, Completed: 20 * time.Second,
				TurnStart: now.Add(-100 * time.Millisecond), MoveCost: 3050 * time.Millisecond,
			},
		},
		{
			name: "failed moves change no GPU time; a failed turn suspension renews the turn",
			pod:  running("a", 1, "10Gi", 0, 10*time.Minute),
			cks: []*kv1.GPUCheckpoint{
				failed(moved("a", kv1.ActionSuspend, kv1.ReasonTimeSlice, 4*time.Minute, 3*time.Minute)),
				failed(moved("a", kv1.ActionSuspend, kv1.ReasonPreemption, 2*time.Minute, time.Minute)),
			},
			want: Usage{Received: 10 * time.Minute, TurnStart: now.Add(-10 * time.Minute), TurnRenewed: now.Add(-3 * time.Minute)},
		},
		{
			name: "another pod's GPUCheckpoint is ignored",
			pod:  running("a", 1, "10Gi", 0, 10*time.Minute),
			cks:  []*kv1.GPUCheckpoint{moved("b", kv1.ActionSuspend, kv1.ReasonTimeSlice, 4*time.Minute, 3*time.Minute)},
			want: Usage{Received: 10 * time.Minute, TurnStart: now.Add(-10 * time.Minute)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, UsageOf(tt.pod, tt.cks, now)); diff != "" {
				t.Errorf("usage (-want +got):\n%s", diff)
			}
		})
	}
}

func TestQuantum(t *testing.T) {
	pod := running("a", 1, "10Gi", 0, time.Hour)
	if got := Quantum(args, pod, Usage{}); got != time.Minute {
		t.Errorf("unmeasured: quantum %v, want the configured 1m", got)
	}
	if got := Quantum(args, pod, Usage{MoveCost: 9 * time.Second}); got != 90*time.Second {
		t.Errorf("9 s suspend+resume: quantum %v, want 10 x 9 s", got)
	}
	pod.Annotations[kv1.AnnotationMinRuntime] = "5m"
	if got := Quantum(args, pod, Usage{}); got != 5*time.Minute {
		t.Errorf("min-runtime 5m: quantum %v, want 5m", got)
	}
}

// outcome is what a sync did: the suspensions it requested (pod -> preemptor, "" for none) and
// the labels and GPU times it wrote.
type outcome struct {
	Suspended map[string]string
	Labels    map[string]string
	GPUTimes  map[string]string
	Recheck   time.Duration
}

func runSync(t *testing.T, gn *kv1.GPUNode, pods []*v1.Pod, cks []*kv1.GPUCheckpoint) outcome {
	t.Helper()
	env := controllertest.New(pods)
	client, kclient := env.Client, env.Kybernate
	c, err := New(client, kclient, env.Pods, env.GPUNodes, env.Checkpoints, events.NewFakeRecorder(100), args)
	if err != nil {
		t.Fatal(err)
	}
	c.now = func() time.Time { return now }
	env.Fill(t, pods, nil, []*kv1.GPUNode{gn}, cks)
	onNode, nominated := []*v1.Pod{}, []*v1.Pod{}
	for _, p := range pods {
		if p.Spec.NodeName != "" {
			onNode = append(onNode, p)
		} else {
			nominated = append(nominated, p)
		}
	}
	var recheck time.Duration
	if r := c.plan(gn, onNode, nominated, now).recheck; !r.IsZero() {
		recheck = r.Sub(now)
	}
	if err := c.sync(t.Context(), "n1"); err != nil {
		t.Fatal(err)
	}

	got := outcome{Suspended: map[string]string{}, Labels: map[string]string{}, GPUTimes: map[string]string{}, Recheck: recheck}
	for _, a := range client.Actions() {
		if p, ok := a.(k8stesting.PatchAction); ok {
			var patch struct {
				Metadata struct {
					Labels      map[string]*string `json:"labels"`
					Annotations map[string]string  `json:"annotations"`
				} `json:"metadata"`
			}
			if err := json.Unmarshal(p.GetPatch(), &patch); err != nil {
				t.Fatal(err)
			}
			if l, ok := patch.Metadata.Labels[kv1.LabelTimeSlice]; ok {
				got.Labels[p.GetName()] = ptr.Deref(l, "<removed>")
			}
			if g, ok := patch.Metadata.Annotations[kv1.AnnotationGPUTime]; ok {
				got.GPUTimes[p.GetName()] = g
			}
		}
	}
	for _, a := range kclient.Actions() {
		if cr, ok := a.(k8stesting.CreateAction); ok {
			ck := cr.GetObject().(*kv1.GPUCheckpoint)
			if ck.Spec.Action != kv1.ActionSuspend || ck.Spec.Reason != kv1.ReasonTimeSlice {
				t.Errorf("created a %s GPUCheckpoint with reason %s", ck.Spec.Action, ck.Spec.Reason)
			}
			preemptor := ""
			if ck.Spec.Preemptor != nil {
				preemptor = ck.Spec.Preemptor.Name
				if ck.Labels[kv1.LabelPreemptor] != string(ck.Spec.Preemptor.UID) {
					t.Errorf("GPUCheckpoint %s: label %s = %q, want the preemptor's UID", ck.Name, kv1.LabelPreemptor, ck.Labels[kv1.LabelPreemptor])
				}
			}
			got.Suspended[ck.Spec.PodName] = preemptor
		}
	}
	return got
}

func TestSync(t *testing.T) {
	tests := []struct {
		name string
		gn   *kv1.GPUNode
		pods []*v1.Pod
		cks  []*kv1.GPUCheckpoint
		want outcome
	}{
		{
			name: "quantum over: the running pod gives its GPU to the pending pod",
			gn:   gpuNode(4, 80),
			pods: []*v1.Pod{
				running("a", 1, "60Gi", 0, 70*time.Second),
				pending("b", 1, "60Gi", 50*time.Second),
				pending("c", 1, "60Gi", 40*time.Second),
			},
			want: outcome{
				Suspended: map[string]string{"a": "b"},
				Labels:    map[string]string{"a": "Running", "b": "Waiting", "c": "Waiting"},
				GPUTimes:  map[string]string{"a": "0s", "b": "0s", "c": "0s"},
			},
		},
		{
			name: "the suspension ending the turn failed: the pod's turn counts from the failure",
			gn:   gpuNode(4, 80),
			pods: []*v1.Pod{
				running("a", 1, "60Gi", 0, 10*time.Minute),
				pending("b", 1, "60Gi", 5*time.Minute),
			},
			cks: []*kv1.GPUCheckpoint{failed(moved("a", kv1.ActionSuspend, kv1.ReasonTimeSlice, 30*time.Second, 20*time.Second))},
			want: outcome{
				Suspended: map[string]string{},
				Labels:    map[string]string{"a": "Running", "b": "Waiting"},
				GPUTimes:  map[string]string{"a": "0s", "b": "0s"},
				Recheck:   40 * time.Second,
			},
		},
		{
			name: "a quantum after a failed suspension the turn ends again",
			gn:   gpuNode(4, 80),
			pods: []*v1.Pod{
				running("a", 1, "60Gi", 0, 10*time.Minute),
				pending("b", 1, "60Gi", 5*time.Minute),
			},
			cks: []*kv1.GPUCheckpoint{failed(moved("a", kv1.ActionSuspend, kv1.ReasonTimeSlice, 80*time.Second, 70*time.Second))},
			want: outcome{
				Suspended: map[string]string{"a": "b"},
				Labels:    map[string]string{"a": "Running", "b": "Waiting"},
				GPUTimes:  map[string]string{"a": "0s", "b": "0s"},
			},
		},
		{
			name: "quantum not over: nothing moves; look again when it is",
			gn:   gpuNode(4, 80),
			pods: []*v1.Pod{
				running("a", 1, "60Gi", 0, 20*time.Second),
				pending("b", 1, "60Gi", 10*time.Second),
			},
			want: outcome{
				Suspended: map[string]string{},
				Labels:    map[string]string{"a": "Running", "b": "Waiting"},
				GPUTimes:  map[string]string{"a": "0s", "b": "0s"},
				Recheck:   40 * time.Second,
			},
		},
		{
			name: "FIFO by GPU time: the suspended pod with the least GPU time is next",
			gn:   gpuNode(4, 80),
			pods: []*v1.Pod{
				// a: 3 min before, and 2 min of its current turn.
				running("a", 1, "60Gi", 0, 10*time.Minute),
				// b: 2 min; c: 4 min.
				suspended(running("b", 1, "60Gi", 0, 10*time.Minute)),
				suspended(running("c", 1, "60Gi", 0, 10*time.Minute)),
			},
			cks: []*kv1.GPUCheckpoint{
				moved("a", kv1.ActionSuspend, kv1.ReasonTimeSlice, 7*time.Minute, 7*time.Minute),
				moved("a", kv1.ActionResume, kv1.ReasonTimeSlice, 2*time.Minute, 2*time.Minute),
				moved("b", kv1.ActionSuspend, kv1.ReasonTimeSlice, 8*time.Minute, 8*time.Minute),
				moved("c", kv1.ActionSuspend, kv1.ReasonTimeSlice, 6*time.Minute, 6*time.Minute),
			},
			want: outcome{
				Suspended: map[string]string{"a": ""},
				Labels:    map[string]string{"a": "Running", "b": "Waiting", "c": "Waiting"},
				GPUTimes:  map[string]string{"a": "3m0s", "b": "2m0s", "c": "4m0s"},
			},
		},
		{
			name: "the running pod has had less GPU time than the waiting one: it keeps its turn",
			gn:   gpuNode(4, 80),
			pods: []*v1.Pod{
				running("a", 1, "60Gi", 0, 2*time.Minute),
				suspended(running("b", 1, "60Gi", 0, 10*time.Minute)),
			},
			cks: []*kv1.GPUCheckpoint{moved("b", kv1.ActionSuspend, kv1.ReasonTimeSlice, 5*time.Minute, 5*time.Minute)},
			want: outcome{
				Suspended: map[string]string{},
				Labels:    map[string]string{"a": "Running", "b": "Waiting"},
				GPUTimes:  map[string]string{"a": "0s", "b": "5m0s"},
				// a passes b's 5 min in 3 min.
				Recheck: 3*time.Minute + time.Millisecond,
			},
		},
		{
			name: "the floor: ten times the measured suspend+resume",
			gn:   gpuNode(4, 80),
			pods: []*v1.Pod{
				running("a", 1, "60Gi", 0, 10*time.Minute),
				pending("b", 1, "60Gi", time.Minute),
			},
			cks: []*kv1.GPUCheckpoint{
				// 6 s suspend + 6 s resume: the turn lasts 120 s; 100 s have passed.
				moved("a", kv1.ActionSuspend, kv1.ReasonTimeSlice, 5*time.Minute, 5*time.Minute-6*time.Second),
				moved("a", kv1.ActionResume, kv1.ReasonTimeSlice, 106*time.Second, 100*time.Second),
			},
			want: outcome{
				Suspended: map[string]string{},
				Labels:    map[string]string{"a": "Running", "b": "Waiting"},
				GPUTimes:  map[string]string{"a": "5m0s", "b": "0s"},
				Recheck:   20 * time.Second,
			},
		},
		{
			name: "preemption Never: the pod keeps its GPU",
			gn:   gpuNode(4, 80),
			pods: []*v1.Pod{
				func() *v1.Pod {
					p := running("a", 1, "60Gi", 0, time.Hour)
					p.Annotations[kv1.AnnotationPreemption] = "Never"
					return p
				}(),
				pending("b", 1, "60Gi", time.Minute),
			},
			want: outcome{Suspended: map[string]string{}, Labels: map[string]string{}, GPUTimes: map[string]string{}},
		},
		{
			name: "other priorities take no turns",
			gn:   gpuNode(4, 80),
			pods: []*v1.Pod{
				running("a", 1, "60Gi", 0, time.Hour),
				pending("hi", 10, "60Gi", time.Minute),
				suspended(running("lo", 0, "60Gi", 0, 2*time.Hour)),
			},
			cks:  []*kv1.GPUCheckpoint{moved("lo", kv1.ActionSuspend, kv1.ReasonPreemption, time.Hour, time.Hour)},
			want: outcome{Suspended: map[string]string{}, Labels: map[string]string{}, GPUTimes: map[string]string{}},
		},
		{
			name: "two small running pods give way to one large pending pod",
			gn:   gpuNode(4, 80),
			pods: []*v1.Pod{
				running("a", 1, "30Gi", 0, 2*time.Minute),
				running("b", 1, "30Gi", 0, 3*time.Minute),
				pending("big", 1, "70Gi", time.Minute),
			},
			want: outcome{
				Suspended: map[string]string{"a": "big", "b": "big"},
				Labels:    map[string]string{"a": "Running", "b": "Running", "big": "Waiting"},
				GPUTimes:  map[string]string{"a": "0s", "b": "0s", "big": "0s"},
			},
		},
		{
			name: "the one with the most GPU time gives way when one is enough",
			gn:   gpuNode(4, 80),
			pods: []*v1.Pod{
				running("a", 1, "40Gi", 0, 2*time.Minute),
				running("b", 1, "40Gi", 0, 3*time.Minute),
				pending("c", 1, "40Gi", time.Minute),
			},
			want: outcome{
				Suspended: map[string]string{"b": "c"},
				Labels:    map[string]string{"a": "Running", "b": "Running", "c": "Waiting"},
				GPUTimes:  map[string]string{"a": "0s", "b": "0s", "c": "0s"},
			},
		},
		{
			name: "a large waiting pod holds the GPU whose turns end last; a smaller one does not pass it",
			gn:   gpuNode(4, 80),
			pods: []*v1.Pod{
				running("x", 1, "40Gi", 0, 2*time.Minute),  // due
				running("y", 1, "40Gi", 0, 30*time.Second), // due in 30 s
				pending("big", 1, "80Gi", 2*time.Minute),
				pending("small", 1, "40Gi", time.Minute),
			},
			want: outcome{
				Suspended: map[string]string{},
				Labels:    map[string]string{"x": "Running", "y": "Running", "big": "Waiting", "small": "Waiting"},
				GPUTimes:  map[string]string{"x": "0s", "y": "0s", "big": "0s", "small": "0s"},
				Recheck:   30 * time.Second,
			},
		},
		{
			name: "the waiting pod resumes on another GPU of the node",
			gn:   gpuNode(4, 80, 80),
			pods: []*v1.Pod{
				running("a", 1, "60Gi", 1, 2*time.Minute),
				running("x", 1, "60Gi", 0, time.Minute),
				suspended(running("b", 1, "60Gi", 0, 10*time.Minute)),
			},
			cks: []*kv1.GPUCheckpoint{moved("b", kv1.ActionSuspend, kv1.ReasonTimeSlice, 9*time.Minute, 9*time.Minute)},
			want: outcome{
				Suspended: map[string]string{"a": ""},
				Labels:    map[string]string{"a": "Running", "b": "Waiting", "x": "Running"},
				GPUTimes:  map[string]string{"a": "0s", "b": "1m0s", "x": "0s"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := runSync(t, tt.gn, tt.pods, tt.cks)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("outcome (-want +got):\n%s", diff)
			}
		})
	}
}

// Labels a pod no longer needs are removed; labels that are right are not written again.
func TestSyncLabelsOnlyWhatChanged(t *testing.T) {
	alone := running("a", 1, "60Gi", 0, time.Hour)
	alone.Labels = map[string]string{kv1.LabelTimeSlice: kv1.TimeSliceRunning}
	got := runSync(t, gpuNode(4, 80), []*v1.Pod{alone}, nil)
	if diff := cmp.Diff(map[string]string{"a": "<removed>"}, got.Labels); diff != "" {
		t.Errorf("labels (-want +got):\n%s", diff)
	}

	settled := running("a", 1, "60Gi", 0, 20*time.Second)
	settled.Labels = map[string]string{kv1.LabelTimeSlice: kv1.TimeSliceRunning}
	settled.Annotations[kv1.AnnotationGPUTime] = "0s"
	waiting := pending("b", 1, "60Gi", 10*time.Second)
	waiting.Labels = map[string]string{kv1.LabelTimeSlice: kv1.TimeSliceWaiting}
	waiting.Annotations[kv1.AnnotationGPUTime] = "0s"
	got = runSync(t, gpuNode(4, 80), []*v1.Pod{settled, waiting}, nil)
	if len(got.Labels)+len(got.GPUTimes) != 0 {
		t.Errorf("patched %v %v, want nothing", got.Labels, got.GPUTimes)
	}
}

// A pod in the middle of a move keeps its label until the move ends: the label of a rotating
// pod does not flap through "removed".
func TestSyncKeepsTheLabelOfAPodInAMove(t *testing.T) {
	yielding := running("a", 1, "60Gi", 0, time.Hour)
	yielding.Labels = map[string]string{kv1.LabelTimeSlice: kv1.TimeSliceRunning}
	inFlight := moved("a", kv1.ActionSuspend, kv1.ReasonTimeSlice, time.Second, 0)
	inFlight.Status = kv1.GPUCheckpointStatus{Phase: kv1.PhaseInProgress}
	got := runSync(t, gpuNode(4, 80), []*v1.Pod{yielding}, []*kv1.GPUCheckpoint{inFlight})
	if len(got.Labels) != 0 {
		t.Errorf("labels patched %v while the pod's suspension runs, want none", got.Labels)
	}
}

// A pod suspended to spread onto another GPU of its node (the resume controller brings it back
// at once) is in a move too: it keeps its label and takes no turn.
func TestSyncKeepsTheLabelOfASpreadPod(t *testing.T) {
	spread := suspended(running("a", 1, "60Gi", 0, time.Hour))
	spread.Labels = map[string]string{kv1.LabelTimeSlice: kv1.TimeSliceRunning}
	other := running("b", 1, "60Gi", 1, 2*time.Hour)
	other.Labels = map[string]string{kv1.LabelTimeSlice: kv1.TimeSliceRunning}
	got := runSync(t, gpuNode(4, 80, 80), []*v1.Pod{spread, other},
		[]*kv1.GPUCheckpoint{moved("a", kv1.ActionSuspend, kv1.ReasonSpread, 2*time.Second, time.Second)})
	if diff := cmp.Diff(map[string]string{"b": "<removed>"}, got.Labels); diff != "" {
		t.Errorf("labels (-want +got):\n%s", diff)
	}
	if len(got.Suspended) != 0 {
		t.Errorf("suspended %v, want no turn for a pod suspended to spread", got.Suspended)
	}
}

// Between one pod's suspension for a turn and the next one's resume no pod of the rotation
// runs: the suspended pods keep their Waiting label (CI saw all three labels of a rotation
// removed at such a moment).
func TestSyncKeepsTheLabelsBetweenTurns(t *testing.T) {
	yielded := suspended(running("a", 1, "60Gi", 0, time.Hour))
	yielded.Labels = map[string]string{kv1.LabelTimeSlice: kv1.TimeSliceWaiting}
	next := suspended(running("b", 1, "60Gi", 0, 2*time.Hour))
	next.Labels = map[string]string{kv1.LabelTimeSlice: kv1.TimeSliceWaiting}
	got := runSync(t, gpuNode(4, 80), []*v1.Pod{yielded, next}, []*kv1.GPUCheckpoint{
		moved("a", kv1.ActionSuspend, kv1.ReasonTimeSlice, 2*time.Second, time.Second),
		moved("b", kv1.ActionSuspend, kv1.ReasonTimeSlice, time.Minute, time.Second)})
	if len(got.Labels) != 0 {
		t.Errorf("labels patched %v between two turns, want none", got.Labels)
	}
}

func TestTurnName(t *testing.T) {
	start := time.Unix(1700000000, 0)
	if got := turnName(&v1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "Train-1"}}, start); got != "train-1-turn-1700000000" {
		t.Errorf("turnName = %q", got)
	}
	long := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Name: strings.Repeat("x", 300)}}
	if got := turnName(long, start); len(got) > 253 {
		t.Errorf("turnName is %d characters long", len(got))
	}
}

func TestNextFirst(t *testing.T) {
	type w struct {
		name     string
		prio     int32
		received time.Duration
		since    time.Duration
	}
	ws := []w{
		{"served", 1, 5 * time.Minute, 10 * time.Minute},
		{"new", 1, 0, time.Minute},
		{"urgent", 5, 9 * time.Minute, 0},
		{"starved-late", 1, time.Minute, time.Minute},
		{"starved-early", 1, time.Minute, 2 * time.Minute},
	}
	sort.Slice(ws, func(i, j int) bool {
		return NextFirst(ws[i].prio, ws[j].prio, ws[i].received, ws[j].received, now.Add(-ws[i].since), now.Add(-ws[j].since)) < 0
	})
	var got []string
	for _, x := range ws {
		got = append(got, x.name)
	}
	want := []string{"urgent", "new", "starved-early", "starved-late", "served"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("order (-want +got):\n%s", diff)
	}
}
