// Package spread tests the spreading of pods over a node's GPUs on a real control plane: one
// kwok node with two GPUs, the node agent in --simulate mode (simulated GPUs; its progress
// counter is the pods' GPU-resident time), and kybernate-scheduler with the shipped profile and
// controller configuration. The scheduler bin-packs two pods onto one GPU; the spreading
// controller moves the smaller one onto the unused GPU (suspend, resume there), as the rule of
// gpupod.Spread decides and as the time-slice simulation (test/bench/timeslice) models it.
package spread

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/test/integration/framework"
	"github.com/kybernate/kybernate/test/util"
)

const (
	node  = "kwok-gpu-0"
	class = "kyb-spread"
	slots = 4
	// Simulated driver rates: a 40 GiB move takes a fraction of a second.
	checkpointRate = 500e9
	restoreRate    = 1000e9
	// timeout bounds each wait for the scheduler, a move of the agent, or an Event.
	timeout = time.Minute
	// delay is the controllers' spreadingDelay here (shipped: 30s).
	delay = 2 * time.Second
)

func TestMain(m *testing.M) {
	framework.MainWithGPUNodes(m, 1, 2)
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
		c.StartKybernate(t, map[string]int32{class: 100}, map[string]string{"spreadingDelay: 30s": "spreadingDelay: " + delay.String()},
			"--slots-per-gpu", fmt.Sprint(slots),
			"--simulate-checkpoint-rate", fmt.Sprint(int64(checkpointRate)), "--simulate-restore-rate", fmt.Sprint(int64(restoreRate)),
			"--simulate-progress-period", "250ms")
		setupOK = true
	})
	if !setupOK {
		t.Fatal("setup failed in an earlier test")
	}
	framework.WaitForGPUNodes(t.Context(), t, kc, 1, 2, time.Minute)
	return env{c: c, kc: kc}
}

func gpuPod(ns, name, mem string) *v1.Pod {
	return util.MakePod().Namespace(ns).Name(name).SchedulerName("kybernate-scheduler").
		PriorityClassName(class).NodeSelector(v1.LabelHostname, node).GPU(1).GPUMemory(mem).Obj()
}

// residentOn is the GPU a version of a pod has its memory on, "" when none.
func residentOn(p *v1.Pod) string {
	if p == nil || p.Spec.NodeName == "" || p.DeletionTimestamp != nil {
		return ""
	}
	if s := gpupod.StateOf(p); s != kv1.PodRunning {
		return ""
	}
	return p.Annotations[kv1.AnnotationGPUs]
}

// firstGPU is the first GPU the history shows the pod placed on.
func firstGPU(h *framework.History, name string) string {
	for _, c := range h.PodVersions(name) {
		if g := c.Pod.Annotations[kv1.AnnotationGPUs]; g != "" {
			return g
		}
	}
	return ""
}

// firstResident is when the history first shows the pod on a GPU.
func firstResident(h *framework.History, name string) time.Time {
	for _, c := range h.PodVersions(name) {
		if residentOn(c.Pod) != "" {
			return c.Time
		}
	}
	return time.Time{}
}

// spreadAt is when the history first shows the pod's Suspend GPUCheckpoint with reason Spread.
func spreadAt(h *framework.History, name string) time.Time {
	for _, c := range h.Checkpoints() {
		if ck := c.Checkpoint; ck.Spec.PodName == name && ck.Spec.Action == kv1.ActionSuspend && ck.Spec.Reason == kv1.ReasonSpread {
			return c.Time
		}
	}
	return time.Time{}
}

// spreads lists the pods of the Suspend GPUCheckpoints with reason Spread in the history, in
// order of creation, each once.
func spreads(h *framework.History) []string {
	var out []string
	seen := map[string]bool{}
	for _, c := range h.Checkpoints() {
		ck := c.Checkpoint
		if ck.Spec.Action == kv1.ActionSuspend && ck.Spec.Reason == kv1.ReasonSpread && !seen[ck.Name] {
			seen[ck.Name] = true
			out = append(out, ck.Spec.PodName)
		}
	}
	return out
}

func create(t *testing.T, e env, p *v1.Pod) {
	t.Helper()
	if _, err := e.c.Client.CoreV1().Pods(p.Namespace).Create(t.Context(), p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// Two pods bin-packed onto one of two GPUs: once they have stayed there for spreadingDelay, the
// smaller moves onto the unused GPU (a suspend and a resume there), the larger never moves, the moved pod's progress stands still while it
// is suspended and goes on after. With every GPU taken nothing spreads; when a GPU frees again,
// the smaller of the two pods that share the other moves onto it.
func TestSpreadOntoUnusedGPU(t *testing.T) {
	e := setup(t)
	ns := e.c.CreateNamespace(t)
	h := e.c.Record(t, ns)
	t.Cleanup(func() { framework.AuditGPUs(t, e.kc, h, slots) })

	create(t, e, gpuPod(ns, "big", "40Gi"))
	big := h.WaitPod(t, "big", timeout, "on a GPU", func(p *v1.Pod) bool { return residentOn(p) != "" })
	home := residentOn(big)
	create(t, e, gpuPod(ns, "small", "20Gi"))
	h.Wait(t, timeout, "small on a GPU of its own", func() bool {
		s := residentOn(h.Pod("small"))
		return s != "" && s != home && residentOn(h.Pod("big")) == home
	})
	other := residentOn(h.Pod("small"))
	// The agent marks the pod Running before it ends the GPUCheckpoint.
	h.Wait(t, timeout, "the resume of small ended", func() bool {
		for _, ck := range h.LatestCheckpoints() {
			if ck.Spec.PodName == "small" && ck.Spec.Action == kv1.ActionResume {
				return ck.Status.Phase == kv1.PhaseSucceeded || ck.Status.Phase == kv1.PhaseFailed
			}
		}
		return false
	})

	// The scheduler packed the pods together first: the move is the spreading's.
	if g := firstGPU(h, "small"); g != home {
		t.Fatalf("small was first placed on %s, want %s beside big (MostAllocated): the test shows no spreading", g, home)
	}
	if got := spreads(h); !slices.Equal(got, []string{"small"}) {
		t.Errorf("pods suspended to spread: %v, want [small] (the fewest bytes)", got)
	}
	// Not before the node's pods stayed where they were for spreadingDelay (the API's time
	// stamps the controller reads have whole seconds: one second of slack).
	if waited := spreadAt(h, "small").Sub(firstResident(h, "small")); waited < delay-time.Second {
		t.Errorf("small was suspended to spread %s after it was placed, want spreadingDelay (%s) at least", waited, delay)
	}
	if got, want := h.StatesOf("small"), []kv1.PodGPUState{kv1.PodRunning, kv1.PodSuspending, kv1.PodSuspended, kv1.PodResuming, kv1.PodRunning}; !slices.Equal(got, want) {
		t.Errorf("states of small: %v, want %v", got, want)
	}
	for _, c := range h.PodVersions("big") {
		if g := c.Pod.Annotations[kv1.AnnotationGPUs]; gpupod.StateOf(c.Pod) != kv1.PodRunning || (g != "" && g != home) {
			t.Errorf("%s: big is %s on %q; it should never move", c.Time.Format("15:04:05.000"), gpupod.StateOf(c.Pod), g)
		}
	}
	var resumedTo []string
	for _, ck := range h.LatestCheckpoints() {
		if ck.Spec.PodName == "small" && ck.Spec.Action == kv1.ActionResume {
			resumedTo = append(resumedTo, fmt.Sprint(ck.Spec.TargetGPUs, " ", ck.Status.Phase))
		}
	}
	if want := []string{fmt.Sprint([]string{other}, " ", kv1.PhaseSucceeded)}; !slices.Equal(resumedTo, want) {
		t.Errorf("resumes of small: %v, want %v", resumedTo, want)
	}
	// The progress counter stands still while suspended and goes on after the move.
	frozen := h.ProgressFrozenWhileSuspended(t, "small")
	h.WaitPod(t, "small", timeout, "progressing on its new GPU", func(p *v1.Pod) bool {
		return gpupod.SimulatedProgress(p) >= frozen+time.Second
	})
	waitEvent(t, e, ns, "small", "Spreading")

	// Every GPU taken: a third pod is packed beside big (best fit), and nothing is unused. When
	// small ends, its GPU is unused again and the smaller of big and third moves onto it.
	create(t, e, gpuPod(ns, "third", "10Gi"))
	h.WaitPod(t, "third", timeout, "on a GPU", func(p *v1.Pod) bool { return residentOn(p) != "" })
	if g := firstGPU(h, "third"); g != home {
		t.Fatalf("third was placed on %s, want %s beside big (best fit)", g, home)
	}
	if got := spreads(h); !slices.Equal(got, []string{"small"}) {
		t.Errorf("pods suspended to spread with no GPU unused: %v, want only the earlier [small]", got)
	}
	if err := e.c.Client.CoreV1().Pods(ns).Delete(t.Context(), "small", *metav1.NewDeleteOptions(0)); err != nil {
		t.Fatal(err)
	}
	h.Wait(t, timeout, "third on the GPU small left", func() bool {
		return residentOn(h.Pod("third")) == other && residentOn(h.Pod("big")) == home
	})
	if got := spreads(h); !slices.Equal(got, []string{"small", "third"}) {
		t.Errorf("pods suspended to spread: %v, want [small third]", got)
	}
	h.ProgressFrozenWhileSuspended(t, "third")
	h.ProgressFrozenWhileSuspended(t, "big")
}

// waitEvent waits for an Event of the given reason on the pod.
func waitEvent(t *testing.T, e env, ns, pod, reason string) {
	t.Helper()
	framework.WaitFor(t.Context(), t, timeout, "a "+reason+" Event on "+pod, func(ctx context.Context) (bool, error) {
		list, err := e.c.Client.EventsV1().Events(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, ev := range list.Items {
			if ev.Regarding.Name == pod && ev.Reason == reason {
				return true, nil
			}
		}
		return false, nil
	})
}
