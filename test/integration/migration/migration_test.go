// Package migration tests the migration of suspended pods between nodes on a real control plane:
// two kwok nodes of one GPU each, the node agent in --simulate mode writing simulated checkpoint
// images into a folder both nodes share, and kybernate-scheduler with the shipped profile (its
// migration controller moves pods after 1 s of waiting here instead of 30 s).
package migration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/image"
	"github.com/kybernate/kybernate/nodeagent/sim"
	"github.com/kybernate/kybernate/scheduler/migrate"
	"github.com/kybernate/kybernate/test/integration/framework"
	"github.com/kybernate/kybernate/test/util"
)

const (
	nodes       = 2
	gpusPerNode = 1
	slotsPerGPU = 2
	nodeA       = "kwok-gpu-0"
	nodeB       = "kwok-gpu-1"
	// Simulated driver rates, faster than a real one so that the tests take seconds.
	checkpointRate = 40e9
	restoreRate    = 80e9

	low  = "kyb-mig-low"
	high = "kyb-mig-high"
)

func TestMain(m *testing.M) {
	framework.MainWithGPUNodes(m, nodes, gpusPerNode)
}

var (
	setupOnce sync.Once
	setupOK   bool
	imageDir  string
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
		// The folder both simulated nodes write images into and read them from: the shared
		// mount of a real cluster.
		var err error
		if imageDir, err = os.MkdirTemp("", "kybernate-migration-images-"); err != nil {
			t.Fatal(err)
		}
		c.StartKybernate(t, map[string]int32{low: 100, high: 10000}, map[string]string{
			"migrationMinWait: 30s":               "migrationMinWait: 1s",
			"migrationBytesPerSecond: 1073741824": "migrationBytesPerSecond: 107374182400",
		},
			"--slots-per-gpu", fmt.Sprint(slotsPerGPU), "--checkpoint-dir", imageDir,
			"--simulate-checkpoint-rate", fmt.Sprint(int64(checkpointRate)), "--simulate-restore-rate", fmt.Sprint(int64(restoreRate)),
			"--simulate-progress-period", "300ms")
		setupOK = true
	})
	if !setupOK {
		t.Fatal("setup failed in an earlier test")
	}
	framework.WaitForGPUNodes(t.Context(), t, kc, nodes, gpusPerNode, time.Minute)
	return env{c: c, kc: kc}
}

func gpuPod(ns, name, class string) *util.PodWrapper {
	return util.MakePod().Namespace(ns).Name(name).SchedulerName("kybernate-scheduler").PriorityClassName(class).GPU(1)
}

func (e env) create(t *testing.T, pods ...*v1.Pod) {
	t.Helper()
	for _, p := range pods {
		if _, err := e.c.Client.CoreV1().Pods(p.Namespace).Create(t.Context(), p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

func state(p *v1.Pod) kv1.PodGPUState {
	s := kv1.PodGPUState(p.Annotations[kv1.AnnotationState])
	if s == "" && p.Annotations[kv1.AnnotationGPUs] != "" {
		s = kv1.PodRunning
	}
	return s
}

func (e env) waitState(t *testing.T, ns, name string, s kv1.PodGPUState, timeout time.Duration) *v1.Pod {
	t.Helper()
	return framework.WaitForPod(t.Context(), t, e.c.Client, ns, name, timeout, "state "+string(s), func(p *v1.Pod) bool { return state(p) == s })
}

// suspendOnA sets the scene: a blocker holds node B's GPU, the pod "train" runs on node A until
// a high-priority pod pinned to A suspends it. It returns train's progress when suspended.
func (e env) suspendOnA(t *testing.T, ns string, fault string) time.Duration {
	t.Helper()
	e.create(t, gpuPod(ns, "blocker", low).NodeSelector(v1.LabelHostname, nodeB).Obj())
	e.waitState(t, ns, "blocker", kv1.PodRunning, time.Minute)
	train := gpuPod(ns, "train", low)
	if fault != "" {
		train = train.Annotation(sim.AnnotationFail, fault)
	}
	e.create(t, train.Obj())
	p := e.waitState(t, ns, "train", kv1.PodRunning, time.Minute)
	if p.Spec.NodeName != nodeA {
		t.Fatalf("train on node %s, want %s (the only free GPU)", p.Spec.NodeName, nodeA)
	}
	framework.WaitForPod(t.Context(), t, e.c.Client, ns, "train", time.Minute, "progress 2s", func(p *v1.Pod) bool { return sim.ProgressOf(p) >= 2*time.Second })
	e.create(t, gpuPod(ns, "urgent", high).NodeSelector(v1.LabelHostname, nodeA).Obj())
	e.waitState(t, ns, "train", kv1.PodSuspended, time.Minute)
	framework.WaitForPodRunning(t.Context(), t, e.c.Client, ns, "urgent", time.Minute)
	// The published counter catches up with the parked one within a progress period: urgent's
	// own counter reaching a second shows that periods have passed since train was suspended.
	framework.WaitForPod(t.Context(), t, e.c.Client, ns, "urgent", time.Minute, "progress 1s", func(p *v1.Pod) bool { return sim.ProgressOf(p) >= time.Second })
	return sim.ProgressOf(e.pod(t, ns, "train"))
}

func (e env) pod(t *testing.T, ns, name string) *v1.Pod {
	t.Helper()
	p, err := e.c.Client.CoreV1().Pods(ns).Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// watchInvariant records the namespace's pods from now on (a List, then a watch) and, when
// the returned stop is called, replays every recorded change: after each one the pod train or a
// replacement of it exists and never two of them run (state Running). A List or watch error
// fails the test when it ends.
func (e env) watchInvariant(t *testing.T, ns string) (stop func()) {
	t.Helper()
	h := e.c.Record(t, ns)
	return func() {
		t.Helper()
		live := map[string]*v1.Pod{}
		for _, c := range h.Pods() {
			p := c.Pod
			if p.Name != "train" && !strings.HasPrefix(p.Annotations[kv1.AnnotationMigratedFrom], ns+"/train/") {
				continue
			}
			if c.Type == watch.Deleted {
				delete(live, p.Name)
			} else {
				live[p.Name] = p
			}
			alive, running := 0, 0
			var seen []string
			for _, q := range live {
				if q.DeletionTimestamp == nil {
					alive++
					if state(q) == kv1.PodRunning {
						running++
					}
				}
				seen = append(seen, fmt.Sprintf("%s(%s)", q.Name, state(q)))
			}
			at := c.Time.Format("15:04:05.000")
			if alive == 0 {
				t.Errorf("%s: neither train nor a replacement exists: %v", at, seen)
			}
			if running > 1 {
				t.Errorf("%s: two copies run: %s", at, strings.Join(seen, ", "))
			}
		}
	}
}

// replacements lists the replacements of train.
func (e env) replacements(t *testing.T, ns string) []v1.Pod {
	t.Helper()
	pods, err := e.c.Client.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []v1.Pod
	for _, p := range pods.Items {
		if strings.HasPrefix(p.Annotations[kv1.AnnotationMigratedFrom], ns+"/train/") {
			out = append(out, p)
		}
	}
	return out
}

// waitMigrationResult waits for the first migration Checkpoint of train to get its result.
func (e env) waitMigrationResult(t *testing.T, ns string, timeout time.Duration) kv1.GPUCheckpoint {
	t.Helper()
	var got kv1.GPUCheckpoint
	framework.WaitFor(t.Context(), t, timeout, "a migration result", func(ctx context.Context) (bool, error) {
		list, err := e.kc.KybernateV1alpha1().GPUCheckpoints(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, ck := range list.Items {
			if ck.Spec.Action == kv1.ActionCheckpoint && ck.Spec.Reason == kv1.ReasonMigration && ck.Annotations[kv1.AnnotationMigrationResult] != "" {
				got = ck
				return true, nil
			}
		}
		return false, nil
	})
	return got
}

// A pod suspended on node A while a GPU frees only on node B moves there: checkpoint, a
// replacement restored on B from the verified image, the original deleted; its progress goes
// on from where it was suspended. At no moment are there two copies running or none at all.
func TestMigrateToFreeNode(t *testing.T) {
	e := setup(t)
	ns := e.c.CreateNamespace(t)
	parked := e.suspendOnA(t, ns, "")
	stop := e.watchInvariant(t, ns)

	start := time.Now()
	if err := e.c.Client.CoreV1().Pods(ns).Delete(t.Context(), "blocker", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	framework.WaitForPodGone(t.Context(), t, e.c.Client, ns, "train", 2*time.Minute)
	took := time.Since(start)
	stop()

	repl := e.replacements(t, ns)
	if len(repl) != 1 {
		t.Fatalf("%d replacements of train, want 1", len(repl))
	}
	r := repl[0]
	if r.Spec.NodeName != nodeB || state(&r) != kv1.PodRunning {
		t.Fatalf("replacement %s on node %s in state %s, want Running on %s", r.Name, r.Spec.NodeName, state(&r), nodeB)
	}
	dir := r.Annotations[kv1.AnnotationRestoreFrom]
	if !strings.HasPrefix(dir, imageDir+"/") {
		t.Errorf("replacement restores from %q, want an image under %s", dir, imageDir)
	}
	if _, err := image.Verify(dir); err != nil {
		t.Errorf("image kept after the migration does not verify: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, sim.RecordFile)); err != nil {
		t.Errorf("image is not labelled simulated: %v", err)
	}
	// Progress continues from the checkpointed value: the first the agent publishes for the
	// replacement (which starts without one) is at least that.
	first := framework.WaitForPod(t.Context(), t, e.c.Client, ns, r.Name, 30*time.Second, "a progress value",
		func(p *v1.Pod) bool { return p.Annotations[sim.AnnotationProgress] != "" })
	if got := sim.ProgressOf(first); got < parked {
		t.Errorf("replacement's first progress %s, want at least %s, the value when it was checkpointed", got, parked)
	}
	p := framework.WaitForPod(t.Context(), t, e.c.Client, ns, r.Name, 30*time.Second, fmt.Sprintf("progress past %s", parked+2*time.Second),
		func(p *v1.Pod) bool { return sim.ProgressOf(p) >= parked+2*time.Second })
	t.Logf("migrated in %s; progress %s when suspended, %s on node B", took.Round(time.Millisecond), parked, sim.ProgressOf(p))

	cks, err := e.kc.KybernateV1alpha1().GPUCheckpoints(ns).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, ck := range cks.Items {
		if ck.Spec.Action == kv1.ActionRestore && ck.Spec.PodName == r.Name && ck.Status.Phase != kv1.PhaseSucceeded {
			t.Errorf("Restore %s is %s, want Succeeded", ck.Name, ck.Status.Phase)
		}
	}
	if r.Annotations[kv1.AnnotationGPUs] == "" {
		t.Errorf("replacement has no GPUs")
	}
	e.waitEvent(t, ns, r.Name, migrate.EventMigrated)
}

// waitEvent waits for an Event of the given reason about the named pod. Events are recorded
// asynchronously, so one may land after the state change it reports.
func (e env) waitEvent(t *testing.T, ns, name, reason string) {
	t.Helper()
	var seen string
	err := framework.Poll(t.Context(), 30*time.Second, func(context.Context) (bool, error) {
		seen = e.events(t, ns, name)
		return slices.Contains(strings.Split(seen, ","), reason), nil
	})
	if err != nil {
		t.Errorf("%s's events %s, want %s (%v)", name, seen, reason, err)
	}
}

func (e env) events(t *testing.T, ns, name string) string {
	t.Helper()
	list, err := e.c.Client.EventsV1().Events(ns).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var reasons []string
	for _, ev := range list.Items {
		if ev.Regarding.Name == name {
			reasons = append(reasons, ev.Reason)
		}
	}
	return strings.Join(reasons, ",")
}

// A migration that fails at any step leaves the original suspended on node A, where it was,
// and no replacement: never neither, never both.
func TestMigrationFailures(t *testing.T) {
	e := setup(t)
	for _, tc := range []struct {
		fault string
		// replaced: whether a replacement was made before the failure.
		replaced bool
	}{
		{fault: sim.FaultDump},
		{fault: sim.FaultCorruptImage, replaced: true},
		{fault: sim.FaultRestoreImage, replaced: true},
	} {
		t.Run(tc.fault, func(t *testing.T) {
			ns := e.c.CreateNamespace(t)
			e.suspendOnA(t, ns, tc.fault)
			stop := e.watchInvariant(t, ns)
			if err := e.c.Client.CoreV1().Pods(ns).Delete(t.Context(), "blocker", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			ck := e.waitMigrationResult(t, ns, 2*time.Minute)
			if got := ck.Annotations[kv1.AnnotationMigrationResult]; got != kv1.MigrationFailed {
				t.Errorf("migration result %s, want %s (checkpoint %s: %s)", got, kv1.MigrationFailed, ck.Status.Phase, ck.Status.Message)
			}
			if wantPhase := map[bool]kv1.CheckpointPhase{false: kv1.PhaseFailed, true: kv1.PhaseSucceeded}[tc.replaced]; ck.Status.Phase != wantPhase {
				t.Errorf("checkpoint %s, want %s", ck.Status.Phase, wantPhase)
			}
			framework.WaitFor(t.Context(), t, 30*time.Second, "no replacement", func(context.Context) (bool, error) {
				return len(e.replacements(t, ns)) == 0, nil
			})
			train := e.waitState(t, ns, "train", kv1.PodSuspended, 30*time.Second)
			stop()
			if train.Spec.NodeName != nodeA || train.DeletionTimestamp != nil {
				t.Errorf("train on %s (deleting: %v), want suspended on %s", train.Spec.NodeName, train.DeletionTimestamp != nil, nodeA)
			}
			e.waitEvent(t, ns, "train", migrate.EventMigrationFailed)
		})
	}
}
