// Package extender tests extender mode on a real control plane: the control plane's own stock
// kube-scheduler, configured with kybernate-extender in its KubeSchedulerConfiguration, kwok
// nodes and the node agent in --simulate mode (simulated GPUs). Two pairs run: one scheduler
// profile whose extender bin-packs GPUs (and runs the controllers), one whose extender spreads.
package extender

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/sim"
	"github.com/kybernate/kybernate/test/integration/framework"
	"github.com/kybernate/kybernate/test/util"
)

const (
	nodes       = 8
	gpusPerNode = 8
	slotsPerGPU = 8
	low         = "kyb-test-low"
	high        = "kyb-test-high"
	// The schedulers' names: the stock kube-scheduler with a bin-packing or spreading extender.
	binpack = "stock-binpack"
	spread  = "stock-spread"
)

func TestMain(m *testing.M) {
	framework.MainWithGPUNodes(m, nodes, gpusPerNode)
}

// pair is a stock kube-scheduler and the extender it calls.
type pair struct {
	extender, scheduler *framework.Component
	extenderArgs        []string
	url                 string
}

var (
	setupOnce sync.Once
	setupOK   bool
	pairs     = map[string]*pair{}
)

type env struct {
	c  *framework.Cluster
	kc versioned.Interface
	h  *framework.History
	ns string
}

func setup(t *testing.T) env {
	t.Helper()
	c := framework.Get(t)
	kc := c.Kybernate(t)
	setupOnce.Do(func() {
		ctx := context.Background()
		for name, value := range map[string]int32{low: 100, high: 10000} {
			pc := &schedulingv1.PriorityClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Value: value}
			if _, err := c.Client.SchedulingV1().PriorityClasses().Create(ctx, pc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
		}
		ns := &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kybernate-system"}}
		if _, err := c.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		c.StartSimulatedAgent(t, "--slots-per-gpu", fmt.Sprint(slotsPerGPU),
			"--simulate-checkpoint-rate", "20000000000", "--simulate-restore-rate", "40000000000",
			"--simulate-progress-period", "500ms")
		pairs[binpack] = startPair(t, c, binpack, "MostAllocated", true)
		pairs[spread] = startPair(t, c, spread, "LeastAllocated", false)
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

// startPair starts an extender (with the controllers or all of them off) and a stock
// kube-scheduler whose one profile, named name, calls it as docs/extender.md configures it.
func startPair(t *testing.T, c *framework.Cluster, name, strategy string, controllers bool) *pair {
	t.Helper()
	shipped, err := os.ReadFile(filepath.Join(c.Root, "manifests", "scheduler", "controllers.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	ctrl := strings.Replace(string(shipped), "leaderElect: true", "leaderElect: false", 1)
	if !controllers {
		ctrl = "apiVersion: config.kybernate.io/v1\nkind: ControllerConfiguration\nleaderElection:\n  leaderElect: false\ndisableResume: true\ndisableTimeSlicing: true\ndisableMigration: true\n"
	}
	addr := framework.FreeAddress(t)
	p := &pair{url: "http://" + addr}
	p.extenderArgs = []string{"--kubeconfig", c.Kubeconfig, "--bind-address", addr, "--scoring-strategy", strategy,
		"--default-min-runtime", "0s", "--controllers-config", c.WriteControllerConfig(t, ctrl), "--v=4"}
	p.extender = c.Start(t, "kybernate-extender", p.extenderArgs...)
	waitReady(t, p.url)
	cfg := fmt.Sprintf(`apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
leaderElection:
  leaderElect: false
profiles:
- schedulerName: %s
extenders:
- urlPrefix: %s
  filterVerb: filter
  prioritizeVerb: prioritize
  preemptVerb: preempt
  bindVerb: bind
  weight: 1
  nodeCacheCapable: true
  ignorable: false
  httpTimeout: 10s
  managedResources:
  - name: kybernate.io/gpu
    ignoredByScheduler: true`, name, p.url)
	p.scheduler = c.StartControlPlane(t, "kube-scheduler", "--config", c.WriteSchedulerConfig(t, cfg), "--secure-port", "0", "--v=2")
	return p
}

func waitReady(t *testing.T, url string) {
	t.Helper()
	framework.WaitHTTPOK(t, url+"/readyz", time.Minute)
}

func gpuPod(ns, name, scheduler, class, mem string) *util.PodWrapper {
	p := util.MakePod().Namespace(ns).Name(name).SchedulerName(scheduler).PriorityClassName(class).GPU(1)
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

func (e env) waitBound(t *testing.T, name string, timeout time.Duration) *v1.Pod {
	t.Helper()
	return e.h.WaitPod(t, name, timeout, "bound with GPUs", func(p *v1.Pod) bool {
		return p.Spec.NodeName != "" && p.Annotations[kv1.AnnotationGPUs] != ""
	})
}

func stateOf(p *v1.Pod) kv1.PodGPUState {
	if s := kv1.PodGPUState(p.Annotations[kv1.AnnotationState]); s != "" {
		return s
	}
	return kv1.PodRunning
}

// Bin-packing puts two small pods on one GPU of one node; spreading puts them on different
// GPUs. Every pod is bound with its GPUs in the same write (no version bound without them).
func TestBinPackAndSpread(t *testing.T) {
	e := setup(t)
	node := "kwok-gpu-1"
	for _, sched := range []string{binpack, spread} {
		a, b := sched+"-a", sched+"-b"
		e.create(t, gpuPod(e.ns, a, sched, low, "10Gi").NodeSelector(v1.LabelHostname, node).Obj())
		pa := e.waitBound(t, a, time.Minute)
		e.create(t, gpuPod(e.ns, b, sched, low, "10Gi").NodeSelector(v1.LabelHostname, node).Obj())
		pb := e.waitBound(t, b, time.Minute)
		same := pa.Annotations[kv1.AnnotationGPUs] == pb.Annotations[kv1.AnnotationGPUs]
		if same != (sched == binpack) {
			t.Errorf("%s: GPUs %s and %s", sched, pa.Annotations[kv1.AnnotationGPUs], pb.Annotations[kv1.AnnotationGPUs])
		}
		for _, name := range []string{a, b} {
			for _, v := range e.h.PodVersions(name) {
				if v.Pod.Spec.NodeName != "" && v.Pod.Annotations[kv1.AnnotationGPUs] == "" {
					t.Errorf("%s was bound without GPUs", name)
				}
			}
		}
	}
}

// 500 pods created at once: every one is bound, none without GPUs, and the history never shows
// a GPU holding more memory or pods than it has (framework.AuditGPUs).
func TestFiveHundredPodsAtOnce(t *testing.T) {
	e := setup(t)
	const n = 500
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := gpuPod(e.ns, fmt.Sprintf("p-%03d", i), binpack, low, "10Gi").Obj()
			if _, err := e.c.Client.CoreV1().Pods(e.ns).Create(t.Context(), p, metav1.CreateOptions{}); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	e.h.Wait(t, 5*time.Minute, fmt.Sprintf("%d pods bound with GPUs", n), func() bool {
		bound := 0
		for _, p := range e.h.LatestPods() {
			if p.Spec.NodeName != "" && p.Annotations[kv1.AnnotationGPUs] != "" {
				bound++
			}
		}
		return bound == n
	})
}

// A high-priority pod finds its node's GPUs full of low-priority pods: the extender suspends
// one (a GPUCheckpoint, no deletion), the preemptor binds after the suspension; once it is gone
// the victim resumes and its progress goes on from where it stopped.
func TestPreemptionBySuspension(t *testing.T) {
	e := setup(t)
	node := "kwok-gpu-2"
	for i := range gpusPerNode {
		// 70Gi: one per GPU. (A simulated whole-GPU pod's footprint is the whole GPU, which the
		// agent's restore margin never lets back onto it.)
		e.create(t, gpuPod(e.ns, fmt.Sprintf("low-%d", i), binpack, low, "70Gi").NodeSelector(v1.LabelHostname, node).Obj())
	}
	for i := range gpusPerNode {
		e.waitBound(t, fmt.Sprintf("low-%d", i), time.Minute)
	}
	for i := range gpusPerNode {
		e.h.WaitPod(t, fmt.Sprintf("low-%d", i), time.Minute, "progress", func(p *v1.Pod) bool { return sim.ProgressOf(p) >= time.Second })
	}
	e.create(t, gpuPod(e.ns, "high", binpack, high, "70Gi").NodeSelector(v1.LabelHostname, node).Obj())
	hp := e.waitBound(t, "high", 2*time.Minute)

	var victim string
	for _, c := range e.h.Checkpoints() {
		if c.Checkpoint.Spec.Action == kv1.ActionSuspend && c.Checkpoint.Labels[kv1.LabelPreemptor] == string(hp.UID) {
			victim = c.Checkpoint.Spec.PodName
		}
	}
	if victim == "" {
		t.Fatal("no Suspend GPUCheckpoint names the preemptor")
	}
	var suspendedAt time.Time
	var progress time.Duration
	for _, v := range e.h.PodVersions(victim) {
		if stateOf(v.Pod) == kv1.PodSuspended && suspendedAt.IsZero() {
			suspendedAt, progress = v.Time, sim.ProgressOf(v.Pod)
		}
	}
	var boundAt time.Time
	for _, v := range e.h.PodVersions("high") {
		if v.Pod.Spec.NodeName != "" {
			boundAt = v.Time
			break
		}
	}
	if suspendedAt.IsZero() || boundAt.Before(suspendedAt) {
		t.Errorf("preemptor bound at %v, victim %s suspended at %v: bound before the memory was free", boundAt, victim, suspendedAt)
	}

	if d := e.h.Deletions(); len(d) > 0 {
		t.Errorf("pods deleted to make room: %v", d)
	}
	if err := e.c.Client.CoreV1().Pods(e.ns).Delete(t.Context(), "high", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.h.WaitPod(t, victim, 2*time.Minute, "resumed and progressing", func(p *v1.Pod) bool {
		return stateOf(p) == kv1.PodRunning && sim.ProgressOf(p) > progress
	})
}

// With the extender down the stock scheduler places none of the pods it manages (the extender is
// not ignorable): the pod stays pending with the scheduler's error; once the extender is back,
// the pod is bound.
func TestExtenderDownThenBack(t *testing.T) {
	e := setup(t)
	p := pairs[spread]
	p.extender.Kill()
	e.create(t, gpuPod(e.ns, "waits", spread, low, "10Gi").Obj())
	e.h.WaitPod(t, "waits", time.Minute, "a scheduling error that names the extender", func(p *v1.Pod) bool {
		for _, c := range p.Status.Conditions {
			if c.Type == v1.PodScheduled && c.Status == v1.ConditionFalse && strings.Contains(c.Message, "filter") {
				return true
			}
		}
		return false
	})
	if bound := e.h.Pod("waits"); bound.Spec.NodeName != "" {
		t.Fatalf("pod bound while its extender was down: %s", bound.Spec.NodeName)
	}
	p.extender = e.c.Start(t, "kybernate-extender", p.extenderArgs...)
	waitReady(t, p.url)
	e.waitBound(t, "waits", 2*time.Minute)
}

// Malformed requests get HTTP 400 with the reason, and nothing is bound.
func TestMalformedRequests(t *testing.T) {
	e := setup(t)
	e.create(t, gpuPod(e.ns, "nobody-schedules", "no-such-scheduler", low, "").Obj())
	pod := e.h.WaitPod(t, "nobody-schedules", time.Minute, "created", func(*v1.Pod) bool { return true })
	url := pairs[binpack].url
	for _, tc := range []struct{ verb, body, want string }{
		{"filter", `{"pod":`, "not a JSON"},
		{"prioritize", `{"nodenames":["kwok-gpu-0"]}`, "pod is missing"},
		{"preempt", `{"pod":{"metadata":{"name":"x","namespace":"y"}}}`, "has no uid"},
		{"bind", fmt.Sprintf(`{"podName":%q,"podNamespace":%q,"node":"kwok-gpu-0"}`, pod.Name, pod.Namespace), "podUID is empty"},
	} {
		resp, err := http.Post(url+"/"+tc.verb, "application/json", bytes.NewBufferString(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), tc.want) {
			t.Errorf("%s %s: HTTP %d %q, want 400 with %q", tc.verb, tc.body, resp.StatusCode, body, tc.want)
		}
	}
	got, err := e.c.Client.CoreV1().Pods(e.ns).Get(t.Context(), pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Spec.NodeName != "" || got.Annotations[kv1.AnnotationGPUs] != "" {
		t.Errorf("a malformed bind placed the pod: node %q, GPUs %q", got.Spec.NodeName, got.Annotations[kv1.AnnotationGPUs])
	}
}
