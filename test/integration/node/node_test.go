// Package node tests Kybernate on a real node: a kubelet driving containerd through CRI, with
// runc and CNI, on this machine (hack/node-up.sh), registered next to kwok nodes. The
// components are installed as users install them, `kubectl apply -k manifests/`, from images
// built without a registry (hack/images.sh). Needs root; CI runs it as root.
package node

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/utils/ptr"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/test/integration/framework"
)

const (
	kwokNodes       = 2
	systemNamespace = "kybernate-system"
	schedulerName   = "kybernate-scheduler"
	// workloadImage is Debian's busybox-static, imported by hack/node-up.sh.
	workloadImage = "kybernate/busybox:dev"
	runtimeClass  = "kybernate"
	shimBinary    = "containerd-shim-kybernate-v1"
	// agentSocket is where the agent DaemonSet serves its API on the node.
	agentSocket = "/run/kybernate/agent.sock"
)

func TestMain(m *testing.M) {
	os.Setenv("KYBERNATE_NODES", strconv.Itoa(kwokNodes))
	framework.MainWithRealNode(m)
}

// Install, run a pod through kybernate-scheduler on the real node, uninstall: in this order,
// on one cluster; a failed install skips the rest, uninstall runs whatever happened between.
func TestInstallRunUninstall(t *testing.T) {
	c := framework.Get(t)
	node := c.RealNode(t)
	if !t.Run("install", func(t *testing.T) { testInstall(t, c, node) }) {
		return
	}
	t.Run("pod", func(t *testing.T) { testPod(t, c, node) })
	t.Run("checkpoint-restore", func(t *testing.T) { testCheckpointRestore(t, c, node) })
	t.Run("uninstall", func(t *testing.T) { testUninstall(t, c, node) })
}

// kubectl apply -k manifests/ (plus the simulated agent for the kwok nodes) brings every
// component up Ready, on the real node, and each does its work: the agents write GPUNodes.
func testInstall(t *testing.T, c *framework.Cluster, node string) {
	ctx := t.Context()
	c.Script(t, "hack/images.sh", "--import", "kybernate-agent", "kybernate-scheduler")
	start := time.Now()
	c.Kubectl(t, "apply", "-k", "manifests/")
	c.Kubectl(t, "apply", "-k", "manifests/agent/simulated")

	apps := c.Client.AppsV1()
	framework.WaitFor(ctx, t, 2*time.Minute, "kybernate-scheduler, kybernate-agent and kybernate-agent-simulated Ready", func(ctx context.Context) (bool, error) {
		for _, name := range []string{"kybernate-scheduler", "kybernate-agent-simulated"} {
			d, err := apps.Deployments(systemNamespace).Get(ctx, name, metav1.GetOptions{})
			if err != nil || !deploymentReady(d) {
				return false, client(err)
			}
		}
		ds, err := apps.DaemonSets(systemNamespace).Get(ctx, "kybernate-agent", metav1.GetOptions{})
		if err != nil {
			return false, client(err)
		}
		// Only the real node is a (labelled) GPU node; kwok nodes are the simulated agent's.
		return ds.Status.DesiredNumberScheduled == 1 && ds.Status.NumberReady == 1 && ds.Status.UpdatedNumberScheduled == 1, nil
	})
	t.Logf("components Ready %s after kubectl apply", time.Since(start).Round(100*time.Millisecond))

	pods, err := c.Client.CoreV1().Pods(systemNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(pods.Items) != 3 {
		t.Errorf("%d pods in %s, want 3 (scheduler, agent, simulated agent): %v", len(pods.Items), systemNamespace, podNames(pods.Items))
	}
	for _, p := range pods.Items {
		// kwok nodes run no containers: a component there would only look Ready.
		if p.Spec.NodeName != node {
			t.Errorf("pod %s runs on %s, want the real node %s", p.Name, p.Spec.NodeName, node)
		}
	}

	// The real agent serves its node: a GPUNode that says its GPUs are real (this machine has
	// none, so it is not Ready and gives the reason). The simulated one serves the kwok nodes.
	kc := c.Kybernate(t)
	framework.WaitFor(ctx, t, time.Minute, "GPUNodes of the real agent and the simulated agent", func(ctx context.Context) (bool, error) {
		list, err := kc.KybernateV1alpha1().GPUNodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, client(err)
		}
		real, simulated := false, 0
		for _, gn := range list.Items {
			sim := conditionStatus(gn.Status.Conditions, kv1.GPUNodeSimulated)
			switch {
			case gn.Name == node && sim == metav1.ConditionFalse:
				real = true
			case gn.Name != node && sim == metav1.ConditionTrue && conditionStatus(gn.Status.Conditions, kv1.GPUNodeReady) == metav1.ConditionTrue:
				simulated++
			}
		}
		return real && simulated == kwokNodes, nil
	})
}

// A pod of kybernate-scheduler with RuntimeClass kybernate runs as a real process on the real
// node, a child of our shim, and its counter is in its log.
func testPod(t *testing.T, c *framework.Cluster, node string) {
	ctx := t.Context()
	ns := c.CreateNamespace(t)
	pod := counterPod(ns, "counter", node)
	start := time.Now()
	if _, err := c.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	running := framework.WaitForPodRunning(ctx, t, c.Client, ns, pod.Name, time.Minute)
	t.Logf("pod Running %s after create", time.Since(start).Round(100*time.Millisecond))
	if running.Spec.NodeName != node {
		t.Errorf("pod on %s, want the real node %s", running.Spec.NodeName, node)
	}
	if by := scheduledBy(ctx, t, c, ns, pod.Name); by != schedulerName {
		t.Errorf("pod scheduled by %q, want %s", by, schedulerName)
	}
	if n := waitForCount(ctx, t, c, ns, pod.Name, 1, 3); n < 3 {
		t.Errorf("counter at %d, want at least 3", n)
	}
	if shim := shimOf(t, running); shim != shimBinary {
		t.Errorf("the pod's process is a child of %q, want %s", shim, shimBinary)
	}
}

// kubectl delete -k manifests/ removes every object it made, and the kubelet stops the
// components' containers (the namespace is gone only once their pods are).
func testUninstall(t *testing.T, c *framework.Cluster, node string) {
	ctx := t.Context()
	start := time.Now()
	c.Kubectl(t, "delete", "-k", "manifests/agent/simulated", "--wait=true")
	c.Kubectl(t, "delete", "-k", "manifests/", "--wait=true")
	framework.WaitFor(ctx, t, 2*time.Minute, "the installed objects gone", func(ctx context.Context) (bool, error) {
		left, err := installedObjects(ctx, c)
		return len(left) == 0, err
	})
	t.Logf("uninstalled in %s", time.Since(start).Round(100*time.Millisecond))
	pods, err := c.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.Namespace == systemNamespace {
			t.Errorf("pod %s/%s still on the node", p.Namespace, p.Name)
		}
	}
}

// installedObjects names what kubectl apply -k manifests/ creates and still exists.
func installedObjects(ctx context.Context, c *framework.Cluster) ([]string, error) {
	var left []string
	check := func(what string, err error) error {
		switch {
		case err == nil:
			left = append(left, what)
		case !apierrors.IsNotFound(err):
			return err
		}
		return nil
	}
	_, err := c.Client.CoreV1().Namespaces().Get(ctx, systemNamespace, metav1.GetOptions{})
	if err := check("namespace "+systemNamespace, err); err != nil {
		return nil, err
	}
	for _, name := range []string{"kybernate-agent", "kybernate-scheduler"} {
		_, err := c.Client.RbacV1().ClusterRoles().Get(ctx, name, metav1.GetOptions{})
		if err := check("clusterrole "+name, err); err != nil {
			return nil, err
		}
		_, err = c.Client.RbacV1().ClusterRoleBindings().Get(ctx, name, metav1.GetOptions{})
		if err := check("clusterrolebinding "+name, err); err != nil {
			return nil, err
		}
	}
	for _, name := range []string{"kybernate-batch-low", "kybernate-interactive-high"} {
		_, err := c.Client.SchedulingV1().PriorityClasses().Get(ctx, name, metav1.GetOptions{})
		if err := check("priorityclass "+name, err); err != nil {
			return nil, err
		}
	}
	crds, err := c.Dynamic.Resource(crdResource).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for _, crd := range crds.Items {
		if strings.HasSuffix(crd.GetName(), ".kybernate.io") {
			left = append(left, "crd "+crd.GetName())
		}
	}
	return left, nil
}

// counterPod is a pod of kybernate-scheduler on node that prints 1, 2, 3, ... a line a second.
func counterPod(ns, name, node string) *v1.Pod {
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1.PodSpec{
			SchedulerName:                 schedulerName,
			RuntimeClassName:              ptr.To(runtimeClass),
			NodeSelector:                  map[string]string{v1.LabelHostname: node},
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers: []v1.Container{{
				Name:            "counter",
				Image:           workloadImage,
				ImagePullPolicy: v1.PullNever,
				Command:         []string{"/bin/sh", "-c", "i=0; while :; do i=$((i+1)); echo $i; sleep 1; done"},
			}},
		},
	}
}

// waitForCount waits until the pod's log counts to at least want and returns the last count;
// the log must count up by one from first.
func waitForCount(ctx context.Context, t *testing.T, c *framework.Cluster, ns, name string, first, want int) int {
	t.Helper()
	last := 0
	framework.WaitFor(ctx, t, 30*time.Second, fmt.Sprintf("pod %s/%s counting to %d", ns, name, want), func(ctx context.Context) (bool, error) {
		raw, err := c.Client.CoreV1().Pods(ns).GetLogs(name, &v1.PodLogOptions{}).DoRaw(ctx)
		if err != nil {
			return false, client(err)
		}
		lines := strings.Fields(string(raw))
		for i, l := range lines {
			n, err := strconv.Atoi(l)
			if err != nil || n != first+i {
				return false, fmt.Errorf("line %d of the log is %q, want %d:\n%s", i+1, l, first+i, raw)
			}
		}
		last = first + len(lines) - 1
		return last >= want, nil
	})
	return last
}

// scheduledBy is the component that reported the pod's Scheduled event.
func scheduledBy(ctx context.Context, t *testing.T, c *framework.Cluster, ns, name string) string {
	t.Helper()
	var by string
	framework.WaitFor(ctx, t, 10*time.Second, "the Scheduled event of "+name, func(ctx context.Context) (bool, error) {
		events, err := c.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name + ",reason=Scheduled"})
		if err != nil || len(events.Items) == 0 {
			return false, client(err)
		}
		by = events.Items[0].ReportingController
		return true, nil
	})
	return by
}

func deploymentReady(d *appsv1.Deployment) bool {
	want := ptr.Deref(d.Spec.Replicas, 1)
	return d.Status.ObservedGeneration >= d.Generation && d.Status.UpdatedReplicas == want &&
		d.Status.AvailableReplicas == want && d.Status.Replicas == want
}

func conditionStatus(conds []metav1.Condition, typ string) metav1.ConditionStatus {
	for _, c := range conds {
		if c.Type == typ {
			return c.Status
		}
	}
	return metav1.ConditionUnknown
}

// client passes on errors other than NotFound (which the waits outlast).
func client(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

func podNames(pods []v1.Pod) []string {
	var out []string
	for _, p := range pods {
		out = append(out, p.Name)
	}
	return out
}

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
