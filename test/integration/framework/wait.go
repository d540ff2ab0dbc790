package framework

import (
	"context"
	"fmt"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
)

// PollInterval is how often the Wait helpers look at the cluster.
const PollInterval = 100 * time.Millisecond

// WaitFor polls cond until it returns true and fails the test when it has not
// within timeout. what names the condition in the failure ("pod p Running").
// An error from cond ends the wait and fails the test at once; return false and
// nil for states worth waiting out (NotFound while an object is being created).
func WaitFor(ctx context.Context, t testing.TB, timeout time.Duration, what string, cond func(context.Context) (bool, error)) {
	t.Helper()
	if err := Poll(ctx, timeout, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// Poll is WaitFor returning the error, for callers that want to go on after it
// (t.Cleanup functions, helpers checking several things).
func Poll(ctx context.Context, timeout time.Duration, cond func(context.Context) (bool, error)) error {
	// cond gets ctx, not the poll's deadline: a call in flight when the time is up
	// finishes (or fails) on its own, so an error from cond is always cond's error
	// and never the deadline cutting a request short.
	err := wait.PollUntilContextTimeout(ctx, PollInterval, timeout, true, func(context.Context) (bool, error) {
		return cond(ctx)
	})
	if err != nil && wait.Interrupted(err) {
		if ctx.Err() != nil {
			return fmt.Errorf("not done when the test's context ended: %w", context.Cause(ctx))
		}
		return fmt.Errorf("not done after %s", timeout)
	}
	return err
}

// WaitForPod waits until cond holds for the pod and returns the pod as it was then.
func WaitForPod(ctx context.Context, t testing.TB, client kubernetes.Interface, ns, name string, timeout time.Duration, what string, cond func(*v1.Pod) bool) *v1.Pod {
	t.Helper()
	var pod *v1.Pod
	var seen string
	err := Poll(ctx, timeout, func(ctx context.Context) (bool, error) {
		p, err := client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			seen = "not found"
			return false, nil
		}
		if err != nil {
			return false, err
		}
		pod = p
		seen = fmt.Sprintf("phase %s, node %q, conditions %s", p.Status.Phase, p.Spec.NodeName, podConditions(p))
		return cond(p), nil
	})
	if err != nil {
		t.Fatalf("waiting for pod %s/%s %s: %v; last seen: %s", ns, name, what, err, seen)
	}
	return pod
}

// WaitForPodScheduled waits until the pod is bound to a node.
func WaitForPodScheduled(ctx context.Context, t testing.TB, client kubernetes.Interface, ns, name string, timeout time.Duration) *v1.Pod {
	t.Helper()
	return WaitForPod(ctx, t, client, ns, name, timeout, "to be scheduled", func(p *v1.Pod) bool {
		return p.Spec.NodeName != ""
	})
}

// WaitForPodRunning waits until the pod is Running and Ready.
func WaitForPodRunning(ctx context.Context, t testing.TB, client kubernetes.Interface, ns, name string, timeout time.Duration) *v1.Pod {
	t.Helper()
	return WaitForPod(ctx, t, client, ns, name, timeout, "to be running", func(p *v1.Pod) bool {
		return p.Status.Phase == v1.PodRunning && podConditionTrue(p, v1.PodReady)
	})
}

// WaitForPodPhase waits until the pod reaches phase.
func WaitForPodPhase(ctx context.Context, t testing.TB, client kubernetes.Interface, ns, name string, phase v1.PodPhase, timeout time.Duration) *v1.Pod {
	t.Helper()
	return WaitForPod(ctx, t, client, ns, name, timeout, "to be "+string(phase), func(p *v1.Pod) bool {
		return p.Status.Phase == phase
	})
}

// WaitForPodGone waits until the pod no longer exists.
func WaitForPodGone(ctx context.Context, t testing.TB, client kubernetes.Interface, ns, name string, timeout time.Duration) {
	t.Helper()
	WaitFor(ctx, t, timeout, fmt.Sprintf("pod %s/%s to be gone", ns, name), func(ctx context.Context) (bool, error) {
		_, err := client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return false, err
	})
}

// WaitForNodesReady waits until at least want nodes match selector and all of
// them are Ready, and returns them.
func WaitForNodesReady(ctx context.Context, t testing.TB, client kubernetes.Interface, selector string, want int, timeout time.Duration) []v1.Node {
	t.Helper()
	var nodes []v1.Node
	var seen string
	err := Poll(ctx, timeout, func(ctx context.Context) (bool, error) {
		list, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false, err
		}
		nodes = list.Items
		ready := 0
		for i := range nodes {
			if NodeReady(&nodes[i]) {
				ready++
			}
		}
		seen = fmt.Sprintf("%d nodes, %d Ready", len(nodes), ready)
		return len(nodes) >= want && ready == len(nodes), nil
	})
	if err != nil {
		t.Fatalf("waiting for %d Ready nodes with labels %q: %v; last seen: %s", want, selector, err, seen)
	}
	return nodes
}

// NodeReady reports whether the node's Ready condition is True.
func NodeReady(node *v1.Node) bool {
	for _, c := range node.Status.Conditions {
		if c.Type == v1.NodeReady {
			return c.Status == v1.ConditionTrue
		}
	}
	return false
}

// PodReady reports whether the pod's Ready condition is True.
func PodReady(pod *v1.Pod) bool { return podConditionTrue(pod, v1.PodReady) }

func podConditionTrue(pod *v1.Pod, typ v1.PodConditionType) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == typ {
			return c.Status == v1.ConditionTrue
		}
	}
	return false
}

func podConditions(pod *v1.Pod) string {
	s := "["
	for i, c := range pod.Status.Conditions {
		if i > 0 {
			s += " "
		}
		s += fmt.Sprintf("%s=%s", c.Type, c.Status)
		if c.Reason != "" {
			s += "(" + c.Reason + ")"
		}
	}
	return s + "]"
}
