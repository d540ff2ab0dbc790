package node

import (
	"context"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/test/integration/framework"
)

// The real agent on a node without a usable CUDA driver (this machine has no GPU, so the
// agent's cuInit fails) fails a suspension of a pod with GPUs at once: Failed, reason
// DriverUnavailable with the driver's error, a SuspendFailed Event on the pod, the pod left
// as it was. Before, the suspension stayed without a phase, and whoever waited for it (the
// activator holding requests, the scheduler waiting for room) waited until its own timeout.
func TestGPUPodWithoutDriver(t *testing.T) {
	c := framework.Get(t)
	node := c.RealNode(t)
	if !t.Run("install", func(t *testing.T) { testInstall(t, c, node) }) {
		return
	}
	ctx := t.Context()
	ns := c.CreateNamespace(t)
	h := c.Record(t, ns)
	// A pod that holds a GPU as kybernate.io/gpus says, bound to the node by hand: nothing on
	// this machine can give it one. It runs under plain runc (the shim would look for the GPU).
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "train",
			Annotations: map[string]string{kv1.AnnotationGPUs: "GPU-00000000-0000-0000-0000-000000000001"}},
		Spec: v1.PodSpec{
			NodeName:                      node,
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers: []v1.Container{{
				Name: "trainer", Image: workloadImage, ImagePullPolicy: v1.PullNever,
				Command: []string{"/bin/sh", "-c", "while :; do sleep 1; done"},
			}},
		},
	}
	created, err := c.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	framework.WaitForPodRunning(ctx, t, c.Client, ns, pod.Name, time.Minute)

	ck := &kv1.GPUCheckpoint{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "train-idle-1"},
		Spec:       kv1.GPUCheckpointSpec{PodName: pod.Name, PodUID: string(created.UID), Action: kv1.ActionSuspend, Reason: kv1.ReasonIdle},
	}
	start := time.Now()
	if _, err := c.Kybernate(t).KybernateV1alpha1().GPUCheckpoints(ns).Create(ctx, ck, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var failed *kv1.GPUCheckpoint
	h.Wait(t, 30*time.Second, "the suspension ended", func() bool {
		for _, got := range h.LatestCheckpoints() {
			if got.Name == ck.Name && (got.Status.Phase == kv1.PhaseFailed || got.Status.Phase == kv1.PhaseSucceeded) {
				failed = got
				return true
			}
		}
		return false
	})
	t.Logf("suspension %s %s after it was created: %s", failed.Status.Phase, time.Since(start).Round(100*time.Millisecond), failed.Status.Message)
	cond := meta.FindStatusCondition(failed.Status.Conditions, kv1.CheckpointComplete)
	if failed.Status.Phase != kv1.PhaseFailed || cond == nil || cond.Reason != "DriverUnavailable" ||
		!strings.Contains(failed.Status.Message, "its CUDA driver is not usable") || failed.Status.NodeName != node {
		t.Errorf("suspension %s on %q, condition %+v (%s); want Failed on %s, reason DriverUnavailable, the driver's error",
			failed.Status.Phase, failed.Status.NodeName, cond, failed.Status.Message, node)
	}
	framework.WaitFor(ctx, t, 30*time.Second, "the SuspendFailed event of "+pod.Name, func(ctx context.Context) (bool, error) {
		evs, err := c.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + pod.Name + ",reason=SuspendFailed"})
		if err != nil || len(evs.Items) == 0 {
			return false, err
		}
		if msg := evs.Items[0].Message; !strings.Contains(msg, "DriverUnavailable") {
			t.Errorf("SuspendFailed event %q, want the reason DriverUnavailable", msg)
		}
		return true, nil
	})
	// Nothing was done to the pod: it never left Running.
	for _, p := range h.PodVersions(pod.Name) {
		if s := p.Pod.Annotations[kv1.AnnotationState]; s != "" && s != string(kv1.PodRunning) {
			t.Errorf("the pod went %s", s)
		}
		if p.Pod.Status.Phase != "" && p.Pod.Status.Phase != v1.PodPending && p.Pod.Status.Phase != v1.PodRunning {
			t.Errorf("the pod went %s", p.Pod.Status.Phase)
		}
	}
}
