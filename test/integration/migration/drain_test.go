package migration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/sim"
	"github.com/kybernate/kybernate/test/integration/framework"
)

// cordon sets a node's spec.unschedulable, as kubectl cordon and kubectl drain do, until the
// test ends.
func (e env) cordon(t *testing.T, node string) {
	t.Helper()
	set := func(ctx context.Context, v bool) error {
		_, err := e.c.Client.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, fmt.Appendf(nil, `{"spec":{"unschedulable":%t}}`, v), metav1.PatchOptions{})
		return err
	}
	if err := set(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := set(context.Background(), false); err != nil {
			t.Errorf("uncordoning %s: %v", node, err)
		}
	})
}

// A node is drained while it holds a pod suspended by hand: once the node is cordoned, the
// migration controller moves the pod to the other node at once (no minimum wait, though a
// manual suspension never moves otherwise), so that the drain's evictions find nothing of it
// left there. The pod or its replacement exists all along and never two run.
func TestDrainMovesSuspendedPod(t *testing.T) {
	e := setup(t)
	ns := e.c.CreateNamespace(t)
	// Earlier tests' pods may still be going: start with both GPUs empty.
	framework.WaitFor(t.Context(), t, 2*time.Minute, "both GPUs free", func(ctx context.Context) (bool, error) {
		for _, n := range []string{nodeA, nodeB} {
			gn, err := e.kc.KybernateV1alpha1().GPUNodes().Get(ctx, n, metav1.GetOptions{})
			if err != nil || len(gn.Status.GPUs) == 0 || len(gn.Status.GPUs[0].Pods) > 0 || len(gn.Status.SuspendedPods) > 0 {
				return false, err
			}
		}
		return true, nil
	})
	e.create(t, gpuPod(ns, "train", low).Obj())
	p := e.waitState(t, ns, "train", kv1.PodRunning, time.Minute)
	from, to := p.Spec.NodeName, nodeB
	if from == nodeB {
		to = nodeA
	}
	framework.WaitForPod(t.Context(), t, e.c.Client, ns, "train", time.Minute, "progress 1s", func(p *v1.Pod) bool { return sim.ProgressOf(p) >= time.Second })
	ck := &kv1.GPUCheckpoint{ObjectMeta: metav1.ObjectMeta{Name: "by-hand", Namespace: ns},
		Spec: kv1.GPUCheckpointSpec{PodName: "train", PodUID: string(p.UID), Action: kv1.ActionSuspend, Reason: kv1.ReasonManual}}
	if _, err := e.kc.KybernateV1alpha1().GPUCheckpoints(ns).Create(t.Context(), ck, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitState(t, ns, "train", kv1.PodSuspended, time.Minute)
	time.Sleep(time.Second) // the published counter catches up with the parked one
	parked := sim.ProgressOf(e.pod(t, ns, "train"))

	stop := e.watchInvariant(t, ns)
	e.cordon(t, from)
	framework.WaitForPodGone(t.Context(), t, e.c.Client, ns, "train", 2*time.Minute)
	stop()

	repl := e.replacements(t, ns)
	if len(repl) != 1 || repl[0].Spec.NodeName != to || state(&repl[0]) != kv1.PodRunning {
		t.Fatalf("replacements %d, want one Running on %s", len(repl), to)
	}
	framework.WaitForPod(t.Context(), t, e.c.Client, ns, repl[0].Name, time.Minute, "progress on from where it stopped", func(p *v1.Pod) bool {
		return sim.ProgressOf(p) > parked
	})
	// Events are sent asynchronously: wait for it rather than list once.
	var evs *v1.EventList
	err := framework.Poll(t.Context(), 30*time.Second, func(ctx context.Context) (bool, error) {
		var err error
		evs, err = e.c.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=train,reason=Migrating"})
		return err == nil && len(evs.Items) > 0, err
	})
	if err != nil || len(evs.Items) != 1 || !strings.Contains(evs.Items[0].Message, "Node "+from+" is cordoned") {
		t.Errorf("Migrating Events %+v, want one saying node %s is cordoned (%v)", evs, from, err)
	}
}
