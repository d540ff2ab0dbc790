// Package scaletozero tests scale to zero on a real control plane: kwok nodes whose GPUs the
// node agent simulates (--simulate), kybernate-scheduler with its resume controller, and the
// kybernate-activator binary. kwok pods run no process, so the activator is started with
// --simulate-backend-address: every pod's requests go to a simulated model server inside the
// test, which answers only while the pod it stands for is Running on its GPU. The agent runs
// with a disk tier (real encrypted images on this machine's disk, holding a record of the
// simulated process), for pods that sleep on disk.
package scaletozero

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
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
	nodes       = 1
	gpusPerNode = 2
	class       = "kyb-test-inference"
	batchClass  = "kyb-test-batch"
)

func TestMain(m *testing.M) {
	framework.MainWithGPUNodes(m, nodes, gpusPerNode)
}

var (
	setupOnce sync.Once
	setupOK   bool
	shared    *activatorProc
)

// activatorProc is the running kybernate-activator and what it was started with.
type activatorProc struct {
	comp          *framework.Component
	args          []string
	proxy, metric string
	model         *modelServer
}

type env struct {
	c  *framework.Cluster
	kc versioned.Interface
	h  *framework.History
	ns string
	a  *activatorProc
}

func setup(t *testing.T) env {
	t.Helper()
	c := framework.Get(t)
	kc := c.Kybernate(t)
	setupOnce.Do(func() {
		// The storage tiers on, for pods that sleep on disk; the mark is far above what the
		// tests park, so only kybernate.io/sleep: Disk moves memory out of host memory.
		tiers, err := os.MkdirTemp("", "kybernate-disk-tier-")
		if err != nil {
			t.Fatal(err)
		}
		c.StartKybernate(t, map[string]int32{class: 1000, batchClass: 10}, nil,
			"--simulate-checkpoint-rate", "20e9", "--simulate-restore-rate", "40e9",
			"--parked-memory-high-water=10Ti", "--disk-tier-dir="+tiers, "--tier-interval=10s")
		shared = startActivator(t, c)
		setupOK = true
	})
	if !setupOK {
		t.Fatal("setup failed in an earlier test")
	}
	framework.WaitForGPUNodes(t.Context(), t, kc, nodes, gpusPerNode, time.Minute)
	ns := c.CreateNamespace(t)
	return env{c: c, kc: kc, h: c.Record(t, ns), ns: ns, a: shared}
}

// startActivator runs kybernate-activator against the cluster with a simulated model server
// as every pod's backend.
func startActivator(t *testing.T, c *framework.Cluster) *activatorProc {
	t.Helper()
	model := newModelServer(t)
	a := &activatorProc{proxy: framework.FreeAddress(t), metric: framework.FreeAddress(t), model: model}
	a.args = []string{"--kubeconfig", c.Kubeconfig, "--bind-address", a.proxy, "--metrics-bind-address", a.metric,
		"--simulate-backend-address", model.addr, "--interval", "200ms", "--hold-timeout", "90s", "--wake-timeout", "60s",
		"--retry-after", "3s", "--v=4"}
	a.comp = c.Start(t, "kybernate-activator", a.args...)
	a.waitReady(t)
	return a
}

func (a *activatorProc) waitReady(t *testing.T) {
	t.Helper()
	framework.WaitHTTPOK(t, "http://"+a.metric+"/readyz", time.Minute)
}

// service creates the Service llm: type ExternalName pointing at the activator, its pods
// app=llm serving on port 8000.
func (e env) service(t *testing.T) {
	t.Helper()
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "llm", Namespace: e.ns, Annotations: map[string]string{
			kv1.AnnotationBackendSelector: "app=llm", kv1.AnnotationBackendPort: "8000",
		}},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeExternalName, ExternalName: "kybernate-activator.kybernate-system.svc.cluster.local"},
	}
	if _, err := e.c.Client.CoreV1().Services(e.ns).Create(t.Context(), svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// deploy creates the Service llm (ExternalName to the activator, backend app=llm:8000) and
// its pod llm, which sleeps after idleAfter, and waits until the pod runs on a GPU.
func (e env) deploy(t *testing.T, idleAfter string, podAnnotations map[string]string) {
	t.Helper()
	ctx := t.Context()
	e.a.model.latest.Store(e.ns, func() kv1.PodGPUState {
		if p := e.h.Pod("llm"); p != nil {
			return gpupod.StateOf(p)
		}
		return ""
	})
	e.service(t)
	p := util.MakePod().Namespace(e.ns).Name("llm").SchedulerName(util.SchedulerName).PriorityClassName(class).GPU(1).GPUMemory("20Gi").Obj()
	p.Labels = map[string]string{"app": "llm"}
	p.Annotations[kv1.AnnotationIdleAfter] = idleAfter
	for k, v := range podAnnotations {
		p.Annotations[k] = v
	}
	if _, err := e.c.Client.CoreV1().Pods(e.ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	framework.WaitForPodRunning(ctx, t, e.c.Client, e.ns, "llm", time.Minute)
}

// answer is what a client got.
type answer struct {
	seq        int
	status     int
	body       string
	retryAfter string
	err        error
}

// send sends request seq to the Service llm through the activator.
func (e env) send(ctx context.Context, seq int) answer {
	return e.sendWith(ctx, http.DefaultClient, seq)
}

// sendWith sends request seq with client.
func (e env) sendWith(ctx context.Context, client *http.Client, seq int) answer {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+e.a.proxy+"/v1/completions", strings.NewReader(fmt.Sprintf(`{"prompt":"%d"}`, seq)))
	if err != nil {
		return answer{seq: seq, err: err}
	}
	req.Host = "llm." + e.ns + ".svc.cluster.local"
	req.Header.Set("X-Seq", fmt.Sprint(seq))
	resp, err := client.Do(req)
	if err != nil {
		return answer{seq: seq, err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return answer{seq: seq, status: resp.StatusCode, body: string(b), retryAfter: resp.Header.Get("Retry-After"), err: err}
}

// events lists the reasons of the Events about a pod, in order.
func (e env) events(t *testing.T, name string) []string {
	t.Helper()
	list, err := e.c.Client.EventsV1().Events(e.ns).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var reasons []string
	for _, ev := range list.Items {
		if ev.Regarding.Name == name && ev.Regarding.Kind == "Pod" {
			reasons = append(reasons, ev.Reason)
		}
	}
	return reasons
}

// waitEvent waits for an Event of the given reason about the pod.
func (e env) waitEvent(t *testing.T, name, reason string) {
	t.Helper()
	framework.WaitFor(t.Context(), t, 30*time.Second, fmt.Sprintf("Event %s on pod %s", reason, name), func(ctx context.Context) (bool, error) {
		for _, r := range e.events(t, name) {
			if r == reason {
				return true, nil
			}
		}
		return false, nil
	})
}
