// Package killstorm kills kybernate-scheduler and the simulated node agent with SIGKILL at
// random moments while a workload is under continuous preemption, time slicing and migration,
// on a real control plane with two kwok nodes of one simulated H100 (80 GiB) each. A watch records
// every pod, GPUNode and GPUCheckpoint change of the run; the audit replays it and checks
// that no GPU was ever accounted above its capacity, that no workload was ever lost or ran
// twice, and that after the last kill everything settles within convergenceBound: every
// workload exactly one pod, Running or Suspended, no GPUCheckpoint stuck, no simulated process
// or parked memory without its pod.
//
// The kills are drawn from a seed that the test prints; KYBERNATE_STORM_SEED=<seed> replays
// a run, KYBERNATE_STORM_KILLS=<n> changes how many kills there are (default 7).
package killstorm

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kybernate/kybernate/test/integration/framework"
	"github.com/kybernate/kybernate/test/util"
)

const (
	nodeA, nodeB = "kwok-gpu-0", "kwok-gpu-1"
	quantum      = 4 * time.Second
	// Simulated rates: a 40 GiB move takes about 0.1 s.
	checkpointRate = 500e9
	restoreRate    = 1000e9
	// convergenceBound is how long after the last kill (and the end of the preemptions)
	// everything must have settled. A killed scheduler holds the controllers' Lease until it
	// expires (15 s): its successor starts the resume, time-slice and migration controllers
	// only then.
	convergenceBound = 60 * time.Second

	low, high = "kyb-storm-low", "kyb-storm-high"
)

func TestMain(m *testing.M) {
	framework.MainWithGPUNodes(m, 2, 1)
}

// storm is the run's randomness, drawn from one seed.
type storm struct {
	seed  uint64
	kills int
	rng   *rand.Rand
}

func newStorm(t *testing.T) storm {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("KYBERNATE_STORM_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("KYBERNATE_STORM_SEED=%s: %v", s, err)
		}
		seed = v
	}
	kills := 7
	if s := os.Getenv("KYBERNATE_STORM_KILLS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("KYBERNATE_STORM_KILLS=%s: want a positive number", s)
		}
		kills = v
	}
	t.Logf("kill storm: seed %d, %d kills (replay with KYBERNATE_STORM_SEED=%d KYBERNATE_STORM_KILLS=%d)", seed, kills, seed, kills)
	return storm{seed: seed, kills: kills, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// between draws a duration in [lo, hi).
func (s storm) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(s.rng.Int64N(int64(hi-lo)))
}

func TestKillStorm(t *testing.T) {
	c := framework.Get(t)
	kc := c.Kybernate(t)
	ctx := t.Context()
	s := newStorm(t)

	images := t.TempDir()
	agentArgs := []string{"--slots-per-gpu", "6", "--checkpoint-dir", images,
		"--simulate-checkpoint-rate", fmt.Sprint(int64(checkpointRate)), "--simulate-restore-rate", fmt.Sprint(int64(restoreRate)),
		"--simulate-progress-period", "1s", "--dump-timeout", "10s", "--image-ttl", "20s", "--image-gc-interval", "2s", "--v=2"}
	k := c.StartKybernate(t, map[string]int32{low: 100, high: 10000}, map[string]string{
		"timeSliceQuantum: 60s":               "timeSliceQuantum: " + quantum.String(),
		"migrationMinWait: 30s":               "migrationMinWait: 1s",
		"migrationBytesPerSecond: 1073741824": "migrationBytesPerSecond: 107374182400",
	}, agentArgs...)
	framework.WaitForGPUNodes(ctx, t, kc, 2, 1, time.Minute)
	gns, err := kc.KybernateV1alpha1().GPUNodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	capacity := map[string]int64{}
	for _, gn := range gns.Items {
		for _, g := range gn.Status.GPUs {
			capacity[g.UUID] = g.MemoryTotalBytes
		}
	}

	ns := c.CreateNamespace(t)
	rec, err := record(c.Client, kc, ns)
	if err != nil {
		t.Fatal(err)
	}
	// The workload: two slicers of 50Gi pinned to node B take turns on its GPU (time
	// slicing); two movers of 30Gi go where there is room. A preemptor of a whole GPU on node
	// A or B suspends what is there; a suspended mover moves to the other node when it has
	// room (migration), the slicers wait for their node.
	var names []string
	for _, w := range []struct {
		name, memory, node string
	}{{"s0", "50Gi", nodeB}, {"s1", "50Gi", nodeB}, {"m0", "30Gi", ""}, {"m1", "30Gi", ""}} {
		names = append(names, w.name)
		p := util.MakePod().Namespace(ns).Name(w.name).SchedulerName("kybernate-scheduler").PriorityClassName(low).
			Label(labelWorkload, w.name).GPU(1).GPUMemory(w.memory)
		if w.node != "" {
			p = p.NodeSelector(v1.LabelHostname, w.node)
		}
		if _, err := c.Client.CoreV1().Pods(ns).Create(ctx, p.Obj(), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	// Preemptions all along: a high-priority pod takes a whole GPU, of one node then the
	// other, for a few seconds.
	pctx, stopPreempting := context.WithCancel(ctx)
	var pwg sync.WaitGroup
	pwg.Go(func() { preempt(pctx, t, c, ns, s.seed) })

	// The kills.
	start := time.Now()
	var log []string
	for i := range s.kills {
		time.Sleep(s.between(4*time.Second, 12*time.Second))
		restartAfter := s.between(0, 2*time.Second)
		// A killed scheduler stops the controllers for the Lease's 15 s: kill it a third of
		// the times, so that time slicing and migrations happen in between.
		if s.rng.IntN(3) == 0 {
			k.Scheduler.Kill()
			time.Sleep(restartAfter)
			k.Scheduler = c.Start(t, "kybernate-scheduler", k.SchedulerArgs...)
			log = append(log, fmt.Sprintf("%6.1fs kybernate-scheduler (restarted after %s)", time.Since(start).Seconds(), restartAfter.Round(time.Millisecond)))
		} else {
			k.Agent.Kill()
			time.Sleep(restartAfter)
			k.Agent = c.StartSimulatedAgent(t, agentArgs...)
			log = append(log, fmt.Sprintf("%6.1fs kybernate-agent (restarted after %s)", time.Since(start).Seconds(), restartAfter.Round(time.Millisecond)))
		}
		t.Logf("kill %d: %s", i+1, log[len(log)-1])
	}
	lastKill := time.Now()
	stopPreempting()
	pwg.Wait()

	// Convergence: the last state that settled within the bound.
	var last []string
	converged := time.Duration(-1)
	for time.Since(lastKill) < convergenceBound {
		if last = settledNow(ctx, t, c, ns, names); len(last) == 0 {
			converged = time.Since(lastKill)
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	changes, watchErrs := rec.stop()

	violations := auditHistory(changes, capacity)
	for _, e := range watchErrs {
		violations = append(violations, "watch: "+e)
	}
	if converged < 0 {
		for _, v := range last {
			violations = append(violations, fmt.Sprintf("not settled %s after the last kill: %s", convergenceBound, v))
		}
	}
	pods, migrated := 0, 0
	seenPods := map[string]bool{}
	for _, ch := range changes {
		if p := asPod(ch.obj); p != nil && !seenPods[string(p.UID)] {
			seenPods[string(p.UID)] = true
			pods++
			if p.Labels[labelWorkload] != "" && p.Labels[labelWorkload] != p.Name {
				migrated++
			}
		}
	}
	actions := map[string]int{}
	seenCks := map[string]bool{}
	for _, ch := range changes {
		if ck := asCheckpoint(ch.obj); ck != nil && !seenCks[string(ck.UID)] {
			seenCks[string(ck.UID)] = true
			actions[string(ck.Spec.Action)+"/"+string(ck.Spec.Reason)]++
		}
	}
	t.Logf("GPUCheckpoints by action/reason: %v", actions)
	for _, l := range log {
		t.Log("kill at " + l)
	}
	if len(violations) > 0 {
		// The history, to see how it came to this.
		for i, ch := range changes {
			t.Logf("change %d %s", i, describe(ch, start))
		}
	}
	reportViolations(t, violations)
	conv := "never"
	if converged >= 0 {
		conv = converged.Round(100 * time.Millisecond).String()
	}
	t.Logf("KILL STORM seed=%d: kills=%d pods=%d (replacements by migration %d) events audited=%d violations=%d converged=%s after the last kill (bound %s)",
		s.seed, s.kills, pods, migrated, len(changes), len(violations), conv, convergenceBound)
}

// settledNow lists the namespace's pods and GPUCheckpoints and the GPUNodes and says what is
// not settled yet.
func settledNow(ctx context.Context, t *testing.T, c *framework.Cluster, ns string, names []string) []string {
	kc := c.Kybernate(t)
	pods, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return []string{err.Error()}
	}
	cks, err := kc.KybernateV1alpha1().GPUCheckpoints(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return []string{err.Error()}
	}
	gns, err := kc.KybernateV1alpha1().GPUNodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return []string{err.Error()}
	}
	return settled(pods.Items, cks.Items, gns.Items, names)
}

// preempt creates a high-priority pod of a whole GPU on one node, keeps it a few seconds,
// deletes it, and goes on with the other node, until ctx ends; then it deletes its last pod.
func preempt(ctx context.Context, t *testing.T, c *framework.Cluster, ns string, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 1))
	bg := context.WithoutCancel(ctx)
	for i := 0; ctx.Err() == nil; i++ {
		node := []string{nodeA, nodeB}[i%2]
		name := fmt.Sprintf("urgent-%d", i)
		p := util.MakePod().Namespace(ns).Name(name).SchedulerName("kybernate-scheduler").PriorityClassName(high).
			NodeSelector(v1.LabelHostname, node).GPU(1).GPUMemory("80Gi").Obj()
		if _, err := c.Client.CoreV1().Pods(ns).Create(bg, p, metav1.CreateOptions{}); err != nil {
			t.Errorf("creating %s: %v", name, err)
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(3000+rng.IntN(4000)) * time.Millisecond):
		}
		if err := c.Client.CoreV1().Pods(ns).Delete(bg, name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("deleting %s: %v", name, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(500+rng.IntN(1500)) * time.Millisecond):
		}
	}
}

// reportViolations fails the test with each kind of violation once: the first change it was
// seen at and how many changes show it.
func reportViolations(t *testing.T, violations []string) {
	type seen struct {
		first string
		n     int
	}
	var order []string
	byText := map[string]*seen{}
	for _, v := range violations {
		text, at := v, ""
		if rest, ok := strings.CutPrefix(v, "change "); ok {
			if n, msg, ok := strings.Cut(rest, ": "); ok {
				text, at = msg, "change "+n
			}
		}
		if byText[text] == nil {
			byText[text] = &seen{first: at}
			order = append(order, text)
		}
		byText[text].n++
	}
	for _, text := range order {
		v := byText[text]
		t.Errorf("violation (%d times, first at %s): %s", v.n, v.first, text)
	}
}
