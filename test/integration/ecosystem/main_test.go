// Package ecosystem tests what platform teams use around Kybernate on a real control plane with
// kwok nodes, the SIMULATED node agent and kybernate-scheduler: the metrics the Grafana dashboard
// and docs/metrics.md name are served, the Helm chart installs and uninstalls, and the kubectl
// plugin shows, suspends and resumes pods.
package ecosystem

import (
	"fmt"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	"github.com/kybernate/kybernate/test/integration/framework"
	"github.com/kybernate/kybernate/test/util"
)

const (
	nodes       = 2
	gpusPerNode = 2
	slotsPerGPU = 2

	low  = "kyb-eco-low"
	high = "kyb-eco-high"
)

func TestMain(m *testing.M) {
	framework.MainWithGPUNodes(m, nodes, gpusPerNode)
}

// env is the running Kybernate of the package: its clients and metrics endpoints.
type env struct {
	c  *framework.Cluster
	kc versioned.Interface
	// agentMetrics is http://.../metrics of the agent, schedulerMetrics https://.../metrics of
	// the scheduler's secure port.
	agentMetrics, schedulerMetrics string
}

var (
	setupOnce sync.Once
	shared    *env
)

// setup starts the simulated agent and the scheduler once for the package, both serving
// metrics: the agent on plain HTTP, the scheduler on its secure port with delegated
// authentication and authorization, as in a cluster.
func setup(t *testing.T) *env {
	t.Helper()
	c := framework.Get(t)
	setupOnce.Do(func() {
		agentPort, schedPort := freePort(t), freePort(t)
		// The plugin's tests move pods by hand between the GPUs the scheduler packed them on:
		// the spreading controller would move them too.
		k := c.StartKybernate(t, map[string]int32{low: 100, high: 10000}, map[string]string{"disableSpreading: false": "disableSpreading: true"},
			"--slots-per-gpu", fmt.Sprint(slotsPerGPU), "--simulate-checkpoint-rate", "20G", "--simulate-restore-rate", "40G",
			// A checkpoint folder, so that the image collector runs and serves its metrics.
			"--checkpoint-dir", checkpointDir(t), "--image-gc-interval", "1s",
			"--metrics-bind-address", fmt.Sprintf("127.0.0.1:%d", agentPort))
		// Again with its secure port open: flags given later win.
		k.Scheduler.Stop()
		c.Start(t, "kybernate-scheduler", append(k.SchedulerArgs, "--secure-port", fmt.Sprint(schedPort), "--bind-address", "127.0.0.1",
			"--authentication-kubeconfig", c.Kubeconfig, "--authorization-kubeconfig", c.Kubeconfig)...)
		shared = &env{c: c, kc: c.Kybernate(t),
			agentMetrics:     fmt.Sprintf("http://127.0.0.1:%d/metrics", agentPort),
			schedulerMetrics: fmt.Sprintf("https://127.0.0.1:%d/metrics", schedPort)}
	})
	if shared == nil {
		t.Fatal("setup failed in an earlier test")
	}
	framework.WaitForGPUNodes(t.Context(), t, shared.kc, nodes, gpusPerNode, time.Minute)
	return shared
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// gpuPod is a GPU pod of kybernate-scheduler pinned to a node.
func gpuPod(ns, name, node, class, mem string) *v1.Pod {
	return util.MakePod().Namespace(ns).Name(name).SchedulerName("kybernate-scheduler").
		PriorityClassName(class).NodeSelector(v1.LabelHostname, node).GPU(1).GPUMemory(mem).Obj()
}

// checkpointDir is a folder for the agent's checkpoint images that outlives the test that
// happens to start the shared agent.
func checkpointDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ecosystem-images-")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}
