// Package timeslice tests time slicing on a real control plane: one kwok node with one GPU,
// the node agent in --simulate mode (its progress counter is the pods' GPU-resident time), and
// kybernate-scheduler with the shipped profile and a short quantum.
package timeslice

import (
	"fmt"
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
	node    = "kwok-gpu-0"
	quantum = 5 * time.Second
	// Simulated driver rates: 50 GiB move in about 0.1 s, so the floor (10x suspend+resume)
	// stays under the quantum.
	checkpointRate = 500e9
	restoreRate    = 1000e9

	low  = "kyb-ts-low"
	high = "kyb-ts-high"
)

func TestMain(m *testing.M) {
	framework.MainWithGPUNodes(m, 1, 1)
}

var (
	setupOnce sync.Once
	setupOK   bool
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
		// Four slots: three pods that take turns and one high-priority pod.
		c.StartKybernate(t, map[string]int32{low: 100, high: 10000}, map[string]string{"timeSliceQuantum: 60s": "timeSliceQuantum: " + quantum.String()},
			"--slots-per-gpu", "4",
			"--simulate-checkpoint-rate", fmt.Sprint(int64(checkpointRate)), "--simulate-restore-rate", fmt.Sprint(int64(restoreRate)),
			"--simulate-progress-period", "250ms")
		setupOK = true
	})
	if !setupOK {
		t.Fatal("setup failed in an earlier test")
	}
	framework.WaitForGPUNodes(t.Context(), t, kc, 1, 1, time.Minute)
	return env{c: c, kc: kc}
}

// gpuPod asks for 50Gi of the node's one 80 GiB GPU: one fits at a time.
func gpuPod(ns, name, class string) *v1.Pod {
	return util.MakePod().Namespace(ns).Name(name).SchedulerName("kybernate-scheduler").
		PriorityClassName(class).NodeSelector(v1.LabelHostname, node).GPU(1).GPUMemory("50Gi").Obj()
}

// watcher reads the pods' progress counters and GPU states from the namespace's history: every
// version of every pod, recorded by a watch from the test's start.
type watcher struct {
	e env
	h *framework.History
}

func (e env) watch(t *testing.T, ns string) *watcher {
	return &watcher{e: e, h: e.c.Record(t, ns)}
}

// resident reports whether a version of a pod is on the GPU.
func resident(p *v1.Pod) bool {
	state := kv1.PodGPUState(p.Annotations[kv1.AnnotationState])
	return p.Spec.NodeName != "" && p.Annotations[kv1.AnnotationGPUs] != "" && p.DeletionTimestamp == nil &&
		(state == "" || state == kv1.PodRunning)
}

// snapshot is the pods' progress and residency as last recorded, and when each was first
// recorded resident.
func (w *watcher) snapshot() (progress map[string]time.Duration, first map[string]time.Time, res map[string]bool) {
	progress, first, res = map[string]time.Duration{}, map[string]time.Time{}, map[string]bool{}
	for _, c := range w.h.Pods() {
		name := c.Pod.Name
		progress[name] = sim.ProgressOf(c.Pod)
		res[name] = resident(c.Pod)
		if _, seen := first[name]; res[name] && !seen {
			first[name] = c.Time
		}
	}
	return progress, first, res
}

// shrank lists every counter that went backwards between two recorded versions.
func (w *watcher) shrank() []string {
	last := map[string]time.Duration{}
	var out []string
	for _, c := range w.h.Pods() {
		got := sim.ProgressOf(c.Pod)
		if prev, ok := last[c.Pod.Name]; ok && got < prev {
			out = append(out, fmt.Sprintf("%s: %s -> %s", c.Pod.Name, prev, got))
		}
		last[c.Pod.Name] = got
	}
	return out
}

// waitFor waits until cond holds for the pods as last recorded, re-checking at every change.
func (w *watcher) waitFor(t *testing.T, timeout time.Duration, what string, cond func(progress map[string]time.Duration, resident map[string]bool) bool) {
	t.Helper()
	w.h.Wait(t, timeout, what, func() bool {
		progress, _, res := w.snapshot()
		return cond(progress, res)
	})
}

// turns counts the TimeSlice suspensions of each pod in the history.
func (w *watcher) turns() map[string]int {
	seen := map[string]bool{}
	out := map[string]int{}
	for _, c := range w.h.Checkpoints() {
		ck := c.Checkpoint
		if ck.Spec.Action == kv1.ActionSuspend && ck.Spec.Reason == kv1.ReasonTimeSlice && !seen[ck.Name] {
			seen[ck.Name] = true
			out[ck.Spec.PodName]++
		}
	}
	return out
}

// slowestMove is the longest suspension plus the longest resume the agent measured so far
// (GPUCheckpoint steps): what a turn change may take beyond the scheduler's decision.
func (w *watcher) slowestMove() time.Duration {
	var suspend, resume time.Duration
	for _, ck := range w.h.LatestCheckpoints() {
		var d time.Duration
		for _, s := range ck.Status.Steps {
			d += s.Duration.Duration
		}
		switch ck.Spec.Action {
		case kv1.ActionSuspend:
			suspend = max(suspend, d)
		case kv1.ActionResume:
			resume = max(resume, d)
		}
	}
	return suspend + resume
}

// Three equal-priority pods on one GPU that fits one take turns: each gets a turn within three
// quanta and three turn changes as the agent measured them, they have had the same number of
// turns when the rotation is back at its first pod, the counters only grow; a high-priority
// pod interrupts the rotation and it continues after the pod is gone. The GPU-time shares are
// logged as figures: they depend on the machine's speed.
func TestRotation(t *testing.T) {
	e := setup(t)
	ns := e.c.CreateNamespace(t)
	names := []string{"a", "b", "c"}
	w := e.watch(t, ns)
	start := time.Now()
	for _, n := range names {
		if _, err := e.c.Client.CoreV1().Pods(ns).Create(t.Context(), gpuPod(ns, n, low), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	// Each gets a turn within three quanta plus three turn changes.
	w.waitFor(t, 3*quantum+30*time.Second, "every pod's first turn", func(_ map[string]time.Duration, _ map[string]bool) bool {
		_, first, _ := w.snapshot()
		return len(first) == len(names)
	})
	_, first, _ := w.snapshot()
	limit := 3 * (quantum + w.slowestMove())
	for _, n := range names {
		t.Logf("%s: first turn %.1f s after creation", n, first[n].Sub(start).Seconds())
		if d := first[n].Sub(start); d > limit {
			t.Errorf("%s got its first turn after %s, want within 3 quanta and 3 measured turn changes (%s)", n, d, limit)
		}
	}

	// Turns after ten quanta of GPU time, counted when the rotation is back at its first pod.
	w.waitFor(t, 20*quantum, "ten quanta of GPU time", func(progress map[string]time.Duration, _ map[string]bool) bool {
		return total(progress, names) >= 10*quantum
	})
	firstPod := names[0]
	for _, n := range names {
		if first[n].Before(first[firstPod]) {
			firstPod = n
		}
	}
	w.waitFor(t, 3*quantum+10*time.Second, "the rotation back at "+firstPod, func(_ map[string]time.Duration, resident map[string]bool) bool {
		return resident[firstPod]
	})
	// The pods that just yielded publish their last count within a progress period; the one
	// back on the GPU counting a second more shows that period has passed.
	back, _, _ := w.snapshot()
	w.waitFor(t, 30*time.Second, firstPod+" a second further", func(progress map[string]time.Duration, _ map[string]bool) bool {
		return progress[firstPod] >= back[firstPod]+time.Second
	})
	progress, _, _ := w.snapshot()
	turns := w.turns()
	sum := total(progress, names)
	for _, n := range names {
		t.Logf("%s: GPU time %s, share %.3f, %d turns given up", n, progress[n], float64(progress[n])/float64(sum), turns[n])
		if progress[n] == 0 {
			t.Errorf("%s had no GPU time", n)
		}
	}
	// FIFO by GPU time: when the first pod is back, every pod has given up the GPU as often as
	// the others, the first pod once more at most.
	for _, n := range names {
		if d := turns[firstPod] - turns[n]; d < 0 || d > 1 {
			t.Errorf("turns given up %v: want the same number for every pod (%s, which started, one more at most)", turns, firstPod)
			break
		}
	}
	if turns[firstPod] < 1 || len(turns) != len(names) {
		t.Errorf("turns given up %v, want every pod to have given up the GPU", turns)
	}
	// What a user reads: the label and the GPU time on each pod.
	for _, n := range names {
		p := w.h.Pod(n)
		if l := p.Labels[kv1.LabelTimeSlice]; l != kv1.TimeSliceRunning && l != kv1.TimeSliceWaiting {
			t.Errorf("%s: label %s = %q, want Running or Waiting", n, kv1.LabelTimeSlice, l)
		}
		if _, err := time.ParseDuration(p.Annotations[kv1.AnnotationGPUTime]); err != nil {
			t.Errorf("%s: annotation %s = %q: %v", n, kv1.AnnotationGPUTime, p.Annotations[kv1.AnnotationGPUTime], err)
		}
	}

	// A high-priority pod interrupts the rotation at once; it stays on the GPU for two quanta
	// of its own progress, longer than any turn, and in all that time no other pod is on the
	// GPU or counts.
	if _, err := e.c.Client.CoreV1().Pods(ns).Create(t.Context(), gpuPod(ns, "urgent", high), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, 10*time.Second+w.slowestMove(), "the high-priority pod on the GPU", func(_ map[string]time.Duration, resident map[string]bool) bool {
		return resident["urgent"]
	})
	_, firstUrgent, _ := w.snapshot()
	during, _, _ := w.snapshot()
	w.waitFor(t, 2*quantum+30*time.Second, "two quanta of the high-priority pod", func(progress map[string]time.Duration, _ map[string]bool) bool {
		return progress["urgent"] >= 2*quantum
	})
	after, _, _ := w.snapshot()
	for _, c := range w.h.Pods() {
		if c.Pod.Name == "urgent" || c.Time.Before(firstUrgent["urgent"]) {
			continue
		}
		if resident(c.Pod) {
			t.Errorf("%s: %s is on the GPU beside the high-priority pod", c.Time.Format("15:04:05.000"), c.Pod.Name)
		}
	}
	for _, n := range names {
		if after[n] != during[n] {
			t.Errorf("%s progressed from %s to %s while the high-priority pod ran", n, during[n], after[n])
		}
	}
	t.Logf("the high-priority pod took the GPU; the rotation stood still for %s of its progress", after["urgent"])

	// Gone again: the rotation continues, every pod progresses.
	if err := e.c.Client.CoreV1().Pods(ns).Delete(t.Context(), "urgent", *metav1.NewDeleteOptions(0)); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, 4*quantum+30*time.Second, "every pod progressing after the interruption", func(progress map[string]time.Duration, _ map[string]bool) bool {
		for _, n := range names {
			if progress[n] <= after[n] {
				return false
			}
		}
		return true
	})
	if shrank := w.shrank(); len(shrank) > 0 {
		t.Errorf("progress counters went backwards: %v", shrank)
	}
	t.Logf("progress when the high-priority pod came %v, when it left %v", during, after)
}

func total(progress map[string]time.Duration, names []string) time.Duration {
	var sum time.Duration
	for _, n := range names {
		sum += progress[n]
	}
	return sum
}

// A pod that ends frees its turn at once: the next pod starts without waiting for the quantum.
func TestEndedPodFreesItsTurn(t *testing.T) {
	e := setup(t)
	ns := e.c.CreateNamespace(t)
	w := e.watch(t, ns)
	if _, err := e.c.Client.CoreV1().Pods(ns).Create(t.Context(), gpuPod(ns, "first", low), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, 30*time.Second, "the first pod on the GPU", func(_ map[string]time.Duration, resident map[string]bool) bool {
		return resident["first"]
	})
	if _, err := e.c.Client.CoreV1().Pods(ns).Create(t.Context(), gpuPod(ns, "second", low), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The second pod waits for its turn: the scheduler has tried it and left it pending.
	w.h.WaitPod(t, "second", 30*time.Second, "pending for its turn", func(p *v1.Pod) bool {
		for _, c := range p.Status.Conditions {
			if c.Type == v1.PodScheduled && c.Status == v1.ConditionFalse {
				return true
			}
		}
		return p.Status.NominatedNodeName != ""
	})
	if err := e.c.Client.CoreV1().Pods(ns).Delete(t.Context(), "first", *metav1.NewDeleteOptions(0)); err != nil {
		t.Fatal(err)
	}
	gone := time.Now()
	w.waitFor(t, quantum, "the second pod on the GPU before the quantum ends", func(_ map[string]time.Duration, resident map[string]bool) bool {
		return resident["second"]
	})
	t.Logf("the second pod took the GPU %.1f s after the first one ended", time.Since(gone).Seconds())
	if n := w.turns()["first"]; n != 0 {
		t.Errorf("first was suspended %d times; it should have ended, not given up its turn", n)
	}
}
