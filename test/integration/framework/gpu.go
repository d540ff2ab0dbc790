package framework

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// Kybernate returns a client for the kybernate.io API of the cluster.
func (c *Cluster) Kybernate(t testing.TB) versioned.Interface {
	t.Helper()
	kc, err := versioned.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	return kc
}

// StartSimulatedAgent runs kybernate-agent in --simulate mode for every kwok node, with extra
// flags added; it serves no socket and no metrics.
func (c *Cluster) StartSimulatedAgent(t testing.TB, extra ...string) *Component {
	t.Helper()
	args := append([]string{"--simulate", "--kubeconfig", c.Kubeconfig, "--simulate-node-selector", "type=kwok",
		"--metrics-bind-address", "", "--socket", ""}, extra...)
	return c.Start(t, "kybernate-agent", args...)
}

// WriteControllerConfig writes a ControllerConfiguration for kybernate-scheduler's
// --controllers-config. The file outlives the test that wrote it, like WriteSchedulerConfig's.
func (c *Cluster) WriteControllerConfig(t testing.TB, config string) string {
	t.Helper()
	dir := c.workDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.CreateTemp(dir, "kybernate-controllers-*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(config); err != nil {
		t.Fatal(err)
	}
	return filepath.Clean(f.Name())
}

// WriteSchedulerConfig writes a KubeSchedulerConfiguration that talks to this cluster: config
// with a clientConnection added. The file outlives the test that wrote it (a later test may
// restart the scheduler with it); it goes with the cluster's folder.
func (c *Cluster) WriteSchedulerConfig(t testing.TB, config string) string {
	t.Helper()
	dir := c.workDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.CreateTemp(dir, "kybernate-scheduler-*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := fmt.Fprintf(f, "%s\nclientConnection:\n  kubeconfig: %s\n", config, c.Kubeconfig); err != nil {
		t.Fatal(err)
	}
	return filepath.Clean(f.Name())
}

// WaitForGPUNodes waits until want GPUNodes are Ready and report gpus GPUs each.
func WaitForGPUNodes(ctx context.Context, t testing.TB, kc versioned.Interface, want, gpus int, timeout time.Duration) {
	t.Helper()
	WaitFor(ctx, t, timeout, fmt.Sprintf("%d GPUNodes Ready with %d GPUs", want, gpus), func(ctx context.Context) (bool, error) {
		list, err := kc.KybernateV1alpha1().GPUNodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		ready := 0
		for _, gn := range list.Items {
			if len(gn.Status.GPUs) == gpus && conditionTrue(gn.Status.Conditions, kv1.GPUNodeReady) {
				ready++
			}
		}
		return ready >= want, nil
	})
}

func conditionTrue(conds []metav1.Condition, typ string) bool {
	for _, c := range conds {
		if c.Type == typ {
			return c.Status == metav1.ConditionTrue
		}
	}
	return false
}

// MainWithGPUNodes is Main for a package whose tests need a cluster of nodes kwok GPU nodes
// with gpus GPUs each.
func MainWithGPUNodes(m *testing.M, nodes, gpus int) {
	os.Setenv("KYBERNATE_NODES", fmt.Sprint(nodes))
	os.Setenv("KYBERNATE_GPUS_PER_NODE", fmt.Sprint(gpus))
	Main(m)
}

// RunWithGPUNodes is MainWithGPUNodes for a TestMain that has more to stop once the tests ran
// (a server it started): it returns the exit code instead of exiting.
func RunWithGPUNodes(m *testing.M, nodes, gpus int) int {
	os.Setenv("KYBERNATE_NODES", fmt.Sprint(nodes))
	os.Setenv("KYBERNATE_GPUS_PER_NODE", fmt.Sprint(gpus))
	return run(m)
}

// Kybernate is what StartKybernate started.
type Kybernate struct {
	Agent, Scheduler *Component
	// SchedulerArgs start the scheduler again (after a kill, say).
	SchedulerArgs []string
}

// StartKybernate readies the cluster for tests of GPU pods and starts the simulated node agent
// (with agentArgs) and kybernate-scheduler: it creates the PriorityClasses (name -> value) and
// the namespace kybernate-system (the controllers' Lease lives there), and runs the scheduler
// with the shipped profile (manifests/scheduler/config.yaml, leader election off) and the
// shipped controller configuration (manifests/scheduler/controllers.yaml), each replacement
// old -> new applied to the first of the two that contains old; a replacement that matches
// neither fails the test.
func (c *Cluster) StartKybernate(t testing.TB, priorities map[string]int32, replace map[string]string, agentArgs ...string) Kybernate {
	t.Helper()
	ctx := context.Background()
	for name, value := range priorities {
		pc := &schedulingv1.PriorityClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Value: value}
		if _, err := c.Client.SchedulingV1().PriorityClasses().Create(ctx, pc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	ns := &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kybernate-system"}}
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	files := []string{"config.yaml", "controllers.yaml"}
	configs := make([]string, len(files))
	for i, name := range files {
		shipped, err := os.ReadFile(filepath.Join(c.Root, "manifests", "scheduler", name))
		if err != nil {
			t.Fatal(err)
		}
		configs[i] = string(shipped)
	}
	replace = maps.Clone(replace)
	if replace == nil {
		replace = map[string]string{}
	}
	replace["leaderElect: true"] = "leaderElect: false" // the scheduler's (config.yaml comes first)
	for old, repl := range replace {
		i := slices.IndexFunc(configs, func(s string) bool { return strings.Contains(s, old) })
		if i < 0 {
			t.Fatalf("manifests/scheduler/{config,controllers}.yaml no longer contain %q", old)
		}
		configs[i] = strings.Replace(configs[i], old, repl, 1)
	}
	k := Kybernate{Agent: c.StartSimulatedAgent(t, agentArgs...)}
	k.SchedulerArgs = []string{"--config", c.WriteSchedulerConfig(t, configs[0]),
		"--controllers-config", c.WriteControllerConfig(t, configs[1]), "--secure-port", "0", "--v=4"}
	k.Scheduler = c.Start(t, "kybernate-scheduler", k.SchedulerArgs...)
	return k
}
