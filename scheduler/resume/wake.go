package resume

import (
	"context"
	"fmt"
	"slices"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
)

// preemptForWake makes room on its node for a pod that a request asked to wake and that does
// not fit: it suspends the cheapest set of lower-priority pods whose suspension lets it back
// (gpupod.SelectVictims, the rules of CheckpointPreemption: priority, min-runtime,
// kybernate.io/preemption), each through a GPUCheckpoint with reason Preemption and the woken
// pod as preemptor. While suspensions for it are in flight it asks for no more; when the
// victims are parked the next sync resumes it into their room, highest priority first.
func (c *Controller) preemptForWake(ctx context.Context, gn *kv1.GPUNode, onNode []*v1.Pod, cand candidate) error {
	logger := klog.FromContext(ctx)
	if c.suspensionsInFlightFor(cand.pod) {
		return nil
	}
	// Its own slots move with it: the dry run places it as if it held none.
	others := slices.DeleteFunc(slices.Clone(onNode), func(p *v1.Pod) bool { return p.UID == cand.pod.UID })
	victims, why := gpupod.SelectVictims(gn, others, cand.pod, cand.demand, gpupod.VictimRules{
		Strategy: c.strategy, DefaultMinRuntime: c.defaultMinRuntime, Now: c.now(),
	})
	if len(victims) == 0 {
		logger.V(4).Info("A woken pod waits for room: no suspension helps", "pod", klog.KObj(cand.pod), "node", gn.Name, "reason", why)
		return nil
	}
	for _, v := range victims {
		ck := gpupod.SuspendCheckpoint(v.Pod, cand.pod)
		if _, err := c.kybernate.KybernateV1alpha1().GPUCheckpoints(ck.Namespace).Create(ctx, ck, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("suspending pod %s for woken pod %s: %w", klog.KObj(v.Pod), klog.KObj(cand.pod), err)
		}
		logger.V(2).Info("Suspending pod for a woken pod", "victim", klog.KObj(v.Pod), "pod", klog.KObj(cand.pod), "node", gn.Name, "bytes", v.Bytes)
		c.recorder.Eventf(v.Pod, cand.pod, v1.EventTypeNormal, "Preempted", "Suspending",
			"Preempted by pod %s, which a request woke on node %s: suspending its GPU memory to host memory (GPUCheckpoint %s)", klog.KObj(cand.pod), gn.Name, ck.Name)
	}
	return nil
}

// suspensionsInFlightFor reports whether suspensions that name the pod as preemptor have not
// ended yet.
func (c *Controller) suspensionsInFlightFor(pod *v1.Pod) bool {
	for _, obj := range c.checkpoints.List() {
		ck := obj.(*kv1.GPUCheckpoint)
		if ck.Spec.Action == kv1.ActionSuspend && ck.Spec.Preemptor != nil && ck.Spec.Preemptor.UID == string(pod.UID) && !ended(ck) {
			return true
		}
	}
	return false
}
