// Package gpushare tests the GPUShare scheduler plugin on a real control plane: kwok nodes,
// the node agent in --simulate mode reporting their GPUs, and kybernate-scheduler.
package gpushare

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/sets"

	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/test/integration/framework"
	"github.com/kybernate/kybernate/test/util"
)

const (
	nodes       = 3
	gpusPerNode = 8
	slotsPerGPU = 4
	binpack     = "kybernate-scheduler"
	spread      = "kybernate-spread"
	gi          = int64(1) << 30
)

func TestMain(m *testing.M) {
	framework.MainWithGPUNodes(m, nodes, gpusPerNode)
}

var (
	setupOnce sync.Once
	setupOK   bool
)

// setup starts the simulated agent and kybernate-scheduler with a bin-packing and a spreading
// profile, once for the package, and waits until every node's GPUs are reported.
func setup(t *testing.T) (*framework.Cluster, versioned.Interface) {
	t.Helper()
	c := framework.Get(t)
	kc := c.Kybernate(t)
	setupOnce.Do(func() {
		c.StartSimulatedAgent(t, "--slots-per-gpu", fmt.Sprint(slotsPerGPU))
		// The tests count where the scheduler placed pods: the spreading controller would move
		// bin-packed pods onto unused GPUs afterwards.
		controllers := c.WriteControllerConfig(t, "apiVersion: config.kybernate.io/v1\nkind: ControllerConfiguration\ndisableSpreading: true\n")
		c.Start(t, "kybernate-scheduler", "--config", c.WriteSchedulerConfig(t, schedulerConfig), "--controllers-config", controllers,
			"--secure-port", "0", "--v=3")
		setupOK = true
	})
	if !setupOK {
		t.Fatal("setup failed in an earlier test")
	}
	framework.WaitForGPUNodes(t.Context(), t, kc, nodes, gpusPerNode, time.Minute)
	return c, kc
}

const schedulerConfig = `apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
leaderElection:
  leaderElect: false
profiles:
- schedulerName: kybernate-scheduler
  plugins:
    multiPoint:
      enabled:
      - name: GPUShare
        weight: 10
    bind:
      enabled:
      - name: GPUShare
      - name: DefaultBinder
  pluginConfig:
  - name: GPUShare
    args:
      scoringStrategy: MostAllocated
- schedulerName: kybernate-spread
  plugins:
    multiPoint:
      enabled:
      - name: GPUShare
        weight: 10
    bind:
      enabled:
      - name: GPUShare
      - name: DefaultBinder
  pluginConfig:
  - name: GPUShare
    args:
      scoringStrategy: LeastAllocated
`

// createPods creates the pods concurrently, as a burst.
func createPods(t *testing.T, c *framework.Cluster, pods []*v1.Pod) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(pods))
	sem := make(chan struct{}, 32)
	for _, p := range pods {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if _, err := c.Client.CoreV1().Pods(p.Namespace).Create(t.Context(), p, metav1.CreateOptions{}); err != nil {
				errs <- fmt.Errorf("creating pod %s: %w", p.Name, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// settle waits until every pod of the namespace is bound or marked unschedulable by its
// scheduler, and returns the pods.
func settle(t *testing.T, c *framework.Cluster, ns string, want int, timeout time.Duration) []v1.Pod {
	t.Helper()
	var pods []v1.Pod
	framework.WaitFor(t.Context(), t, timeout, fmt.Sprintf("all %d pods in %s bound or unschedulable", want, ns), func(ctx context.Context) (bool, error) {
		list, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		pods = list.Items
		if len(pods) < want {
			return false, nil
		}
		for _, p := range pods {
			if p.Spec.NodeName != "" && p.Annotations[kv1.AnnotationGPUs] != "" {
				continue
			}
			if !unschedulable(&p) {
				return false, nil
			}
		}
		return true, nil
	})
	return pods
}

func unschedulable(p *v1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == v1.PodScheduled && c.Status == v1.ConditionFalse && c.Reason == v1.PodReasonUnschedulable {
			return true
		}
	}
	return false
}

// gpuUse is what the pods bound to one GPU take.
type gpuUse struct {
	bytes int64
	pods  int
}

// checkNoOvercommit fails the test when any GPU holds more VRAM or pods than it has room for,
// and returns the use of each GPU that holds pods.
func checkNoOvercommit(t *testing.T, kc versioned.Interface, pods []v1.Pod) map[string]*gpuUse {
	t.Helper()
	list, err := kc.KybernateV1alpha1().GPUNodes().List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	total := map[string]int64{}   // uuid -> bytes
	nodeOf := map[string]string{} // uuid -> node
	for _, gn := range list.Items {
		for _, g := range gn.Status.GPUs {
			total[g.UUID] = g.MemoryTotalBytes
			nodeOf[g.UUID] = gn.Name
		}
	}
	use := map[string]*gpuUse{}
	for _, p := range pods {
		ids := p.Annotations[kv1.AnnotationGPUs]
		if ids == "" {
			continue
		}
		uuids := strings.Split(ids, ",")
		limit := p.Spec.Containers[0].Resources.Limits[kv1.ResourceGPU]
		if n := limit.Value(); int64(len(uuids)) != n {
			t.Errorf("pod %s asked for %d GPUs and got %d: %s", p.Name, n, len(uuids), ids)
		}
		if sets.New(uuids...).Len() != len(uuids) {
			t.Errorf("pod %s got the same GPU twice: %s", p.Name, ids)
		}
		for _, u := range uuids {
			size, ok := total[u]
			if !ok {
				t.Errorf("pod %s got unknown GPU %s", p.Name, u)
				continue
			}
			if nodeOf[u] != p.Spec.NodeName {
				t.Errorf("pod %s is on node %s but got GPU %s of node %s", p.Name, p.Spec.NodeName, u, nodeOf[u])
			}
			need := size
			if q, ok := p.Annotations[kv1.AnnotationGPUMemory]; ok {
				quantity := resource.MustParse(q)
				need = quantity.Value()
			}
			if use[u] == nil {
				use[u] = &gpuUse{}
			}
			use[u].bytes += need
			use[u].pods++
		}
	}
	for u, g := range use {
		if g.bytes > total[u] {
			t.Errorf("GPU %s overcommitted: %d GiB of pods on %d GiB", u, g.bytes/gi, total[u]/gi)
		}
		if g.pods > slotsPerGPU {
			t.Errorf("GPU %s holds %d pods, more than its %d slots", u, g.pods, slotsPerGPU)
		}
	}
	return use
}

// Bin-packing puts small pods on as few GPUs as their slots allow; spreading gives each its
// own GPU.
func TestBinPackVersusSpread(t *testing.T) {
	c, kc := setup(t)
	const n = 8
	distinct := map[string]int{}
	for _, profile := range []string{binpack, spread} {
		ns := c.CreateNamespace(t)
		var pods []*v1.Pod
		for i := range n {
			pods = append(pods, util.MakePod().Namespace(ns).Name(fmt.Sprintf("small-%d", i)).
				SchedulerName(profile).GPU(1).GPUMemory("10Gi").Obj())
		}
		createPods(t, c, pods)
		bound := settle(t, c, ns, n, time.Minute)
		use := checkNoOvercommit(t, kc, bound)
		placed := 0
		for _, p := range bound {
			if p.Spec.NodeName != "" {
				placed++
			}
		}
		if placed != n {
			t.Fatalf("%s: %d of %d pods placed", profile, placed, n)
		}
		distinct[profile] = len(use)
		// Free the GPUs for the next profile.
		if err := c.Client.CoreV1().Pods(ns).DeleteCollection(t.Context(), metav1.DeleteOptions{GracePeriodSeconds: new(int64)}, metav1.ListOptions{}); err != nil {
			t.Fatal(err)
		}
		framework.WaitFor(t.Context(), t, time.Minute, "pods of "+ns+" gone", func(ctx context.Context) (bool, error) {
			list, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			return err == nil && len(list.Items) == 0, err
		})
	}
	// 8 pods of 10Gi: bin-packing fills 4 slots on each of 2 GPUs; spreading uses 8 GPUs.
	if distinct[binpack] != n/slotsPerGPU || distinct[spread] != n {
		t.Errorf("GPUs used: %s %d (want %d), %s %d (want %d)", binpack, distinct[binpack], n/slotsPerGPU, spread, distinct[spread], n)
	}
}

// 500 pods of mixed sizes created at once: whatever gets placed, no GPU is overcommitted.
func TestBurstNeverOvercommits(t *testing.T) {
	c, kc := setup(t)
	ns := c.CreateNamespace(t)
	sizes := []string{"10Gi", "20Gi", "40Gi", ""}
	var pods []*v1.Pod
	for i := range 500 {
		p := util.MakePod().Namespace(ns).Name(fmt.Sprintf("burst-%03d", i)).SchedulerName(binpack)
		if i%10 == 9 {
			p = p.GPU(2)
		} else {
			p = p.GPU(1)
		}
		if s := sizes[i%len(sizes)]; s != "" {
			p = p.GPUMemory(s)
		}
		pods = append(pods, p.Obj())
	}
	createPods(t, c, pods)
	bound := settle(t, c, ns, len(pods), 4*time.Minute)
	use := checkNoOvercommit(t, kc, bound)
	placed := 0
	for _, p := range bound {
		if p.Spec.NodeName != "" {
			placed++
		}
	}
	t.Logf("%d of %d pods placed on %d GPUs", placed, len(pods), len(use))
	if placed == 0 || len(use) != nodes*gpusPerNode {
		t.Errorf("placed %d pods on %d GPUs; want some pods on every one of the %d GPUs", placed, len(use), nodes*gpusPerNode)
	}
}

// A malformed annotation gets an Event on the pod that names the annotation and the value.
func TestMalformedAnnotationEvent(t *testing.T) {
	c, _ := setup(t)
	ns := c.CreateNamespace(t)
	pod := util.MakePod().Namespace(ns).Name("typo").SchedulerName(binpack).GPU(1).
		Annotation(kv1.AnnotationGPUMemory, "forty gigs").Obj()
	createPods(t, c, []*v1.Pod{pod})
	want := `annotation kybernate.io/gpu-memory="forty gigs" is not a quantity`
	framework.WaitFor(t.Context(), t, time.Minute, "a FailedScheduling event that explains the typo", func(ctx context.Context) (bool, error) {
		events, err := c.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{
			FieldSelector: fields.OneTermEqualSelector("involvedObject.name", "typo").String(),
		})
		if err != nil {
			return false, err
		}
		for _, e := range events.Items {
			if e.Reason == "FailedScheduling" && strings.Contains(e.Message, want) {
				return true, nil
			}
		}
		return false, nil
	})
	got, err := c.Client.CoreV1().Pods(ns).Get(t.Context(), "typo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Spec.NodeName != "" {
		t.Errorf("pod with a malformed annotation was bound to %s", got.Spec.NodeName)
	}
}

// Pods of other schedulers are not ours: the default scheduler places them and nothing writes
// kybernate.io/gpus on them.
func TestOtherSchedulersUntouched(t *testing.T) {
	c, _ := setup(t)
	ns := c.CreateNamespace(t)
	pod := util.MakePod().Namespace(ns).Name("plain").GPU(1).Obj()
	createPods(t, c, []*v1.Pod{pod})
	got := framework.WaitForPodRunning(t.Context(), t, c.Client, ns, "plain", time.Minute)
	if v, ok := got.Annotations[kv1.AnnotationGPUs]; ok {
		t.Errorf("pod of the default scheduler got %s=%q", kv1.AnnotationGPUs, v)
	}
}
