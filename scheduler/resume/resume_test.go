package resume

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/events"
	"k8s.io/component-base/metrics/testutil"
	st "k8s.io/kubernetes/pkg/scheduler/testing"
	"k8s.io/utils/ptr"

	"github.com/kybernate/kybernate/apis/config"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/scheduler/internal/controllertest"
)

const gi = int64(1) << 30

var now = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

func gpuNode(slots int32, sizesGiB ...int64) *kv1.GPUNode {
	gn := &kv1.GPUNode{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}
	gn.Spec.SlotsPerGPU = ptr.To(slots)
	for i, s := range sizesGiB {
		gn.Status.GPUs = append(gn.Status.GPUs, kv1.GPUStatus{UUID: fmt.Sprintf("GPU-%d", i), Index: int32(i), MemoryTotalBytes: s * gi})
	}
	return gn
}

// margin sets the agent's restore margin in the GPUNode's status.
func margin(gn *kv1.GPUNode, bytes int64) *kv1.GPUNode {
	gn.Status.RestoreMarginBytes = bytes
	return gn
}

// pod builds a pod on n1 with one GPU of mem VRAM on GPU-<gpu>, in the given GPU state.
func pod(name string, prio int32, mem string, gpu int, state kv1.PodGPUState) *v1.Pod {
	p := st.MakePod().Namespace("ns").Name(name).UID(name).Priority(prio).Node("n1").
		Req(map[v1.ResourceName]string{kv1.ResourceGPU: "1"}).
		Annotation(kv1.AnnotationGPUMemory, mem).
		Annotation(kv1.AnnotationGPUs, fmt.Sprintf("GPU-%d", gpu)).Obj()
	if state != "" {
		p.Annotations[kv1.AnnotationState] = string(state)
	}
	p.ResourceVersion = "7"
	return p
}

// cpuOnly makes p a pod without GPUs: no GPU asked for, none assigned.
func cpuOnly(p *v1.Pod) *v1.Pod {
	for i := range p.Spec.Containers {
		delete(p.Spec.Containers[i].Resources.Requests, kv1.ResourceGPU)
		delete(p.Spec.Containers[i].Resources.Limits, kv1.ResourceGPU)
	}
	delete(p.Annotations, kv1.AnnotationGPUs)
	delete(p.Annotations, kv1.AnnotationGPUMemory)
	return p
}

// suspension is the Succeeded Suspend GPUCheckpoint of a pod, completed ago before now.
func suspension(podName string, reason kv1.CheckpointReason, ago time.Duration) *kv1.GPUCheckpoint {
	ck := &kv1.GPUCheckpoint{
		ObjectMeta: metav1.ObjectMeta{Name: podName + "-suspend", Namespace: "ns", UID: types.UID(podName + "-suspension-uid")},
		Spec:       kv1.GPUCheckpointSpec{PodName: podName, PodUID: podName, Action: kv1.ActionSuspend, Reason: reason},
		Status:     kv1.GPUCheckpointStatus{Phase: kv1.PhaseSucceeded, CompletionTime: &metav1.Time{Time: now.Add(-ago)}},
	}
	if reason == kv1.ReasonPreemption {
		ck.Spec.Preemptor = &kv1.PodReference{Namespace: "ns", Name: "hi"}
	}
	return ck
}

// parkable lets the node park gib GiB of GPU memory in host memory.
func parkable(gn *kv1.GPUNode, gib int64) *kv1.GPUNode {
	gn.Status.HostMemory.ParkableBytes = gib * gi
	return gn
}

// asleep gives an idle suspension the creation time of its completion.
func asleep(ck *kv1.GPUCheckpoint) *kv1.GPUCheckpoint {
	ck.CreationTimestamp = *ck.Status.CompletionTime
	return ck
}

// wake marks a pod as asked to wake ago before now.
func wake(p *v1.Pod, ago time.Duration) *v1.Pod {
	p.Annotations[kv1.AnnotationWakeRequested] = gpupod.FormatWakeRequested(now.Add(-ago))
	return p
}

func startedAgo(p *v1.Pod, ago time.Duration) *v1.Pod {
	p.Status.StartTime = &metav1.Time{Time: now.Add(-ago)}
	return p
}

// started gives a finished GPUCheckpoint the start time of its completion.
func started(ck *kv1.GPUCheckpoint) *kv1.GPUCheckpoint {
	ck.Status.StartTime = ck.Status.CompletionTime
	return ck
}

func resumeAttempt(podName string, n int, phase kv1.CheckpointPhase, ago time.Duration) *kv1.GPUCheckpoint {
	return &kv1.GPUCheckpoint{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-resume-%d", podName, n), Namespace: "ns",
			Labels: map[string]string{kv1.LabelSuspension: podName + "-suspension-uid"}},
		Spec:   kv1.GPUCheckpointSpec{PodName: podName, PodUID: podName, Action: kv1.ActionResume, Reason: kv1.ReasonPreemption},
		Status: kv1.GPUCheckpointStatus{Phase: phase, CompletionTime: &metav1.Time{Time: now.Add(-ago)}},
	}
}

// deferredAttempt is a Resume the agent's restore guard refused.
func deferredAttempt(podName string, n int, ago time.Duration) *kv1.GPUCheckpoint {
	ck := resumeAttempt(podName, n, kv1.PhaseFailed, ago)
	ck.Status.Conditions = []metav1.Condition{{Type: kv1.CheckpointComplete, Status: metav1.ConditionFalse, Reason: kv1.ReasonInsufficientGPUMemory}}
	return ck
}

// withFootprint records what the suspended pod used on its GPU before the suspension.
func withFootprint(ck *kv1.GPUCheckpoint, gib int64) *kv1.GPUCheckpoint {
	ck.Status.Footprint = []kv1.ProcessFootprint{{PID: 10, GPU: "GPU-0", Bytes: gib * gi}}
	return ck
}

type outcome struct {
	// Pods whose annotations were patched, with the patched annotations.
	Patched map[string]map[string]string
	// Resume GPUCheckpoints created: pod -> target GPUs ("" when in place).
	Resumed map[string]string
	// Suspend GPUCheckpoints created (for a woken pod): victim -> preemptor.
	Suspended map[string]string
}

func runSync(t *testing.T, gn *kv1.GPUNode, pods []*v1.Pod, cks []*kv1.GPUCheckpoint) outcome {
	t.Helper()
	return runSyncOn(t, gpupod.NewLedger(), gn, pods, cks)
}

// runSyncOn is runSync with the program's ledger.
func runSyncOn(t *testing.T, ledger *gpupod.Ledger, gn *kv1.GPUNode, pods []*v1.Pod, cks []*kv1.GPUCheckpoint) outcome {
	t.Helper()
	env := controllertest.New(pods)
	client, kclient := env.Client, env.Kybernate
	c, err := New(client, kclient, env.Pods, env.GPUNodes, env.Checkpoints, events.NewFakeRecorder(100), config.ControllerConfiguration{}, ledger)
	if err != nil {
		t.Fatal(err)
	}
	c.now = func() time.Time { return now }
	env.Fill(t, pods, nil, []*kv1.GPUNode{gn}, cks)
	if err := c.sync(t.Context(), "n1"); err != nil {
		t.Fatal(err)
	}

	got := outcome{Patched: map[string]map[string]string{}, Resumed: map[string]string{}}
	for _, a := range client.Actions() {
		if p, ok := a.(k8stesting.PatchAction); ok {
			var patch struct {
				Metadata struct {
					Annotations map[string]string `json:"annotations"`
				} `json:"metadata"`
			}
			if err := json.Unmarshal(p.GetPatch(), &patch); err != nil {
				t.Fatal(err)
			}
			got.Patched[p.GetName()] = patch.Metadata.Annotations
		}
	}
	for _, a := range kclient.Actions() {
		if cr, ok := a.(k8stesting.CreateAction); ok {
			ck := cr.GetObject().(*kv1.GPUCheckpoint)
			if ck.Spec.Action == kv1.ActionSuspend && ck.Spec.Reason == kv1.ReasonPreemption && ck.Spec.Preemptor != nil {
				if got.Suspended == nil {
					got.Suspended = map[string]string{}
				}
				got.Suspended[ck.Spec.PodName] = ck.Spec.Preemptor.Name
				continue
			}
			if ck.Spec.Action != kv1.ActionResume {
				t.Errorf("created a %s GPUCheckpoint", ck.Spec.Action)
			}
			targets := ""
			for i, g := range ck.Spec.TargetGPUs {
				if i > 0 {
					targets += ","
				}
				targets += g
			}
			got.Resumed[ck.Spec.PodName] = targets
		}
	}
	return got
}

func TestSync(t *testing.T) {
	resuming := func(gpu string) map[string]string {
		return map[string]string{kv1.AnnotationGPUs: gpu, kv1.AnnotationState: string(kv1.PodResuming)}
	}
	tests := []struct {
		name string
		gn   *kv1.GPUNode
		pods []*v1.Pod
		cks  []*kv1.GPUCheckpoint
		want outcome
	}{
		{
			name: "own GPU free: resume in place",
			gn:   gpuNode(2, 80),
			pods: []*v1.Pod{pod("low", 1, "40Gi", 0, kv1.PodSuspended)},
			cks:  []*kv1.GPUCheckpoint{suspension("low", kv1.ReasonPreemption, time.Minute)},
			want: outcome{Patched: map[string]map[string]string{"low": resuming("GPU-0")}, Resumed: map[string]string{"low": ""}},
		},
		{
			name: "own GPU taken, another free: resume there",
			gn:   gpuNode(2, 80, 80),
			pods: []*v1.Pod{
				pod("low", 1, "60Gi", 0, kv1.PodSuspended),
				pod("hi", 10, "60Gi", 0, ""),
			},
			cks:  []*kv1.GPUCheckpoint{suspension("low", kv1.ReasonPreemption, time.Minute)},
			want: outcome{Patched: map[string]map[string]string{"low": resuming("GPU-1")}, Resumed: map[string]string{"low": "GPU-1"}},
		},
		{
			name: "suspended to spread: back onto the unused GPU, though its own has room",
			gn:   gpuNode(2, 80, 80),
			pods: []*v1.Pod{
				pod("moved", 1, "20Gi", 0, kv1.PodSuspended),
				pod("stays", 1, "40Gi", 0, ""),
			},
			cks:  []*kv1.GPUCheckpoint{suspension("moved", kv1.ReasonSpread, time.Second)},
			want: outcome{Patched: map[string]map[string]string{"moved": resuming("GPU-1")}, Resumed: map[string]string{"moved": "GPU-1"}},
		},
		{
			name: "suspended to spread, the unused GPU taken since: the emptiest GPU that holds it",
			gn:   gpuNode(2, 80, 80),
			pods: []*v1.Pod{
				pod("moved", 1, "20Gi", 0, kv1.PodSuspended),
				pod("stays", 1, "40Gi", 0, ""),
				pod("new", 1, "50Gi", 1, ""),
			},
			cks:  []*kv1.GPUCheckpoint{suspension("moved", kv1.ReasonSpread, time.Second)},
			want: outcome{Patched: map[string]map[string]string{"moved": resuming("GPU-0")}, Resumed: map[string]string{"moved": ""}},
		},
		{
			name: "room to the byte but not for the agent's restore margin: it waits",
			gn:   margin(gpuNode(2, 80), 256<<20),
			pods: []*v1.Pod{
				pod("low", 1, "30Gi", 0, kv1.PodSuspended),
				pod("hi", 10, "50Gi", 0, ""),
			},
			cks:  []*kv1.GPUCheckpoint{suspension("low", kv1.ReasonPreemption, time.Minute)},
			want: outcome{Patched: map[string]map[string]string{}, Resumed: map[string]string{}},
		},
		{
			name: "room for the memory and the restore margin: resume",
			gn:   margin(gpuNode(2, 80), 256<<20),
			pods: []*v1.Pod{
				pod("low", 1, "30Gi", 0, kv1.PodSuspended),
				pod("hi", 10, "49Gi", 0, ""),
			},
			cks:  []*kv1.GPUCheckpoint{suspension("low", kv1.ReasonPreemption, time.Minute)},
			want: outcome{Patched: map[string]map[string]string{"low": resuming("GPU-0")}, Resumed: map[string]string{"low": ""}},
		},
		{
			name: "no room anywhere",
			gn:   gpuNode(2, 80),
			pods: []*v1.Pod{
				pod("low", 1, "60Gi", 0, kv1.PodSuspended),
				pod("hi", 10, "60Gi", 0, ""),
			},
			cks:  []*kv1.GPUCheckpoint{suspension("low", kv1.ReasonPreemption, time.Minute)},
			want: outcome{Patched: map[string]map[string]string{}, Resumed: map[string]string{}},
		},
		{
			name: "manual suspensions stay",
			gn:   gpuNode(2, 80),
			pods: []*v1.Pod{pod("low", 1, "40Gi", 0, kv1.PodSuspended)},
			cks:  []*kv1.GPUCheckpoint{suspension("low", kv1.ReasonManual, time.Minute)},
			want: outcome{Patched: map[string]map[string]string{}, Resumed: map[string]string{}},
		},
		{
			name: "idle sleep without a wake stays",
			gn:   gpuNode(2, 80),
			pods: []*v1.Pod{pod("llm", 1, "40Gi", 0, kv1.PodSuspended)},
			cks:  []*kv1.GPUCheckpoint{asleep(suspension("llm", kv1.ReasonIdle, time.Minute))},
			want: outcome{Patched: map[string]map[string]string{}, Resumed: map[string]string{}},
		},
		{
			name: "idle sleep with a wake asked for before it stays",
			gn:   gpuNode(2, 80),
			pods: []*v1.Pod{wake(pod("llm", 1, "40Gi", 0, kv1.PodSuspended), 2*time.Minute)},
			cks:  []*kv1.GPUCheckpoint{asleep(suspension("llm", kv1.ReasonIdle, time.Minute))},
			want: outcome{Patched: map[string]map[string]string{}, Resumed: map[string]string{}},
		},
		{
			name: "idle sleep with a wake asked for since: resume",
			gn:   gpuNode(2, 80),
			pods: []*v1.Pod{wake(pod("llm", 1, "40Gi", 0, kv1.PodSuspended), time.Second)},
			cks:  []*kv1.GPUCheckpoint{asleep(suspension("llm", kv1.ReasonIdle, time.Minute))},
			want: outcome{Patched: map[string]map[string]string{"llm": resuming("GPU-0")}, Resumed: map[string]string{"llm": ""}},
		},
		{
			name: "pod without GPUs asleep, a wake asked for: resumed at once, on a full node too",
			gn:   gpuNode(1, 80),
			pods: []*v1.Pod{
				wake(cpuOnly(pod("llm", 1, "", 0, kv1.PodSuspended)), time.Second),
				pod("full", 100, "80Gi", 0, kv1.PodRunning),
			},
			cks:  []*kv1.GPUCheckpoint{asleep(suspension("llm", kv1.ReasonIdle, time.Minute))},
			want: outcome{Patched: map[string]map[string]string{"llm": resuming("")}, Resumed: map[string]string{"llm": ""}},
		},
		{
			name: "pod without GPUs asleep, no wake asked for: stays",
			gn:   gpuNode(1, 80),
			pods: []*v1.Pod{cpuOnly(pod("llm", 1, "", 0, kv1.PodSuspended))},
			cks:  []*kv1.GPUCheckpoint{asleep(suspension("llm", kv1.ReasonIdle, time.Minute))},
			want: outcome{Patched: map[string]map[string]string{}, Resumed: map[string]string{}},
		},
		{
			name: "woken pod without room: a lower-priority pod is suspended for it",
			gn:   parkable(gpuNode(2, 80), 100),
			pods: []*v1.Pod{
				wake(pod("llm", 10, "60Gi", 0, kv1.PodSuspended), time.Second),
				startedAgo(pod("batch", 1, "60Gi", 0, ""), time.Hour),
			},
			cks:  []*kv1.GPUCheckpoint{asleep(suspension("llm", kv1.ReasonIdle, time.Minute))},
			want: outcome{Patched: map[string]map[string]string{}, Resumed: map[string]string{}, Suspended: map[string]string{"batch": "llm"}},
		},
		{
			name: "woken pod without room: higher-priority pods stay",
			gn:   parkable(gpuNode(2, 80), 100),
			pods: []*v1.Pod{
				wake(pod("llm", 10, "60Gi", 0, kv1.PodSuspended), time.Second),
				startedAgo(pod("train", 20, "60Gi", 0, ""), time.Hour),
			},
			cks:  []*kv1.GPUCheckpoint{asleep(suspension("llm", kv1.ReasonIdle, time.Minute))},
			want: outcome{Patched: map[string]map[string]string{}, Resumed: map[string]string{}},
		},
		{
			name: "sleeping pod without a wake and without room: nobody is suspended",
			gn:   parkable(gpuNode(2, 80), 100),
			pods: []*v1.Pod{
				pod("llm", 10, "60Gi", 0, kv1.PodSuspended),
				startedAgo(pod("batch", 1, "60Gi", 0, ""), time.Hour),
			},
			cks:  []*kv1.GPUCheckpoint{asleep(suspension("llm", kv1.ReasonIdle, time.Minute))},
			want: outcome{Patched: map[string]map[string]string{}, Resumed: map[string]string{}},
		},
		{
			name: "woken pod whose victim is being suspended: no second request",
			gn:   parkable(gpuNode(4, 80), 100),
			pods: []*v1.Pod{
				wake(pod("llm", 10, "60Gi", 0, kv1.PodSuspended), time.Second),
				// Its suspension is not started yet: still Running, it would be chosen again.
				startedAgo(pod("batch", 1, "60Gi", 0, ""), time.Hour),
			},
			cks: []*kv1.GPUCheckpoint{
				asleep(suspension("llm", kv1.ReasonIdle, time.Minute)),
				{
					ObjectMeta: metav1.ObjectMeta{Name: "batch-suspend-llm", Namespace: "ns"},
					Spec: kv1.GPUCheckpointSpec{PodName: "batch", PodUID: "batch", Action: kv1.ActionSuspend, Reason: kv1.ReasonPreemption,
						Preemptor: &kv1.PodReference{Namespace: "ns", Name: "llm", UID: "llm"}},
					Status: kv1.GPUCheckpointStatus{Phase: kv1.PhasePending},
				},
			},
			want: outcome{Patched: map[string]map[string]string{}, Resumed: map[string]string{}},
		},
		{
			name: "room for one: the higher priority first",
			gn:   gpuNode(4, 80),
			pods: []*v1.Pod{
				pod("prio1", 1, "60Gi", 0, kv1.PodSuspended),
				pod("prio5", 5, "60Gi", 0, kv1.PodSuspended),
			},
			cks: []*kv1.GPUCheckpoint{
				suspension("prio1", kv1.ReasonPreemption, time.Hour),
				suspension("prio5", kv1.ReasonPreemption, time.Minute),
			},
			want: outcome{Patched: map[string]map[string]string{"prio5": resuming("GPU-0")}, Resumed: map[string]string{"prio5": ""}},
		},
		{
			name: "room for one: equal priority, first suspended first",
			gn:   gpuNode(4, 80),
			pods: []*v1.Pod{
				pod("later", 1, "60Gi", 0, kv1.PodSuspended),
				pod("earlier", 1, "60Gi", 0, kv1.PodSuspended),
			},
			cks: []*kv1.GPUCheckpoint{
				suspension("later", kv1.ReasonPreemption, time.Minute),
				suspension("earlier", kv1.ReasonPreemption, time.Hour),
			},
			want: outcome{Patched: map[string]map[string]string{"earlier": resuming("GPU-0")}, Resumed: map[string]string{"earlier": ""}},
		},
		{
			name: "room for one: equal priority, the least GPU time first",
			gn:   gpuNode(4, 80),
			pods: []*v1.Pod{
				// Started 10 min ago, suspended 2 min ago: 8 min of GPU time.
				startedAgo(pod("served", 1, "60Gi", 0, kv1.PodSuspended), 10*time.Minute),
				// Started 3 min ago, suspended 1 min ago (later): 2 min of GPU time.
				startedAgo(pod("starved", 1, "60Gi", 0, kv1.PodSuspended), 3*time.Minute),
			},
			cks: []*kv1.GPUCheckpoint{
				started(suspension("served", kv1.ReasonTimeSlice, 2*time.Minute)),
				started(suspension("starved", kv1.ReasonTimeSlice, time.Minute)),
			},
			want: outcome{Patched: map[string]map[string]string{"starved": resuming("GPU-0")}, Resumed: map[string]string{"starved": ""}},
		},
		{
			name: "GPUs a nominated preemptor needs are held back",
			gn:   gpuNode(4, 80),
			pods: []*v1.Pod{
				pod("low", 1, "60Gi", 0, kv1.PodSuspended),
				func() *v1.Pod {
					p := pod("hi", 10, "60Gi", 0, "")
					p.Spec.NodeName = ""
					delete(p.Annotations, kv1.AnnotationGPUs)
					p.Status.NominatedNodeName = "n1"
					return p
				}(),
			},
			cks:  []*kv1.GPUCheckpoint{suspension("low", kv1.ReasonPreemption, time.Minute)},
			want: outcome{Patched: map[string]map[string]string{}, Resumed: map[string]string{}},
		},
		{
			// Found by the kill storm: the preemptor's victim still held its memory, so the
			// preemptor did not fit yet and the memory freed so far went to a suspended pod.
			name: "memory a nominated preemptor waits for goes to no pod of its priority or lower",
			gn:   gpuNode(4, 80),
			pods: []*v1.Pod{
				pod("victim", 1, "50Gi", 0, kv1.PodSuspending),
				pod("small", 1, "20Gi", 0, kv1.PodSuspended),
				pod("peer", 10, "20Gi", 0, kv1.PodSuspended),
				nominatedPod("hi", 10, "80Gi"),
			},
			cks:  []*kv1.GPUCheckpoint{suspension("small", kv1.ReasonTimeSlice, time.Minute), suspension("peer", kv1.ReasonPreemption, time.Minute)},
			want: outcome{Patched: map[string]map[string]string{}, Resumed: map[string]string{}},
		},
		{
			name: "a pod of higher priority than a waiting preemptor resumes",
			gn:   gpuNode(4, 80),
			pods: []*v1.Pod{
				pod("victim", 1, "50Gi", 0, kv1.PodSuspending),
				pod("top", 20, "20Gi", 0, kv1.PodSuspended),
				nominatedPod("hi", 10, "80Gi"),
			},
			cks:  []*kv1.GPUCheckpoint{suspension("top", kv1.ReasonPreemption, time.Minute)},
			want: outcome{Patched: map[string]map[string]string{"top": resuming("GPU-0")}, Resumed: map[string]string{"top": ""}},
		},
		{
			// Found by TestRotation: the agent marks a pod Suspended before it ends the
			// GPUCheckpoint. Read against its previous suspension (resumed already), the pod
			// that just gave up its turn looked like the longest waiting and came back at once.
			name: "a pod whose suspension has not ended yet is no candidate",
			gn:   gpuNode(4, 80),
			pods: []*v1.Pod{
				pod("yielded", 1, "60Gi", 0, kv1.PodSuspended),
				pod("next", 1, "60Gi", 0, kv1.PodSuspended),
			},
			cks: []*kv1.GPUCheckpoint{
				suspension("yielded", kv1.ReasonTimeSlice, time.Hour),
				resumeAttempt("yielded", 1, kv1.PhaseSucceeded, time.Minute),
				inFlightSuspension("yielded"),
				suspension("next", kv1.ReasonTimeSlice, 30*time.Minute),
			},
			want: outcome{Patched: map[string]map[string]string{"next": resuming("GPU-0")}, Resumed: map[string]string{"next": ""}},
		},
		{
			name: "a suspension already resumed is over: the pod's next one is not seen yet",
			gn:   gpuNode(4, 80),
			pods: []*v1.Pod{
				pod("yielded", 1, "60Gi", 0, kv1.PodSuspended),
				pod("next", 1, "60Gi", 0, kv1.PodSuspended),
			},
			cks: []*kv1.GPUCheckpoint{
				suspension("yielded", kv1.ReasonTimeSlice, time.Hour),
				resumeAttempt("yielded", 1, kv1.PhaseSucceeded, time.Minute),
				suspension("next", kv1.ReasonTimeSlice, 30*time.Minute),
			},
			want: outcome{Patched: map[string]map[string]string{"next": resuming("GPU-0")}, Resumed: map[string]string{"next": ""}},
		},
		{
			name: "a resume in flight is not repeated",
			gn:   gpuNode(2, 80),
			pods: []*v1.Pod{pod("low", 1, "40Gi", 0, kv1.PodSuspended)},
			cks: []*kv1.GPUCheckpoint{
				suspension("low", kv1.ReasonPreemption, time.Minute),
				resumeAttempt("low", 1, kv1.PhaseInProgress, 0),
			},
			want: outcome{Patched: map[string]map[string]string{}, Resumed: map[string]string{}},
		},
		{
			name: "a failed resume is retried only after its backoff",
			gn:   gpuNode(2, 80),
			pods: []*v1.Pod{pod("low", 1, "40Gi", 0, kv1.PodSuspended)},
			cks: []*kv1.GPUCheckpoint{
				suspension("low", kv1.ReasonPreemption, time.Minute),
				resumeAttempt("low", 1, kv1.PhaseFailed, time.Second),
			},
			want: outcome{Patched: map[string]map[string]string{}, Resumed: map[string]string{}},
		},
		{
			name: "a failed resume is retried after its backoff",
			gn:   gpuNode(2, 80),
			pods: []*v1.Pod{pod("low", 1, "40Gi", 0, kv1.PodSuspended)},
			cks: []*kv1.GPUCheckpoint{
				suspension("low", kv1.ReasonPreemption, time.Minute),
				resumeAttempt("low", 1, kv1.PhaseFailed, time.Minute),
			},
			want: outcome{Patched: map[string]map[string]string{"low": resuming("GPU-0")}, Resumed: map[string]string{"low": ""}},
		},
		{
			name: "five failed resumes: the pod stays suspended",
			gn:   gpuNode(2, 80),
			pods: []*v1.Pod{pod("low", 1, "40Gi", 0, kv1.PodSuspended)},
			cks: []*kv1.GPUCheckpoint{
				suspension("low", kv1.ReasonPreemption, time.Hour),
				resumeAttempt("low", 1, kv1.PhaseFailed, time.Hour), resumeAttempt("low", 2, kv1.PhaseFailed, time.Hour),
				resumeAttempt("low", 3, kv1.PhaseFailed, time.Hour), resumeAttempt("low", 4, kv1.PhaseFailed, time.Hour),
				resumeAttempt("low", 5, kv1.PhaseFailed, time.Hour),
			},
			want: outcome{Patched: map[string]map[string]string{}, Resumed: map[string]string{}},
		},
		{
			name: "deferred resumes are a wait, not failures: tried again without limit",
			gn:   gpuNode(2, 80),
			pods: []*v1.Pod{pod("low", 1, "40Gi", 0, kv1.PodSuspended)},
			cks: []*kv1.GPUCheckpoint{
				suspension("low", kv1.ReasonPreemption, time.Hour),
				deferredAttempt("low", 1, time.Hour), deferredAttempt("low", 2, time.Hour), deferredAttempt("low", 3, time.Hour),
				deferredAttempt("low", 4, time.Hour), deferredAttempt("low", 5, time.Hour), deferredAttempt("low", 6, 3*time.Minute),
			},
			want: outcome{Patched: map[string]map[string]string{"low": resuming("GPU-0")}, Resumed: map[string]string{"low": ""}},
		},
		{
			name: "a deferred resume waits at most maxDeferredWait",
			gn:   gpuNode(2, 80),
			pods: []*v1.Pod{pod("low", 1, "40Gi", 0, kv1.PodSuspended)},
			cks: []*kv1.GPUCheckpoint{
				suspension("low", kv1.ReasonPreemption, time.Hour),
				deferredAttempt("low", 1, time.Hour), deferredAttempt("low", 2, time.Hour), deferredAttempt("low", 3, time.Hour),
				deferredAttempt("low", 4, time.Hour), deferredAttempt("low", 5, time.Hour), deferredAttempt("low", 6, time.Minute),
			},
			want: outcome{Patched: map[string]map[string]string{}, Resumed: map[string]string{}},
		},
		{
			name: "the recorded footprint counts where larger than declared: no room",
			gn:   gpuNode(2, 80),
			pods: []*v1.Pod{
				pod("low", 1, "30Gi", 0, kv1.PodSuspended),
				pod("hi", 10, "40Gi", 0, ""),
			},
			// 30Gi declared fit the 40Gi left; the 45Gi it used before do not.
			cks:  []*kv1.GPUCheckpoint{withFootprint(suspension("low", kv1.ReasonPreemption, time.Minute), 45)},
			want: outcome{Patched: map[string]map[string]string{}, Resumed: map[string]string{}},
		},
		{
			name: "a footprint smaller than declared changes nothing",
			gn:   gpuNode(2, 80),
			pods: []*v1.Pod{
				pod("low", 1, "30Gi", 0, kv1.PodSuspended),
				pod("hi", 10, "40Gi", 0, ""),
			},
			cks:  []*kv1.GPUCheckpoint{withFootprint(suspension("low", kv1.ReasonPreemption, time.Minute), 20)},
			want: outcome{Patched: map[string]map[string]string{"low": resuming("GPU-0")}, Resumed: map[string]string{"low": ""}},
		},
		{
			name: "running pods are left alone",
			gn:   gpuNode(2, 80),
			pods: []*v1.Pod{pod("busy", 1, "40Gi", 0, kv1.PodRunning)},
			cks:  []*kv1.GPUCheckpoint{suspension("busy", kv1.ReasonPreemption, time.Hour)},
			want: outcome{Patched: map[string]map[string]string{}, Resumed: map[string]string{}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := runSync(t, tt.gn, tt.pods, tt.cks)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestResumeName(t *testing.T) {
	ck := &kv1.GPUCheckpoint{ObjectMeta: metav1.ObjectMeta{UID: "0123456789"}}
	if got := resumeName(st.MakePod().Name("p").Obj(), ck, 2); got != "p-resume-01234567-3" {
		t.Errorf("resumeName = %q", got)
	}
}

// A pod that changed between the controller's look and its Resuming mark (a conflict) is not
// dropped: the sync fails, so that the node is synced again from the fresh pod. Found by the
// kill storm: another controller's annotation patch, which does not queue the node by itself,
// left a pod suspended on a free GPU.
func TestSyncRetriesAfterConflict(t *testing.T) {
	pods := []*v1.Pod{pod("a", 100, "10Gi", 0, kv1.PodSuspended)}
	env := controllertest.New(pods)
	c, err := New(env.Client, env.Kybernate, env.Pods, env.GPUNodes, env.Checkpoints, events.NewFakeRecorder(100), config.ControllerConfiguration{}, gpupod.NewLedger())
	if err != nil {
		t.Fatal(err)
	}
	c.now = func() time.Time { return now }
	env.Fill(t, pods, nil, []*kv1.GPUNode{gpuNode(2, 80)}, []*kv1.GPUCheckpoint{suspension("a", kv1.ReasonPreemption, time.Minute)})
	conflicts := 1
	env.Client.PrependReactor("patch", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		if conflicts == 0 {
			return false, nil, nil
		}
		conflicts--
		return true, nil, apierrors.NewConflict(schema.GroupResource{Resource: "pods"}, "a", errors.New("the object has been modified"))
	})
	if err := c.sync(t.Context(), "n1"); !apierrors.IsConflict(err) {
		t.Fatalf("sync after a conflict: %v, want the conflict (the node is retried)", err)
	}
	// The failed mark released the ledger's hold on the memory: the retry resumes the pod.
	if err := c.sync(t.Context(), "n1"); err != nil {
		t.Fatalf("second sync: %v", err)
	}
	var resumed []string
	for _, a := range env.Kybernate.Actions() {
		if cr, ok := a.(k8stesting.CreateAction); ok {
			resumed = append(resumed, cr.GetObject().(*kv1.GPUCheckpoint).Spec.PodName)
		}
	}
	if diff := cmp.Diff([]string{"a"}, resumed); diff != "" {
		t.Errorf("resumed (-want +got):\n%s", diff)
	}
}

// inFlightSuspension is a Suspend GPUCheckpoint of a pod that the agent has not ended yet.
func inFlightSuspension(podName string) *kv1.GPUCheckpoint {
	return &kv1.GPUCheckpoint{
		ObjectMeta: metav1.ObjectMeta{Name: podName + "-suspend-2", Namespace: "ns", UID: types.UID(podName + "-suspension-2-uid")},
		Spec:       kv1.GPUCheckpointSpec{PodName: podName, PodUID: podName, Action: kv1.ActionSuspend, Reason: kv1.ReasonTimeSlice},
		Status:     kv1.GPUCheckpointStatus{Phase: kv1.PhaseInProgress, StartTime: &metav1.Time{Time: now.Add(-time.Second)}},
	}
}

// nominatedPod is an unbound pod nominated to n1 (a preemptor waiting for its victims).
func nominatedPod(name string, prio int32, mem string) *v1.Pod {
	p := pod(name, prio, mem, 0, "")
	p.Spec.NodeName = ""
	delete(p.Annotations, kv1.AnnotationGPUs)
	p.Status.NominatedNodeName = "n1"
	return p
}

// TestDeferredEvent: a deferred resume tells the pod why it waits, and counts.
func TestDeferredEvent(t *testing.T) {
	low := pod("low", 1, "40Gi", 0, kv1.PodSuspended)
	env := controllertest.New([]*v1.Pod{low})
	rec := events.NewFakeRecorder(10)
	c, err := New(env.Client, env.Kybernate, env.Pods, env.GPUNodes, env.Checkpoints, rec, config.ControllerConfiguration{}, gpupod.NewLedger())
	if err != nil {
		t.Fatal(err)
	}
	env.Fill(t, []*v1.Pod{low}, nil, nil, nil)
	ck := deferredAttempt("low", 1, 0)
	ck.Status.NodeName = "n1"
	RegisterMetrics()
	before, _ := testutil.GetCounterMetricValue(resumesDeferred)
	c.deferred(ck)
	select {
	case e := <-rec.Events:
		if !strings.HasPrefix(e, "Normal ResumeDeferred Node n1 has less free GPU memory than the pod needs to be restored") {
			t.Errorf("event %q", e)
		}
	default:
		t.Fatal("no Event")
	}
	if after, _ := testutil.GetCounterMetricValue(resumesDeferred); after-before != 1 {
		t.Errorf("deferred resumes went from %v to %v, want one more", before, after)
	}
	// Another pod of the same name gets nothing.
	ck.Spec.PodUID = "other"
	c.deferred(ck)
	if len(rec.Events) != 0 {
		t.Error("an Event for a pod the GPUCheckpoint is not for")
	}
}

// The resume controller and the scheduler share one ledger: memory the scheduler reserved for a
// pod it is binding (no informer shows it yet) goes to no suspended pod, and a resume holds its
// memory there until the pod informer shows the pod Resuming.
func TestSyncSharesTheLedger(t *testing.T) {
	gn := gpuNode(4, 80)
	low := pod("low", 1, "60Gi", 0, kv1.PodSuspended)
	cks := []*kv1.GPUCheckpoint{suspension("low", kv1.ReasonPreemption, time.Minute)}

	ledger := gpupod.NewLedger()
	binding := pod("new", 1, "60Gi", 0, "")
	ledger.Reserve(gpupod.OwnerScheduler, binding, 0)
	got := runSyncOn(t, ledger, gn, []*v1.Pod{low}, cks)
	if len(got.Resumed) != 0 {
		t.Errorf("resumed %v onto memory the scheduler reserved for a pod it is binding", got.Resumed)
	}

	ledger.Release(binding.UID)
	got = runSyncOn(t, ledger, gn, []*v1.Pod{low}, cks)
	if diff := cmp.Diff(map[string]string{"low": ""}, got.Resumed); diff != "" {
		t.Errorf("resumed (-want +got):\n%s", diff)
	}
	node, gpus, ok := ledger.Placed(low.UID)
	if !ok || node != "n1" || !cmp.Equal(gpus, []string{"GPU-0"}) {
		t.Errorf("ledger holds %v %v %v for the resumed pod, want n1 [GPU-0] true", node, gpus, ok)
	}
	// The scheduler's view, which still shows the pod Suspended, counts its memory.
	acc := gpupod.NewAccounting(gn, ledger.Pods("n1", []*v1.Pod{low}))
	if acc.Fits(gpupod.Demand{Count: 1, Bytes: 60 * gi}, []string{"GPU-0"}) {
		t.Error("the scheduler's accounting has room for 60Gi beside the pod being resumed")
	}
}

// Room that frees without an event (a reservation of the scheduler's that runs out unseen) is
// found by the periodic resync: the pod suspended beside it resumes although nothing happened.
func TestRunResyncsWithoutEvents(t *testing.T) {
	gn := gpuNode(4, 80)
	low := pod("low", 1, "60Gi", 0, kv1.PodSuspended)
	ledger := gpupod.NewLedger()
	// Reserved for a pod the informer never shows: it counts until its time to live ends.
	const ttl = 300 * time.Millisecond
	reserved := time.Now()
	ledger.Reserve(gpupod.OwnerScheduler, pod("never-shown", 1, "60Gi", 0, ""), ttl)
	env := controllertest.New([]*v1.Pod{low})
	c, err := New(env.Client, env.Kybernate, env.Pods, env.GPUNodes, env.Checkpoints, events.NewFakeRecorder(100), config.ControllerConfiguration{}, ledger)
	if err != nil {
		t.Fatal(err)
	}
	c.now = func() time.Time { return now }
	c.resync = 50 * time.Millisecond
	env.Fill(t, []*v1.Pod{low}, nil, []*kv1.GPUNode{gn}, []*kv1.GPUCheckpoint{suspension("low", kv1.ReasonPreemption, time.Minute)})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		c.Run(ctx, 1)
		close(done)
	}()
	defer func() {
		cancel()
		c.ShutDown()
		<-done
	}()
	resumed := func() bool {
		for _, a := range env.Kybernate.Actions() {
			if cr, ok := a.(k8stesting.CreateAction); ok && cr.GetObject().(*kv1.GPUCheckpoint).Spec.Action == kv1.ActionResume {
				return true
			}
		}
		return false
	}
	deadline := time.Now().Add(10 * time.Second)
	for !resumed() {
		if time.Now().After(deadline) {
			t.Fatal("the suspended pod was not resumed within 10s after the reservation that held its room ran out")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if d := time.Since(reserved); d < ttl {
		t.Errorf("resumed %s after the reservation was made, within its time to live %s", d, ttl)
	}
}
