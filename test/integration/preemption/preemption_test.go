// Package preemption tests preemption by suspension on a real control plane: kwok nodes, the
// node agent in --simulate mode, and kybernate-scheduler with the shipped profile (GPUShare and
// CheckpointPreemption, and the resume controller it starts).
package preemption

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/sim"
	"github.com/kybernate/kybernate/test/integration/framework"
	"github.com/kybernate/kybernate/test/util"
)

const (
	nodes       = 3
	gpusPerNode = 2
	slotsPerGPU = 2
	// Simulated driver rates, faster than a real one so that the tests take seconds.
	checkpointRate = 20e9
	restoreRate    = 40e9

	low  = "kyb-test-low"
	high = "kyb-test-high"
	gi   = int64(1) << 30
)

func TestMain(m *testing.M) {
	framework.MainWithGPUNodes(m, nodes, gpusPerNode)
}

var (
	setupOnce sync.Once
	setupOK   bool
	scheduler *framework.Component
	schedArgs []string
)

type env struct {
	c  *framework.Cluster
	kc versioned.Interface
	// h records the test namespace's pods and GPUCheckpoints from its creation on.
	h  *framework.History
	ns string
}

func setup(t *testing.T) env {
	t.Helper()
	c := framework.Get(t)
	kc := c.Kybernate(t)
	setupOnce.Do(func() {
		// The tests name the victims of a preemption by the suspensions they see: the spreading
		// controller's moves onto unused GPUs (also a suspension and a resume, 30 s after the
		// pods settled) and time-slice turns (a suspended low-priority victim waits beside
		// running low-priority pods, and the shipped 60 s quantum is shorter than some of these
		// tests) would count as victims. Turns are tested in test/integration/timeslice.
		k := c.StartKybernate(t, map[string]int32{low: 100, high: 10000}, map[string]string{
			"disableSpreading: false": "disableSpreading: true",
			"timeSliceQuantum: 60s":   "timeSliceQuantum: 1h",
		},
			"--slots-per-gpu", fmt.Sprint(slotsPerGPU),
			"--simulate-checkpoint-rate", fmt.Sprint(int64(checkpointRate)), "--simulate-restore-rate", fmt.Sprint(int64(restoreRate)),
			"--simulate-progress-period", "500ms")
		scheduler, schedArgs = k.Scheduler, k.SchedulerArgs
		setupOK = true
	})
	if !setupOK {
		t.Fatal("setup failed in an earlier test")
	}
	framework.WaitForGPUNodes(t.Context(), t, kc, nodes, gpusPerNode, time.Minute)
	ns := c.CreateNamespace(t)
	e := env{c: c, kc: kc, h: c.Record(t, ns), ns: ns}
	t.Cleanup(func() { framework.AuditGPUs(t, e.kc, e.h, slotsPerGPU) })
	return e
}

// gpuPod is a GPU pod of kybernate-scheduler pinned to a node.
func gpuPod(ns, name, node, class, mem string) *util.PodWrapper {
	p := util.MakePod().Namespace(ns).Name(name).SchedulerName("kybernate-scheduler").
		PriorityClassName(class).NodeSelector(v1.LabelHostname, node).GPU(1)
	if mem != "" {
		p = p.GPUMemory(mem)
	}
	return p
}

func (e env) create(t *testing.T, pods ...*v1.Pod) {
	t.Helper()
	for _, p := range pods {
		if _, err := e.c.Client.CoreV1().Pods(p.Namespace).Create(t.Context(), p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

func (e env) pod(t *testing.T, ns, name string) *v1.Pod {
	t.Helper()
	p, err := e.c.Client.CoreV1().Pods(ns).Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// stateOf is the pod's kybernate.io/state (Running when unset on a pod with GPUs).
func stateOf(p *v1.Pod) kv1.PodGPUState {
	got := kv1.PodGPUState(p.Annotations[kv1.AnnotationState])
	if got == "" && p.Annotations[kv1.AnnotationGPUs] != "" {
		got = kv1.PodRunning
	}
	return got
}

// waitState waits until the pod's kybernate.io/state, as last recorded, is s.
func (e env) waitState(t *testing.T, name string, s kv1.PodGPUState, timeout time.Duration) *v1.Pod {
	t.Helper()
	return e.h.WaitPod(t, name, timeout, "state "+string(s), func(p *v1.Pod) bool { return stateOf(p) == s })
}

// waitProgress waits until the pod's simulated progress counter has reached at least d.
func (e env) waitProgress(t *testing.T, name string, d time.Duration) time.Duration {
	t.Helper()
	p := e.h.WaitPod(t, name, d+30*time.Second, fmt.Sprintf("progress %s", d), func(p *v1.Pod) bool {
		return sim.ProgressOf(p) >= d
	})
	return sim.ProgressOf(p)
}

// waitScheduled waits until the pod is bound.
func (e env) waitScheduled(t *testing.T, name string) *v1.Pod {
	t.Helper()
	return e.h.WaitPod(t, name, time.Minute, "bound", func(p *v1.Pod) bool { return p.Spec.NodeName != "" })
}

// waitNoVictims waits until kybernate-scheduler has run PostFilter for the pod and found no
// pod to suspend: its PodScheduled condition is False with CheckpointPreemption's message.
func (e env) waitNoVictims(t *testing.T, name string) {
	t.Helper()
	e.h.WaitPod(t, name, time.Minute, "unschedulable after a preemption attempt", unschedulableBySuspension)
}

// everBound names the versions of the pod that were bound.
func (e env) everBound(name string) string {
	for _, c := range e.h.PodVersions(name) {
		if c.Pod.Spec.NodeName != "" {
			return c.Pod.Spec.NodeName
		}
	}
	return ""
}

// suspendsOf counts the Suspend GPUCheckpoints the history ever held for the pod ("" for any).
func (e env) suspendsOf(pod string) int {
	seen := map[string]bool{}
	for _, c := range e.h.Checkpoints() {
		ck := c.Checkpoint
		if ck.Spec.Action == kv1.ActionSuspend && (pod == "" || ck.Spec.PodName == pod) {
			seen[ck.Name] = true
		}
	}
	return len(seen)
}

// measured is the time the agent reported for a GPUCheckpoint's steps.
func measured(ck *kv1.GPUCheckpoint) time.Duration {
	var d time.Duration
	for _, s := range ck.Status.Steps {
		d += s.Duration.Duration
	}
	return d
}

// A high-priority pod takes the GPU of a low-priority one: exactly that victim is suspended,
// nothing is deleted, the preemptor binds only after the suspension ended (the time beyond the
// measured suspension is logged); when the preemptor is gone the victim resumes and its
// progress goes on from where it stopped, and it stood still in between.
func TestSuspendThenResume(t *testing.T) {
	e := setup(t)
	ns := e.ns
	node := "kwok-gpu-0"
	// GPU-0: victim (70Gi, alone on it after bin-packing); GPU-1: two pods that fill its slots.
	e.create(t, gpuPod(ns, "victim", node, low, "70Gi").Obj())
	e.waitState(t, "victim", kv1.PodRunning, time.Minute)
	e.create(t, gpuPod(ns, "fill-a", node, low, "40Gi").Obj(), gpuPod(ns, "fill-b", node, low, "30Gi").Obj())
	for _, n := range []string{"fill-a", "fill-b"} {
		e.waitState(t, n, kv1.PodRunning, time.Minute)
	}
	before := e.waitProgress(t, "victim", 2*time.Second)

	start := time.Now()
	e.create(t, gpuPod(ns, "urgent", node, high, "40Gi").Obj())
	bound := e.waitScheduled(t, "urgent")
	took := time.Since(start)
	victim := e.waitState(t, "victim", kv1.PodSuspended, time.Minute)
	if got, want := bound.Annotations[kv1.AnnotationGPUs], victim.Annotations[kv1.AnnotationGPUs]; got != want {
		t.Errorf("preemptor got GPU %s, want the victim's %s", got, want)
	}
	cks := e.h.LatestCheckpoints()
	if len(cks) != 1 || cks[0].Spec.PodName != "victim" || cks[0].Spec.Action != kv1.ActionSuspend ||
		cks[0].Spec.Reason != kv1.ReasonPreemption || cks[0].Spec.Preemptor == nil || cks[0].Spec.Preemptor.Name != "urgent" {
		t.Fatalf("GPUCheckpoints %+v, want one Suspend of victim for urgent", cks)
	}
	// The bound is the measured suspension, not a wall-clock guess: the preemptor may bind only
	// once the victim's memory is off the GPU (Overcommits checks that for every moment).
	suspension := measured(cks[0])
	t.Logf("preemptor bound %s after creation; the agent measured the suspension at %s (%s beyond it)",
		took.Round(time.Millisecond), suspension.Round(time.Millisecond), (took - suspension).Round(time.Millisecond))

	// The preemptor runs until its own progress shows the agent's progress loop ran for a
	// while: the victim's counter must stand still in every version recorded meanwhile.
	parked := sim.ProgressOf(victim)
	if parked < before {
		t.Errorf("progress went back from %s to %s", before, parked)
	}
	e.waitProgress(t, "urgent", 2*time.Second)

	// The preemptor finishes: the victim comes back and goes on.
	if err := e.c.Client.CoreV1().Pods(ns).Delete(t.Context(), "urgent", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitState(t, "victim", kv1.PodRunning, time.Minute)
	after := e.waitProgress(t, "victim", parked+2*time.Second)
	t.Logf("victim progress: %s before the preemptor, %s when suspended, %s after resuming: no work lost", before, parked, after)

	// The whole history: fill-a and fill-b were never touched, only urgent was deleted, the
	// victim went Running -> Suspending -> Suspended -> Resuming -> Running and its counter
	// never moved while it was not Running.
	for _, n := range []string{"fill-a", "fill-b"} {
		if states := e.h.StatesOf(n); len(states) != 1 || states[0] != kv1.PodRunning {
			t.Errorf("%s went through states %v; only the cheapest victim should be suspended", n, states)
		}
	}
	if d := e.h.Deletions(); len(d) != 1 || d[0] != "urgent" {
		t.Errorf("deleted pods %v, want only urgent (deleted by the test)", d)
	}
	want := []kv1.PodGPUState{kv1.PodRunning, kv1.PodSuspending, kv1.PodSuspended, kv1.PodResuming, kv1.PodRunning}
	if diff := cmp.Diff(want, e.h.StatesOf("victim")); diff != "" {
		t.Errorf("victim's states (-want +got):\n%s", diff)
	}
	suspended := map[time.Duration]bool{}
	for _, c := range e.h.PodVersions("victim") {
		if stateOf(c.Pod) == kv1.PodSuspended {
			suspended[sim.ProgressOf(c.Pod)] = true
		}
	}
	if len(suspended) != 1 {
		t.Errorf("victim's progress took the values %v while Suspended, want one", suspended)
	}
	var resumes int
	for _, ck := range e.h.LatestCheckpoints() {
		if ck.Spec.Action == kv1.ActionResume && ck.Spec.PodName == "victim" && ck.Status.Phase == kv1.PhaseSucceeded {
			resumes++
		}
	}
	if resumes != 1 {
		t.Errorf("%d succeeded Resume GPUCheckpoints for victim, want 1", resumes)
	}
}

// The same scenario under the default scheduler's preemption: the victim is deleted and its
// work is gone: no GPUCheckpoint saved it, it never comes back, and the time it had run is
// lost. This is the baseline the suspension is compared with.
func TestDefaultPreemptionLosesWork(t *testing.T) {
	e := setup(t)
	ns := e.ns
	node := "kwok-gpu-2"
	// The default scheduler only counts kybernate.io/gpu: 2 GPUs x 2 slots = 4 on the node.
	var pods []*v1.Pod
	for i := range gpusPerNode * slotsPerGPU {
		pods = append(pods, util.MakePod().Namespace(ns).Name(fmt.Sprintf("low-%d", i)).
			PriorityClassName(low).NodeSelector(v1.LabelHostname, node).GPU(1).Obj())
	}
	e.create(t, pods...)
	for _, p := range pods {
		e.h.WaitPod(t, p.Name, time.Minute, "Running", func(p *v1.Pod) bool { return p.Status.Phase == v1.PodRunning })
	}
	e.create(t, util.MakePod().Namespace(ns).Name("urgent").PriorityClassName(high).
		NodeSelector(v1.LabelHostname, node).GPU(1).Obj())
	if got := e.waitScheduled(t, "urgent").Spec.NodeName; got != node {
		t.Errorf("urgent bound to %s, want %s", got, node)
	}
	var victim string
	e.h.Wait(t, time.Minute, "a victim gone", func() bool {
		for _, p := range pods {
			if e.h.Pod(p.Name) == nil {
				victim = p.Name
				return true
			}
		}
		return false
	})

	// The history: exactly one low pod deleted; it had run; nothing saved it; it never came
	// back under its name.
	if d := e.h.Deletions(); len(d) != 1 || d[0] != victim {
		t.Errorf("deleted pods %v, want exactly the victim %s", d, victim)
	}
	var runningSince, deletedAt time.Time
	for _, c := range e.h.PodVersions(victim) {
		if c.Pod.Status.Phase == v1.PodRunning && runningSince.IsZero() {
			runningSince = c.Time
		}
		if (c.Pod.DeletionTimestamp != nil || c.Type == watch.Deleted) && deletedAt.IsZero() {
			deletedAt = c.Time
		}
		if s := c.Pod.Annotations[kv1.AnnotationState]; s != "" {
			t.Errorf("victim %s had kybernate.io/state %s; the default scheduler does not suspend", victim, s)
		}
	}
	if runningSince.IsZero() || !deletedAt.After(runningSince) {
		t.Fatalf("victim %s: Running at %v, deleted at %v: want a run that the deletion ended", victim, runningSince, deletedAt)
	}
	if n := len(e.h.Checkpoints()); n != 0 {
		t.Errorf("%d GPUCheckpoint changes, want none: nothing saves the victim", n)
	}
	t.Logf("default preemption deleted %s after %s of running: that work is lost", victim, deletedAt.Sub(runningSince).Round(time.Millisecond))
}

// preemption: Never and min-runtime protect pods from a higher-priority pod, and a pod of equal
// priority waits for a time-slice turn (quantum 1 h in these tests): kybernate-scheduler tries to preempt for the preemptor and finds no victim (or, for
// equal priority, nominates it for a turn), and in the whole history nothing is suspended, no
// GPUCheckpoint is made and the preemptor never binds. Turns themselves are tested in
// test/integration/timeslice.
func TestProtectedPods(t *testing.T) {
	tests := []struct {
		name      string
		victim    *util.PodWrapper
		preemptor string
		// turn: the preemptor is nominated to wait for a time-slice turn instead.
		turn bool
	}{
		{name: "preemption Never", victim: util.MakePod().Preemption("Never"), preemptor: high},
		{name: "min-runtime not reached", victim: util.MakePod().MinRuntime(time.Hour), preemptor: high},
		{name: "equal priority within the quantum", victim: util.MakePod(), preemptor: low, turn: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := setup(t)
			ns := e.ns
			node := "kwok-gpu-1"
			var victims []*v1.Pod
			for i := range gpusPerNode {
				p := *tt.victim
				v := (&p).Obj()
				v.Namespace, v.Name = ns, fmt.Sprintf("protected-%d", i)
				base := gpuPod(ns, v.Name, node, low, "").Obj()
				base.Annotations = mergeAnnotations(base.Annotations, v.Annotations)
				victims = append(victims, base)
			}
			e.create(t, victims...)
			for _, v := range victims {
				e.waitState(t, v.Name, kv1.PodRunning, time.Minute)
			}
			e.create(t, gpuPod(ns, "urgent", node, tt.preemptor, "").Obj())
			if tt.turn {
				e.h.WaitPod(t, "urgent", time.Minute, "nominated for a turn", func(p *v1.Pod) bool {
					return p.Status.NominatedNodeName == node && p.Spec.NodeName == ""
				})
			} else {
				e.waitNoVictims(t, "urgent")
			}

			if n := len(e.h.Checkpoints()); n != 0 {
				t.Errorf("%d GPUCheckpoint changes recorded, want none", n)
			}
			if n := e.everBound("urgent"); n != "" {
				t.Errorf("preemptor bound to %s", n)
			}
			for _, v := range victims {
				if states := e.h.StatesOf(v.Name); len(states) != 1 || states[0] != kv1.PodRunning {
					t.Errorf("%s went through states %v, want Running only", v.Name, states)
				}
			}
		})
	}
}

func mergeAnnotations(a, b map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

// When the victim's GPU is still taken but another GPU of its node frees up, it resumes there.
func TestResumeOnAnotherGPU(t *testing.T) {
	e := setup(t)
	ns := e.ns
	node := "kwok-gpu-0"
	e.create(t, gpuPod(ns, "victim", node, low, "").Obj())
	first := e.waitState(t, "victim", kv1.PodRunning, time.Minute)
	// The other GPU is taken by a pod no one may suspend.
	e.create(t, gpuPod(ns, "blocker", node, low, "").Preemption("Never").Obj())
	e.waitState(t, "blocker", kv1.PodRunning, time.Minute)
	e.waitProgress(t, "victim", time.Second)

	e.create(t, gpuPod(ns, "urgent", node, high, "").Obj())
	urgent := e.waitScheduled(t, "urgent")
	if urgent.Annotations[kv1.AnnotationGPUs] != first.Annotations[kv1.AnnotationGPUs] {
		t.Fatalf("preemptor on %s, want the victim's GPU %s", urgent.Annotations[kv1.AnnotationGPUs], first.Annotations[kv1.AnnotationGPUs])
	}
	parked := sim.ProgressOf(e.waitState(t, "victim", kv1.PodSuspended, time.Minute))

	// The blocker ends: its GPU frees while the victim's own is still taken.
	if err := e.c.Client.CoreV1().Pods(ns).Delete(t.Context(), "blocker", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	resumed := e.waitState(t, "victim", kv1.PodRunning, time.Minute)
	if got, old := resumed.Annotations[kv1.AnnotationGPUs], first.Annotations[kv1.AnnotationGPUs]; got == old || got == "" {
		t.Errorf("victim resumed on %q, want the other GPU than %s", got, old)
	}
	after := e.waitProgress(t, "victim", parked+time.Second)
	t.Logf("victim moved from %s to %s; progress %s when suspended, %s after", first.Annotations[kv1.AnnotationGPUs], resumed.Annotations[kv1.AnnotationGPUs], parked, after)
}

// The scheduler dies while a suspension is in flight and comes back: the state converges, the
// preemptor binds once, exactly one victim is suspended once, and no GPU ever holds more than
// it can (setup's audit replays the whole history).
func TestSchedulerRestartDuringSuspend(t *testing.T) {
	e := setup(t)
	ns := e.ns
	node := "kwok-gpu-1"
	e.create(t, gpuPod(ns, "victim-0", node, low, "").Obj(), gpuPod(ns, "victim-1", node, low, "").Obj())
	e.waitState(t, "victim-0", kv1.PodRunning, time.Minute)
	e.waitState(t, "victim-1", kv1.PodRunning, time.Minute)
	e.create(t, gpuPod(ns, "urgent", node, high, "").Obj())
	e.h.Wait(t, time.Minute, "a suspension requested", func() bool { return len(e.h.Checkpoints()) > 0 })
	scheduler.Kill()
	scheduler = e.c.Start(t, "kybernate-scheduler", schedArgs...)

	urgent := e.waitScheduled(t, "urgent")
	var suspended []string
	e.h.Wait(t, time.Minute, "one victim Suspended", func() bool {
		suspended = suspended[:0]
		for _, n := range []string{"victim-0", "victim-1"} {
			if p := e.h.Pod(n); p != nil && stateOf(p) == kv1.PodSuspended {
				suspended = append(suspended, n)
			}
		}
		return len(suspended) > 0
	})
	if len(suspended) != 1 {
		t.Errorf("suspended %v: want exactly one victim", suspended)
	}
	for _, n := range []string{"victim-0", "victim-1"} {
		if p := e.h.Pod(n); stateOf(p) == kv1.PodRunning && p.Annotations[kv1.AnnotationGPUs] == urgent.Annotations[kv1.AnnotationGPUs] {
			t.Errorf("%s still runs on %s, the preemptor's GPU", n, urgent.Annotations[kv1.AnnotationGPUs])
		}
	}
	// The preemptor was bound once: every bound version names the same node and GPU.
	for _, c := range e.h.PodVersions("urgent") {
		if c.Pod.Spec.NodeName != "" && c.Pod.Annotations[kv1.AnnotationGPUs] != urgent.Annotations[kv1.AnnotationGPUs] {
			t.Errorf("urgent bound with GPUs %q, then %q", c.Pod.Annotations[kv1.AnnotationGPUs], urgent.Annotations[kv1.AnnotationGPUs])
		}
	}
	if n := e.suspendsOf(""); n != 1 {
		t.Errorf("%d Suspend GPUCheckpoints in the history, want 1", n)
	}
	if d := e.h.Deletions(); len(d) != 0 {
		t.Errorf("pods deleted: %v", d)
	}
}

// The agent fails to suspend the victim (an injected driver fault): the victim keeps running,
// an Event on it says why, nothing is deleted, and the preemptor waits instead of trying the
// same victim again: the scheduler evaluates it again after the failure, finds no victim, and
// in the whole history the victim was asked once and the preemptor never bound.
func TestFailedSuspendLeavesVictimRunning(t *testing.T) {
	e := setup(t)
	ns := e.ns
	node := "kwok-gpu-2"
	e.create(t, gpuPod(ns, "victim", node, low, "").Annotation(sim.AnnotationFail, "Checkpoint").Obj(),
		gpuPod(ns, "blocker", node, low, "").Preemption("Never").Obj())
	e.waitState(t, "victim", kv1.PodRunning, time.Minute)
	e.waitState(t, "blocker", kv1.PodRunning, time.Minute)
	e.create(t, gpuPod(ns, "urgent", node, high, "").Obj())

	var failedAt time.Time
	e.h.Wait(t, time.Minute, "the suspension to fail", func() bool {
		for _, c := range e.h.Checkpoints() {
			if c.Checkpoint.Spec.PodName == "victim" && c.Checkpoint.Status.Phase == kv1.PhaseFailed {
				failedAt = c.Time
				return true
			}
		}
		return false
	})
	framework.WaitFor(t.Context(), t, time.Minute, "a SuspendFailed Event on the victim", func(ctx context.Context) (bool, error) {
		events, err := e.c.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=victim"})
		if err != nil {
			return false, err
		}
		for _, ev := range events.Items {
			if ev.Reason == "SuspendFailed" && strings.Contains(ev.Message, "CUDA_ERROR_UNKNOWN") {
				return true, nil
			}
		}
		return false, nil
	})
	e.waitState(t, "victim", kv1.PodRunning, time.Minute)
	// The failure requeues the preemptor; its next attempt finds no victim (the failed one is
	// excluded, the blocker is protected) and says so in its PodScheduled condition.
	e.h.Wait(t, time.Minute, "the preemptor evaluated again after the failure", func() bool {
		for _, c := range e.h.PodVersions("urgent") {
			if c.Time.After(failedAt) && unschedulableBySuspension(c.Pod) {
				return true
			}
		}
		return false
	})

	if n := e.everBound("urgent"); n != "" {
		t.Errorf("preemptor bound to %s although its victim could not be suspended", n)
	}
	if n := e.suspendsOf(""); n != 1 {
		t.Errorf("%d Suspend GPUCheckpoints in the history, want 1: the failed victim is not asked again", n)
	}
	if d := e.h.Deletions(); len(d) != 0 {
		t.Errorf("pods deleted: %v", d)
	}
	for _, c := range e.h.PodVersions("victim") {
		if st := stateOf(c.Pod); c.Time.After(failedAt) && st != kv1.PodRunning && st != kv1.PodResuming {
			t.Errorf("%s: victim %s after its suspension failed", c.Time.Format("15:04:05.000"), st)
		}
	}
}

// unschedulableBySuspension reports whether the pod's PodScheduled condition is False with
// CheckpointPreemption's message: PostFilter ran and found no pod to suspend.
func unschedulableBySuspension(p *v1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == v1.PodScheduled && c.Status == v1.ConditionFalse && strings.Contains(c.Message, "suspension:") {
			return true
		}
	}
	return false
}
