package migrate

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
)

// start marks the pod Checkpointing and asks its agent for an image.
func (c *Controller) start(ctx context.Context, cand candidate, target string, estimate time.Duration) error {
	logger := klog.FromContext(ctx)
	pod := cand.pod
	mark := map[string]string{kv1.AnnotationMigrateTo: target}
	if err := gpupod.SetState(mark, gpupod.StateOf(pod), kv1.PodCheckpointing); err != nil {
		return fmt.Errorf("pod %s: %w", klog.KObj(pod), err)
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
		// The pod must still be the one we looked at: a conflict means someone else acted.
		"resourceVersion": pod.ResourceVersion,
		"annotations":     mark,
	}})
	if err != nil {
		return err
	}
	if _, err := c.client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("marking pod %s Checkpointing: %w", klog.KObj(pod), err)
	}
	ck := &kv1.GPUCheckpoint{
		ObjectMeta: metav1.ObjectMeta{
			Name:        checkpointName(pod, cand.suspension, cand.attempt),
			Namespace:   pod.Namespace,
			Labels:      map[string]string{kv1.LabelMigrationOf: string(pod.UID)},
			Annotations: map[string]string{kv1.AnnotationMigrateTo: target},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID,
			}},
		},
		Spec: kv1.GPUCheckpointSpec{
			PodName: pod.Name,
			PodUID:  string(pod.UID),
			Action:  kv1.ActionCheckpoint,
			Reason:  kv1.ReasonMigration,
		},
	}
	created, err := c.kybernate.KybernateV1alpha1().GPUCheckpoints(pod.Namespace).Create(ctx, ck, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		if uerr := c.backToSuspended(ctx, pod, kv1.PodCheckpointing); uerr != nil {
			logger.Error(uerr, "Could not undo the Checkpointing mark", "pod", klog.KObj(pod))
		}
		return fmt.Errorf("requesting the checkpoint of pod %s: %w", klog.KObj(pod), err)
	}
	if created == nil {
		created = ck
	}
	migrations.WithLabelValues("Started").Inc()
	logger.V(2).Info("Migrating pod", "pod", klog.KObj(pod), "from", pod.Spec.NodeName, "to", target, "bytes", cand.bytes,
		"waited", cand.waited, "estimate", estimate, "attempt", cand.attempt+1)
	if cand.draining {
		c.recorder.Eventf(pod, created, v1.EventTypeNormal, EventMigrating, "Migrate",
			"Node %s is cordoned; node %s has room: checkpointing %s to move the suspended pod there (estimated %s)",
			pod.Spec.NodeName, target, quantity(cand.bytes), estimate.Round(time.Second))
		return nil
	}
	c.recorder.Eventf(pod, created, v1.EventTypeNormal, EventMigrating, "Migrate",
		"No room on node %s after %s suspended; node %s has room: checkpointing %s to move it there (estimated %s)",
		pod.Spec.NodeName, cand.waited.Round(time.Second), target, quantity(cand.bytes), estimate.Round(time.Second))
	return nil
}

// checkpointFailed ends a migration whose checkpoint failed: the agent put the pod back to
// Suspended (its rollback); nothing else was made.
func (c *Controller) checkpointFailed(ctx context.Context, pod *v1.Pod, ck *kv1.GPUCheckpoint) error {
	c.recorder.Eventf(pod, ck, v1.EventTypeWarning, EventMigrationFailed, "Migrate",
		"Checkpoint for the move to node %s failed; the pod stays suspended on node %s: %s",
		ck.Annotations[kv1.AnnotationMigrateTo], pod.Spec.NodeName, ck.Status.Message)
	migrations.WithLabelValues("CheckpointFailed").Inc()
	if gpupod.StateOf(pod) == kv1.PodCheckpointing {
		// The agent never took it on; release the mark.
		if err := c.backToSuspended(ctx, pod, kv1.PodCheckpointing); err != nil {
			return err
		}
	}
	return c.markResult(ctx, ck, kv1.MigrationFailed)
}

// abandon gives a migration up after its image was written: the pod stays suspended on its
// node; the image stays too.
func (c *Controller) abandon(ctx context.Context, pod *v1.Pod, ck *kv1.GPUCheckpoint, why string) error {
	if err := c.backToSuspended(ctx, pod, gpupod.StateOf(pod)); err != nil {
		return err
	}
	c.recorder.Eventf(pod, ck, v1.EventTypeWarning, EventMigrationAbandoned, "Migrate",
		"Move to node %s given up, the pod stays suspended on node %s: %s", ck.Annotations[kv1.AnnotationMigrateTo], pod.Spec.NodeName, why)
	klog.FromContext(ctx).V(2).Info("Migration abandoned", "pod", klog.KObj(pod), "reason", why)
	migrations.WithLabelValues(kv1.MigrationAbandoned).Inc()
	return c.markResult(ctx, ck, kv1.MigrationAbandoned)
}

// backToSuspended puts a pod that was marked for a migration (in state from) back to
// Suspended and removes the mark. A pod that is Suspended already, or in a state from which
// the state machine does not lead back to Suspended, only loses the mark.
func (c *Controller) backToSuspended(ctx context.Context, pod *v1.Pod, from kv1.PodGPUState) error {
	ann := map[string]any{kv1.AnnotationMigrateTo: nil} // null removes the mark
	state := map[string]string{}
	if err := gpupod.SetState(state, from, kv1.PodSuspended); err != nil && from != kv1.PodSuspended {
		klog.FromContext(ctx).Info("Leaving the pod's GPU state as it is", "pod", klog.KObj(pod), "err", err)
	}
	for k, v := range state {
		ann[k] = v
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
		"uid":         pod.UID,
		"annotations": ann,
	}})
	if err != nil {
		return err
	}
	if _, err := c.client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("putting pod %s back to Suspended: %w", klog.KObj(pod), err)
	}
	return nil
}

func (c *Controller) markResult(ctx context.Context, ck *kv1.GPUCheckpoint, result string) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{kv1.AnnotationMigrationResult: result}}})
	if err != nil {
		return err
	}
	_, err = c.kybernate.KybernateV1alpha1().GPUCheckpoints(ck.Namespace).Patch(ctx, ck.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("recording migration result %s on %s: %w", result, klog.KObj(ck), err)
	}
	return nil
}

func checkpointName(pod *v1.Pod, suspension *kv1.GPUCheckpoint, attempt int) string {
	return gpupod.MoveName(pod, "migrate", suspension, attempt)
}
