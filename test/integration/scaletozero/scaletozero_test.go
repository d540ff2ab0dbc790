package scaletozero

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/test/integration/framework"
	"github.com/kybernate/kybernate/test/util"
)

// waitAsleep waits until the pod is Suspended through exactly one GPUCheckpoint of reason
// Idle, which succeeded.
func (e env) waitAsleep(t *testing.T) {
	t.Helper()
	e.h.WaitPod(t, "llm", time.Minute, "suspended for idleness", func(p *v1.Pod) bool { return gpupod.StateOf(p) == kv1.PodSuspended })
	idle := func() (names []string, succeeded int) {
		for _, ck := range e.h.LatestCheckpoints() {
			if ck.Spec.Action == kv1.ActionSuspend && ck.Spec.Reason == kv1.ReasonIdle {
				names = append(names, ck.Name)
				if ck.Status.Phase == kv1.PhaseSucceeded {
					succeeded++
				}
			}
		}
		return names, succeeded
	}
	e.h.Wait(t, 30*time.Second, "the Idle suspension succeeded", func() bool { _, ok := idle(); return ok > 0 })
	if names, ok := idle(); len(names) != 1 || ok != 1 {
		t.Fatalf("Idle suspensions %v (%d succeeded), want exactly one", names, ok)
	}
}

// An idle pod is suspended after its idle-after; requests that arrive while it sleeps are
// held, the pod is woken through the scheduler's resume controller, and every held request is
// answered exactly once, by the pod on its GPU, in order.
func TestIdleSleepThenWakeOnRequest(t *testing.T) {
	e := setup(t)
	e.deploy(t, "2s", nil)
	if a := e.send(t.Context(), 0); a.err != nil || a.status != 200 || a.body != "answer 0" {
		t.Fatalf("request to the awake pod: %+v", a)
	}
	e.waitAsleep(t)
	e.waitEvent(t, "llm", "Sleeping")

	const n = 5
	answers := make(chan answer, n)
	for i := 1; i <= n; i++ {
		go func() { answers <- e.send(t.Context(), i) }()
	}
	for range n {
		a := <-answers
		if a.err != nil || a.status != 200 || a.body != fmt.Sprintf("answer %d", a.seq) {
			t.Errorf("held request %d: %d %q %v", a.seq, a.status, a.body, a.err)
		}
	}
	seen := e.a.model.seen(e.ns)
	count := map[string]int{}
	for _, a := range seen {
		count[a.seq]++
		if a.state != kv1.PodRunning {
			t.Errorf("request %s reached the pod while it was %s", a.seq, a.state)
		}
	}
	for i := 0; i <= n; i++ {
		if count[fmt.Sprint(i)] != 1 {
			t.Errorf("the pod got request %d %d times", i, count[fmt.Sprint(i)])
		}
	}
	pod := e.h.Pod("llm")
	if _, set, err := gpupod.WakeRequested(pod); !set || err != nil {
		t.Errorf("the woken pod has no valid %s: %v", kv1.AnnotationWakeRequested, err)
	}
	states := e.h.StatesOf("llm")
	for _, want := range []kv1.PodGPUState{kv1.PodSuspending, kv1.PodSuspended, kv1.PodResuming} {
		if !slices.Contains(states, want) {
			t.Errorf("the pod's states %v never were %s", states, want)
		}
	}
	if got := gpupod.StateOf(pod); got != kv1.PodRunning {
		t.Errorf("after the wake the pod is %s", got)
	}
	e.waitEvent(t, "llm", "WakeRequested")
	e.waitEvent(t, "llm", "Woken")
	e.checkMetrics(t, map[string]float64{`kybernate_activator_wakes_total{outcome="success"}`: 1})
}

// A wake whose resume fails answers the held requests 503 with the reason and Retry-After,
// and the pod gets a WakeFailed Event; the pod stays suspended (the agent rolled back).
func TestWakeFailureAnswers503(t *testing.T) {
	e := setup(t)
	// Simulated fault: the driver's restore fails for this pod's processes.
	e.deploy(t, "1s", map[string]string{kv1.AnnotationSimulatedFail: "Restore"})
	e.waitAsleep(t)
	a := e.send(t.Context(), 1)
	if a.err != nil || a.status != 503 || a.retryAfter != "3" || !strings.Contains(a.body, "could not be woken: the resume failed") {
		t.Errorf("held request after a failed wake: %d, Retry-After %q, %q, %v", a.status, a.retryAfter, a.body, a.err)
	}
	e.waitEvent(t, "llm", "WakeFailed")
	if got := e.a.model.seen(e.ns); len(got) != 0 {
		t.Errorf("requests reached the pod that could not wake: %v", got)
	}
	if s := gpupod.StateOf(e.h.Pod("llm")); s != kv1.PodSuspended && s != kv1.PodResuming {
		t.Errorf("after the failed wake the pod is %s", s)
	}
	e.checkMetrics(t, map[string]float64{`kybernate_activator_wakes_total{outcome="failed"}`: 1})
}

// A pod woken while lower-priority pods filled its GPUs comes back by suspending one of them
// (reason Preemption, the woken pod as preemptor), as a new pod of its priority would; the
// held request is answered by the pod on its GPU.
func TestWakePreemptsLowerPriority(t *testing.T) {
	e := setup(t)
	e.deploy(t, "1s", nil)
	e.waitAsleep(t)
	// Both GPUs (80 GB, simulated) taken by batch pods while it sleeps: 20Gi no longer fit.
	for i := range gpusPerNode {
		p := util.MakePod().Namespace(e.ns).Name(fmt.Sprintf("batch-%d", i)).SchedulerName(util.SchedulerName).
			PriorityClassName(batchClass).GPU(1).GPUMemory("70Gi").Obj()
		if _, err := e.c.Client.CoreV1().Pods(e.ns).Create(t.Context(), p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		framework.WaitForPodRunning(t.Context(), t, e.c.Client, e.ns, p.Name, time.Minute)
	}
	if a := e.send(t.Context(), 1); a.err != nil || a.status != 200 || a.body != "answer 1" {
		t.Fatalf("request to the sleeping pod: %+v", a)
	}
	llm := e.h.Pod("llm")
	var victims []string
	for _, ck := range e.h.LatestCheckpoints() {
		if ck.Spec.Action == kv1.ActionSuspend && ck.Spec.Reason == kv1.ReasonPreemption {
			if ck.Spec.Preemptor == nil || ck.Spec.Preemptor.UID != string(llm.UID) {
				t.Errorf("suspension %s names preemptor %+v, want pod llm", ck.Name, ck.Spec.Preemptor)
			}
			victims = append(victims, ck.Spec.PodName)
		}
	}
	if len(victims) != 1 {
		t.Errorf("suspended for the wake: %v, want one batch pod", victims)
	}
	for _, a := range e.a.model.seen(e.ns) {
		if a.state != kv1.PodRunning {
			t.Errorf("request %s reached the pod while it was %s", a.seq, a.state)
		}
	}
	for _, d := range e.h.Deletions() {
		t.Errorf("pod %s was deleted", d)
	}
}
