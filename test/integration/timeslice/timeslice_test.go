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

// watcher samples the pods' progress counters and GPU states.
type watcher struct {
	e     env
	ns    string
	names []string

	mu sync.Mutex
	// progress is the last sample of each pod; first is when a pod was first seen resident.
	progress map[string]time.Duration
	first    map[string]time.Time
	// shrank records a counter that went backwards.
	shrank []string
	// resident is which pods were on the GPU at the last sample.
	resident map[string]bool
}

func (e env) watch(t *testing.T, ns string, names ...string) *watcher {
	w := &watcher{e: e, ns: ns, names: names, progress: map[string]time.Duration{}, first: map[string]time.Time{}, resident: map[string]bool{}}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				w.sample(t)
			}
		}
	}()
	t.Cleanup(func() { close(done); <-stopped })
	return w
}

func (w *watcher) sample(t *testing.T) {
	list, err := w.e.c.Client.CoreV1().Pods(w.ns).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range list.Items {
		got := sim.ProgressOf(&p)
		if prev, ok := w.progress[p.Name]; ok && got < prev {
			w.shrank = append(w.shrank, fmt.Sprintf("%s: %s -> %s", p.Name, prev, got))
		}
		w.progress[p.Name] = got
		state := kv1.PodGPUState(p.Annotations[kv1.AnnotationState])
		res := p.Spec.NodeName != "" && p.Annotations[kv1.AnnotationGPUs] != "" && (state == "" || state == kv1.PodRunning)
		w.resident[p.Name] = res
		if _, seen := w.first[p.Name]; res && !seen {
			w.first[p.Name] = time.Now()
		}
	}
}

func (w *watcher) snapshot() (progress map[string]time.Duration, first map[string]time.Time, resident map[string]bool, shrank []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	progress, first, resident = map[string]time.Duration{}, map[string]time.Time{}, map[string]bool{}
	for k, v := range w.progress {
		progress[k] = v
	}
	for k, v := range w.first {
		first[k] = v
	}
	for k, v := range w.resident {
		resident[k] = v
	}
	return progress, first, resident, append([]string(nil), w.shrank...)
}

// waitFor polls the watcher until cond holds or the timeout passes.
func (w *watcher) waitFor(t *testing.T, timeout time.Duration, what string, cond func(progress map[string]time.Duration, resident map[string]bool) bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		progress, _, resident, _ := w.snapshot()
		if cond(progress, resident) {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	progress, _, resident, _ := w.snapshot()
	t.Fatalf("timed out after %s waiting for %s; progress %v, resident %v", timeout, what, progress, resident)
}

func total(progress map[string]time.Duration, names []string) time.Duration {
	var sum time.Duration
	for _, n := range names {
		sum += progress[n]
	}
	return sum
}

// Three equal-priority pods on one GPU that fits one take turns: each gets a turn within three
// quanta, their GPU-time shares converge, the counters only grow; a high-priority pod interrupts
// the rotation and it continues after the pod is gone.
func TestRotation(t *testing.T) {
	e := setup(t)
	ns := e.c.CreateNamespace(t)
	names := []string{"a", "b", "c"}
	w := e.watch(t, ns, names...)
	start := time.Now()
	for _, n := range names {
		if _, err := e.c.Client.CoreV1().Pods(ns).Create(t.Context(), gpuPod(ns, n, low), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	// Each gets a turn within three quanta.
	w.waitFor(t, 3*quantum+5*time.Second, "every pod's first turn", func(_ map[string]time.Duration, _ map[string]bool) bool {
		_, first, _, _ := w.snapshot()
		return len(first) == len(names)
	})
	_, first, _, _ := w.snapshot()
	for _, n := range names {
		t.Logf("%s: first turn %.1f s after creation", n, first[n].Sub(start).Seconds())
		if d := first[n].Sub(start); d > 3*quantum {
			t.Errorf("%s got its first turn after %s, want within 3 quanta (%s)", n, d, 3*quantum)
		}
	}

	// Shares after ten quanta of GPU time, read when the rotation is back at its first pod so
	// that every pod has had the same number of turns.
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
	time.Sleep(500 * time.Millisecond) // the counters of the pods that just yielded are final
	progress, _, _, _ := w.snapshot()
	sum := total(progress, names)
	for _, n := range names {
		share := float64(progress[n]) / float64(sum)
		t.Logf("%s: GPU time %s, share %.3f", n, progress[n], share)
		if share < 0.9/3 || share > 1.1/3 {
			t.Errorf("%s has %.1f%% of the GPU time, want 1/3 +-10%% (%.1f%%..%.1f%%)", n, 100*share, 100*0.9/3, 100*1.1/3)
		}
	}
	cks, err := e.kc.KybernateV1alpha1().GPUCheckpoints(ns).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var turns int
	for _, ck := range cks.Items {
		if ck.Spec.Action == kv1.ActionSuspend && ck.Spec.Reason == kv1.ReasonTimeSlice {
			turns++
		}
	}
	if turns < 3 {
		t.Errorf("%d TimeSlice suspensions, want at least 3", turns)
	}
	// What a user reads: the label and the GPU time on each pod.
	for _, n := range names {
		p, err := e.c.Client.CoreV1().Pods(ns).Get(t.Context(), n, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if l := p.Labels[kv1.LabelTimeSlice]; l != kv1.TimeSliceRunning && l != kv1.TimeSliceWaiting {
			t.Errorf("%s: label %s = %q, want Running or Waiting", n, kv1.LabelTimeSlice, l)
		}
		if _, err := time.ParseDuration(p.Annotations[kv1.AnnotationGPUTime]); err != nil {
			t.Errorf("%s: annotation %s = %q: %v", n, kv1.AnnotationGPUTime, p.Annotations[kv1.AnnotationGPUTime], err)
		}
	}

	// A high-priority pod interrupts the rotation at once.
	before, _, _, _ := w.snapshot()
	if _, err := e.c.Client.CoreV1().Pods(ns).Create(t.Context(), gpuPod(ns, "urgent", high), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, 10*time.Second, "the high-priority pod on the GPU", func(_ map[string]time.Duration, resident map[string]bool) bool {
		return resident["urgent"]
	})
	during, _, _, _ := w.snapshot()
	time.Sleep(2 * quantum)
	after, _, resident, _ := w.snapshot()
	for _, n := range names {
		if resident[n] {
			t.Errorf("%s is on the GPU beside the high-priority pod", n)
		}
		if after[n] != during[n] {
			t.Errorf("%s progressed from %s to %s while the high-priority pod ran", n, during[n], after[n])
		}
	}
	t.Logf("the high-priority pod took the GPU; the rotation stood still for %s", 2*quantum)

	// Gone again: the rotation continues, every pod progresses.
	if err := e.c.Client.CoreV1().Pods(ns).Delete(t.Context(), "urgent", *metav1.NewDeleteOptions(0)); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, 4*quantum+10*time.Second, "every pod progressing after the interruption", func(progress map[string]time.Duration, _ map[string]bool) bool {
		for _, n := range names {
			if progress[n] <= after[n] {
				return false
			}
		}
		return true
	})
	_, _, _, shrank := w.snapshot()
	if len(shrank) > 0 {
		t.Errorf("progress counters went backwards: %v", shrank)
	}
	t.Logf("progress before the interruption %v, after it %v", before, after)
}

// A pod that ends frees its turn at once: the next pod starts without waiting for the quantum.
func TestEndedPodFreesItsTurn(t *testing.T) {
	e := setup(t)
	ns := e.c.CreateNamespace(t)
	w := e.watch(t, ns, "first", "second")
	if _, err := e.c.Client.CoreV1().Pods(ns).Create(t.Context(), gpuPod(ns, "first", low), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, 30*time.Second, "the first pod on the GPU", func(_ map[string]time.Duration, resident map[string]bool) bool {
		return resident["first"]
	})
	if _, err := e.c.Client.CoreV1().Pods(ns).Create(t.Context(), gpuPod(ns, "second", low), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // the second pod is nominated and waits for its turn
	if err := e.c.Client.CoreV1().Pods(ns).Delete(t.Context(), "first", *metav1.NewDeleteOptions(0)); err != nil {
		t.Fatal(err)
	}
	gone := time.Now()
	w.waitFor(t, quantum, "the second pod on the GPU before the quantum ends", func(_ map[string]time.Duration, resident map[string]bool) bool {
		return resident["second"]
	})
	t.Logf("the second pod took the GPU %.1f s after the first one ended", time.Since(gone).Seconds())
}
