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
}

func setup(t *testing.T) env {
	t.Helper()
	c := framework.Get(t)
	kc := c.Kybernate(t)
	setupOnce.Do(func() {
		k := c.StartKybernate(t, map[string]int32{low: 100, high: 10000}, nil,
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
	return env{c: c, kc: kc}
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

// waitState waits until the pod's kybernate.io/state is s (Running also when unset).
func (e env) waitState(t *testing.T, ns, name string, s kv1.PodGPUState, timeout time.Duration) *v1.Pod {
	t.Helper()
	return framework.WaitForPod(t.Context(), t, e.c.Client, ns, name, timeout, "state "+string(s), func(p *v1.Pod) bool {
		got := kv1.PodGPUState(p.Annotations[kv1.AnnotationState])
		if got == "" && p.Annotations[kv1.AnnotationGPUs] != "" {
			got = kv1.PodRunning
		}
		return got == s
	})
}

// waitProgress waits until the pod's simulated progress counter has reached at least d.
func (e env) waitProgress(t *testing.T, ns, name string, d time.Duration) time.Duration {
	t.Helper()
	p := framework.WaitForPod(t.Context(), t, e.c.Client, ns, name, d+30*time.Second, fmt.Sprintf("progress %s", d), func(p *v1.Pod) bool {
		return sim.ProgressOf(p) >= d
	})
	return sim.ProgressOf(p)
}

func (e env) checkpoints(t *testing.T, ns string) []kv1.GPUCheckpoint {
	t.Helper()
	list, err := e.kc.KybernateV1alpha1().GPUCheckpoints(ns).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return list.Items
}

func suspendTime(bytes int64) time.Duration {
	return time.Duration(float64(bytes) / checkpointRate * float64(time.Second))
}

// A high-priority pod takes the GPU of a low-priority one: exactly that victim is suspended,
// nothing is deleted, the preemptor binds within the suspension time plus 2 s; when the
// preemptor is gone the victim resumes and its progress goes on from where it stopped.
func TestSuspendThenResume(t *testing.T) {
	e := setup(t)
	ns := e.c.CreateNamespace(t)
	node := "kwok-gpu-0"
	// GPU-0: victim (70Gi, alone on it after bin-packing); GPU-1: two pods that fill its slots.
	e.create(t, gpuPod(ns, "victim", node, low, "70Gi").Obj())
	e.waitState(t, ns, "victim", kv1.PodRunning, time.Minute)
	e.create(t, gpuPod(ns, "fill-a", node, low, "40Gi").Obj(), gpuPod(ns, "fill-b", node, low, "30Gi").Obj())
	for _, n := range []string{"fill-a", "fill-b"} {
		e.waitState(t, ns, n, kv1.PodRunning, time.Minute)
	}
	before := e.waitProgress(t, ns, "victim", 2*time.Second)

	start := time.Now()
	e.create(t, gpuPod(ns, "urgent", node, high, "40Gi").Obj())
	bound := framework.WaitForPodScheduled(t.Context(), t, e.c.Client, ns, "urgent", time.Minute)
	took := time.Since(start)
	if limit := suspendTime(70*gi) + 2*time.Second; took > limit {
		t.Errorf("preemptor bound after %s, want within the suspension time + 2 s = %s", took.Round(time.Millisecond), limit)
	}
	victim := e.waitState(t, ns, "victim", kv1.PodSuspended, time.Minute)
	if got, want := bound.Annotations[kv1.AnnotationGPUs], victim.Annotations[kv1.AnnotationGPUs]; got != want {
		t.Errorf("preemptor got GPU %s, want the victim's %s", got, want)
	}
	for _, n := range []string{"fill-a", "fill-b"} {
		if s := e.pod(t, ns, n).Annotations[kv1.AnnotationState]; s == string(kv1.PodSuspended) || s == string(kv1.PodSuspending) {
			t.Errorf("%s was suspended too; only the cheapest victim should be", n)
		}
	}
	cks := e.checkpoints(t, ns)
	if len(cks) != 1 || cks[0].Spec.PodName != "victim" || cks[0].Spec.Action != kv1.ActionSuspend ||
		cks[0].Spec.Reason != kv1.ReasonPreemption || cks[0].Spec.Preemptor == nil || cks[0].Spec.Preemptor.Name != "urgent" {
		t.Fatalf("GPUCheckpoints %+v, want one Suspend of victim for urgent", cks)
	}
	pods, err := e.c.Client.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(pods.Items) != 4 {
		t.Errorf("%d pods, want all 4: none deleted", len(pods.Items))
	}
	parked := sim.ProgressOf(victim)
	if parked < before {
		t.Errorf("progress went back from %s to %s", before, parked)
	}
	// While suspended the counter stands still.
	time.Sleep(2 * time.Second) // a span of suspension to observe, not a wait for a condition
	if still := sim.ProgressOf(e.pod(t, ns, "victim")); still != parked {
		t.Errorf("progress moved from %s to %s while suspended", parked, still)
	}

	// The preemptor finishes: the victim comes back and goes on.
	if err := e.c.Client.CoreV1().Pods(ns).Delete(t.Context(), "urgent", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitState(t, ns, "victim", kv1.PodRunning, time.Minute)
	after := e.waitProgress(t, ns, "victim", parked+2*time.Second)
	t.Logf("victim progress: %s before the preemptor, %s when suspended, %s after resuming: no work lost", before, parked, after)
	var resumes int
	for _, ck := range e.checkpoints(t, ns) {
		if ck.Spec.Action == kv1.ActionResume && ck.Spec.PodName == "victim" && ck.Status.Phase == kv1.PhaseSucceeded {
			resumes++
		}
	}
	if resumes != 1 {
		t.Errorf("%d succeeded Resume GPUCheckpoints for victim, want 1", resumes)
	}
}

// The same scenario under the default scheduler's preemption: the victim is deleted and its
// work is gone. This is the baseline the suspension is compared with.
func TestDefaultPreemptionLosesWork(t *testing.T) {
	e := setup(t)
	ns := e.c.CreateNamespace(t)
	node := "kwok-gpu-2"
	// The default scheduler only counts kybernate.io/gpu: 2 GPUs x 2 slots = 4 on the node.
	var pods []*v1.Pod
	for i := range gpusPerNode * slotsPerGPU {
		pods = append(pods, util.MakePod().Namespace(ns).Name(fmt.Sprintf("low-%d", i)).
			PriorityClassName(low).NodeSelector(v1.LabelHostname, node).GPU(1).Obj())
	}
	e.create(t, pods...)
	for _, p := range pods {
		framework.WaitForPodRunning(t.Context(), t, e.c.Client, ns, p.Name, time.Minute)
	}
	time.Sleep(2 * time.Second) // let the victims accumulate some work to lose
	e.create(t, util.MakePod().Namespace(ns).Name("urgent").PriorityClassName(high).
		NodeSelector(v1.LabelHostname, node).GPU(1).Obj())
	framework.WaitForPodScheduled(t.Context(), t, e.c.Client, ns, "urgent", time.Minute)
	list, err := e.c.Client.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != len(pods) {
		t.Fatalf("%d pods after default preemption, want %d: one victim deleted", len(list.Items), len(pods))
	}
	t.Logf("default preemption deleted a victim: its run time since start is lost work (≥ 2 s here)")
}

// preemption: Never and min-runtime protect pods from a higher-priority pod, and a pod of equal
// priority waits for a time-slice turn (quantum 60 s in the shipped profile, more than this test
// waits): the preemptor stays pending and nothing is suspended. Turns themselves are tested in
// test/integration/timeslice.
func TestProtectedPods(t *testing.T) {
	e := setup(t)
	tests := []struct {
		name      string
		victim    *util.PodWrapper
		preemptor string
	}{
		{name: "preemption Never", victim: util.MakePod().Preemption("Never"), preemptor: high},
		{name: "min-runtime not reached", victim: util.MakePod().MinRuntime(time.Hour), preemptor: high},
		{name: "equal priority within the quantum", victim: util.MakePod(), preemptor: low},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := e.c.CreateNamespace(t)
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
				e.waitState(t, ns, v.Name, kv1.PodRunning, time.Minute)
			}
			e.create(t, gpuPod(ns, "urgent", node, tt.preemptor, "").Obj())
			framework.WaitForPod(t.Context(), t, e.c.Client, ns, "urgent", time.Minute, "unschedulable", func(p *v1.Pod) bool {
				for _, c := range p.Status.Conditions {
					if c.Type == v1.PodScheduled && c.Status == v1.ConditionFalse {
						return true
					}
				}
				return false
			})
			time.Sleep(3 * time.Second) // give a wrong preemption the time to happen
			if cks := e.checkpoints(t, ns); len(cks) != 0 {
				t.Errorf("%d GPUCheckpoints created, want none", len(cks))
			}
			if p := e.pod(t, ns, "urgent"); p.Spec.NodeName != "" {
				t.Errorf("preemptor bound to %s", p.Spec.NodeName)
			}
			for _, v := range victims {
				if s := e.pod(t, ns, v.Name).Annotations[kv1.AnnotationState]; s != "" && s != string(kv1.PodRunning) {
					t.Errorf("%s is %s", v.Name, s)
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
	ns := e.c.CreateNamespace(t)
	node := "kwok-gpu-0"
	e.create(t, gpuPod(ns, "victim", node, low, "").Obj())
	first := e.waitState(t, ns, "victim", kv1.PodRunning, time.Minute)
	// The other GPU is taken by a pod no one may suspend.
	e.create(t, gpuPod(ns, "blocker", node, low, "").Preemption("Never").Obj())
	e.waitState(t, ns, "blocker", kv1.PodRunning, time.Minute)
	e.waitProgress(t, ns, "victim", time.Second)

	e.create(t, gpuPod(ns, "urgent", node, high, "").Obj())
	urgent := framework.WaitForPodScheduled(t.Context(), t, e.c.Client, ns, "urgent", time.Minute)
	if urgent.Annotations[kv1.AnnotationGPUs] != first.Annotations[kv1.AnnotationGPUs] {
		t.Fatalf("preemptor on %s, want the victim's GPU %s", urgent.Annotations[kv1.AnnotationGPUs], first.Annotations[kv1.AnnotationGPUs])
	}
	parked := sim.ProgressOf(e.waitState(t, ns, "victim", kv1.PodSuspended, time.Minute))

	// The blocker ends: its GPU frees while the victim's own is still taken.
	if err := e.c.Client.CoreV1().Pods(ns).Delete(t.Context(), "blocker", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	resumed := e.waitState(t, ns, "victim", kv1.PodRunning, time.Minute)
	if got, old := resumed.Annotations[kv1.AnnotationGPUs], first.Annotations[kv1.AnnotationGPUs]; got == old || got == "" {
		t.Errorf("victim resumed on %q, want the other GPU than %s", got, old)
	}
	after := e.waitProgress(t, ns, "victim", parked+time.Second)
	t.Logf("victim moved from %s to %s; progress %s when suspended, %s after", first.Annotations[kv1.AnnotationGPUs], resumed.Annotations[kv1.AnnotationGPUs], parked, after)
}

// The scheduler dies while a suspension is in flight and comes back: the state converges, the
// preemptor binds once, no GPU holds more than it can.
func TestSchedulerRestartDuringSuspend(t *testing.T) {
	e := setup(t)
	ns := e.c.CreateNamespace(t)
	node := "kwok-gpu-1"
	e.create(t, gpuPod(ns, "victim-0", node, low, "").Obj(), gpuPod(ns, "victim-1", node, low, "").Obj())
	e.waitState(t, ns, "victim-0", kv1.PodRunning, time.Minute)
	e.waitState(t, ns, "victim-1", kv1.PodRunning, time.Minute)
	e.create(t, gpuPod(ns, "urgent", node, high, "").Obj())
	framework.WaitFor(t.Context(), t, time.Minute, "a suspension requested", func(ctx context.Context) (bool, error) {
		return len(e.checkpoints(t, ns)) > 0, nil
	})
	scheduler.Kill()
	scheduler = e.c.Start(t, "kybernate-scheduler", schedArgs...)

	urgent := framework.WaitForPodScheduled(t.Context(), t, e.c.Client, ns, "urgent", time.Minute)
	var suspended, running []string
	for _, n := range []string{"victim-0", "victim-1"} {
		p := e.pod(t, ns, n)
		switch kv1.PodGPUState(p.Annotations[kv1.AnnotationState]) {
		case kv1.PodSuspended, kv1.PodSuspending:
			suspended = append(suspended, n)
		default:
			running = append(running, n)
			if p.Annotations[kv1.AnnotationGPUs] == urgent.Annotations[kv1.AnnotationGPUs] {
				t.Errorf("%s still runs on %s, the preemptor's GPU", n, urgent.Annotations[kv1.AnnotationGPUs])
			}
		}
	}
	if len(suspended) != 1 {
		t.Errorf("suspended %v, running %v: want exactly one victim suspended", suspended, running)
	}
	var suspends int
	for _, ck := range e.checkpoints(t, ns) {
		if ck.Spec.Action == kv1.ActionSuspend {
			suspends++
		}
	}
	if suspends != 1 {
		t.Errorf("%d Suspend GPUCheckpoints, want 1", suspends)
	}
}

// The agent fails to suspend the victim (an injected driver fault): the victim keeps running,
// an Event on it says why, nothing is deleted, and the preemptor waits instead of trying the
// same victim again.
func TestFailedSuspendLeavesVictimRunning(t *testing.T) {
	e := setup(t)
	ns := e.c.CreateNamespace(t)
	node := "kwok-gpu-2"
	e.create(t, gpuPod(ns, "victim", node, low, "").Annotation(sim.AnnotationFail, "Checkpoint").Obj(),
		gpuPod(ns, "blocker", node, low, "").Preemption("Never").Obj())
	e.waitState(t, ns, "victim", kv1.PodRunning, time.Minute)
	e.waitState(t, ns, "blocker", kv1.PodRunning, time.Minute)
	e.create(t, gpuPod(ns, "urgent", node, high, "").Obj())

	framework.WaitFor(t.Context(), t, time.Minute, "the suspension to fail", func(context.Context) (bool, error) {
		for _, ck := range e.checkpoints(t, ns) {
			if ck.Spec.PodName == "victim" && ck.Status.Phase == kv1.PhaseFailed {
				return true, nil
			}
		}
		return false, nil
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
	victim := e.waitState(t, ns, "victim", kv1.PodRunning, time.Minute)
	if victim.DeletionTimestamp != nil {
		t.Error("victim is being deleted")
	}
	time.Sleep(3 * time.Second) // room for a wrong retry to happen
	if p := e.pod(t, ns, "urgent"); p.Spec.NodeName != "" {
		t.Errorf("preemptor bound to %s although its victim could not be suspended", p.Spec.NodeName)
	}
	var suspends int
	for _, ck := range e.checkpoints(t, ns) {
		if ck.Spec.Action == kv1.ActionSuspend {
			suspends++
		}
	}
	if suspends != 1 {
		t.Errorf("%d Suspend GPUCheckpoints, want 1: the failed victim is not asked again", suspends)
	}
	if s := e.pod(t, ns, "victim").Annotations[kv1.AnnotationState]; s != "" && s != string(kv1.PodRunning) {
		t.Errorf("victim is %s, want Running", s)
	}
}
