package migrate

import (
	"context"
	"fmt"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/kybernate/kybernate/apis/config"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
)

// syncReplacement carries a migration whose image is written forward: it creates the
// replacement and its Restore, then deletes the original once the replacement runs, or
// deletes the replacement when its restore failed.
func (c *Controller) syncReplacement(ctx context.Context, pod *v1.Pod, ck *kv1.GPUCheckpoint) error {
	ns := pod.Namespace
	replName := replacementName(pod, ck)
	restoreName := replName + "-restore"
	restore, err := c.ckLister.GPUCheckpoints(ns).Get(restoreName)
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	repl, err := c.podLister.Pods(ns).Get(replName)
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	if repl != nil && repl.Annotations[kv1.AnnotationMigratedFrom] != gpupod.FormatMigratedFrom(pod) {
		return c.abandon(ctx, pod, ck, fmt.Sprintf("a pod %s/%s that is not its replacement exists", ns, replName))
	}

	switch {
	case restore != nil && restore.Status.Phase == kv1.PhaseSucceeded && repl != nil:
		return c.succeeded(ctx, pod, repl, ck, restore)
	case restore != nil && (restore.Status.Phase == kv1.PhaseFailed || repl == nil) ||
		repl != nil && (repl.Status.Phase == v1.PodFailed || repl.DeletionTimestamp != nil):
		return c.restoreFailed(ctx, pod, repl, ck, restore, replName)
	case repl != nil && restore == nil:
		return c.createRestore(ctx, pod, repl, ck, restoreName)
	case repl != nil:
		return nil // restoring
	}
	return c.placeReplacement(ctx, pod, ck, replName, restoreName)
}

// succeeded ends a migration whose replacement runs: the original goes.
func (c *Controller) succeeded(ctx context.Context, pod, repl *v1.Pod, ck, restore *kv1.GPUCheckpoint) error {
	ns := pod.Namespace
	uid := pod.UID
	c.recorder.Eventf(repl, restore, v1.EventTypeNormal, EventMigrated, "Migrate",
		"Restored on node %s from %s: replaces pod %s, which was suspended on node %s", repl.Spec.NodeName, ck.Status.ImageLocation, pod.Name, pod.Spec.NodeName)
	c.recorder.Eventf(pod, ck, v1.EventTypeNormal, EventMigrated, "Migrate",
		"Moved to node %s as pod %s; deleting this pod", repl.Spec.NodeName, repl.Name)
	if err := c.client.CoreV1().Pods(ns).Delete(ctx, pod.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("deleting the migrated pod %s: %w", klog.KObj(pod), err)
	}
	migrations.WithLabelValues(kv1.MigrationSucceeded).Inc()
	duration.Observe(c.now().Sub(ck.CreationTimestamp.Time).Seconds())
	movedBytes.Add(float64(ck.Status.BytesMoved))
	klog.FromContext(ctx).V(2).Info("Migrated pod", "pod", klog.KObj(pod), "replacement", klog.KObj(repl), "node", repl.Spec.NodeName,
		"duration", c.now().Sub(ck.CreationTimestamp.Time))
	if err := c.markResult(ctx, ck, kv1.MigrationSucceeded); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return nil
}

// restoreFailed ends a migration whose restore failed (or whose replacement went): the
// replacement is deleted and the original, still suspended where it was, stays.
func (c *Controller) restoreFailed(ctx context.Context, pod, repl *v1.Pod, ck, restore *kv1.GPUCheckpoint, replName string) error {
	ns, target := pod.Namespace, ck.Annotations[kv1.AnnotationMigrateTo]
	msg := "the replacement pod went away"
	if restore != nil && restore.Status.Phase == kv1.PhaseFailed {
		msg = restore.Status.Message
	}
	if repl == nil {
		// A restore refused at once can be seen before the pod informer shows the replacement
		// created just before it: ask the API server, or the replacement would stay behind.
		var err error
		if repl, err = c.liveReplacement(ctx, pod, replName); err != nil {
			return err
		}
	}
	if repl != nil {
		ruid := repl.UID
		if err := c.client.CoreV1().Pods(ns).Delete(ctx, repl.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &ruid}}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting replacement %s after its restore failed: %w", klog.KObj(repl), err)
		}
	}
	if err := c.backToSuspended(ctx, pod, gpupod.StateOf(pod)); err != nil {
		return err
	}
	c.recorder.Eventf(pod, ck, v1.EventTypeWarning, EventMigrationFailed, "Migrate",
		"Restore on node %s failed, replacement %s deleted; the pod stays suspended on node %s (image kept at %s): %s",
		target, replName, pod.Spec.NodeName, ck.Status.ImageLocation, msg)
	migrations.WithLabelValues("RestoreFailed").Inc()
	return c.markResult(ctx, ck, kv1.MigrationFailed)
}

// liveReplacement is the replacement named replName as the API server has it, nil when there
// is none or the pod of that name is not this pod's replacement.
func (c *Controller) liveReplacement(ctx context.Context, pod *v1.Pod, replName string) (*v1.Pod, error) {
	repl, err := c.client.CoreV1().Pods(pod.Namespace).Get(ctx, replName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading replacement %s/%s after its restore failed: %w", pod.Namespace, replName, err)
	}
	if repl.Annotations[kv1.AnnotationMigratedFrom] != gpupod.FormatMigratedFrom(pod) {
		return nil, nil
	}
	return repl, nil
}

// placeReplacement creates the replacement of a checkpointed pod on a node with room for what
// its image needs (the node chosen at the start first), and asks for its restore.
func (c *Controller) placeReplacement(ctx context.Context, pod *v1.Pod, ck *kv1.GPUCheckpoint, replName, restoreName string) error {
	ns, target := pod.Namespace, ck.Annotations[kv1.AnnotationMigrateTo]
	if gpupod.StateOf(pod) != kv1.PodCheckpointed || pod.DeletionTimestamp != nil {
		return c.abandon(ctx, pod, ck, fmt.Sprintf("the pod is %s, not Checkpointed", pod.Annotations[kv1.AnnotationState]))
	}
	img := ck.Status.Image
	if img == nil || img.Digest == "" || ck.Status.ImageLocation == "" {
		return c.abandon(ctx, pod, ck, "the agent reported no verified image")
	}
	d, err := gpupod.PodDemand(pod)
	if err != nil {
		return c.abandon(ctx, pod, ck, err.Error())
	}
	want := Requirements{Model: img.GPUModel, DriverVersion: img.DriverVersion, CUDADriverVersion: img.CUDADriverVersion, Simulated: img.Simulated}
	// The replacement is created bound, past the scheduler: its GPUs are chosen under the
	// ledger's lock and held there, first under a provisional UID (the API server gives the
	// real one), until the pod informer shows it.
	c.ledger.Lock()
	node, uuids, err := c.chooseReplacement(pod, d, want, target)
	var r *v1.Pod
	if err == nil && node != "" {
		r = Replacement(pod, replName, node, uuids, ck.Status.ImageLocation)
		provisional := r.DeepCopy()
		provisional.UID = types.UID("replacement/" + ns + "/" + replName)
		c.ledger.Reserve(gpupod.OwnerMigration, provisional, reservationTTL)
		defer c.ledger.Release(provisional.UID)
	}
	c.ledger.Unlock()
	if err != nil {
		return err
	}
	if node == "" {
		return c.abandon(ctx, pod, ck, fmt.Sprintf("no node with %s GPUs and driver %s has room any more", want.Model, want.DriverVersion))
	}
	created, err := c.client.CoreV1().Pods(ns).Create(ctx, r, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil // the informer brings it
	}
	if err != nil {
		return fmt.Errorf("creating replacement %s/%s: %w", ns, replName, err)
	}
	c.ledger.Reserve(gpupod.OwnerMigration, created, reservationTTL)
	klog.FromContext(ctx).V(2).Info("Created replacement pod", "pod", klog.KObj(pod), "replacement", klog.KObj(created), "node", node, "gpus", uuids, "image", ck.Status.ImageLocation)
	c.recorder.Eventf(pod, ck, v1.EventTypeNormal, EventMigrationRestoring, "Migrate",
		"Image %s verified (%s, digest %s); replacement %s restores it on node %s, GPUs %s", ck.Status.ImageLocation,
		quantity(img.SizeBytes), img.Digest, created.Name, node, strings.Join(uuids, ","))
	return c.createRestore(ctx, pod, created, ck, restoreName)
}

// reservationTTL bounds how long the ledger holds a replacement's memory when the pod
// informer never shows the replacement.
const reservationTTL = time.Minute

// chooseReplacement picks the node and GPUs of a replacement with room for what its image
// needs: the node chosen at the start first, any other that meets the image's needs else; no
// node when none has room. The caller holds the ledger's lock.
func (c *Controller) chooseReplacement(pod *v1.Pod, d gpupod.Demand, want Requirements, target string) (string, []string, error) {
	accs := map[string]*gpupod.Accounting{}
	if gn, err := c.gpuNodes.Get(target); err == nil {
		if ok, _ := want.Compatible(gn); ok {
			if acc, err := c.accountingWithout(target, pod, accs); err == nil {
				if uuids := acc.Choose(d.WithModel(want.Model).Restoring(gn), config.MostAllocated); uuids != nil {
					return target, uuids, nil
				}
			}
		}
	}
	return c.target(pod, d, want, accs)
}

// createRestore asks the replacement's agent to restore its GPU memory from the image.
func (c *Controller) createRestore(ctx context.Context, pod, repl *v1.Pod, ck *kv1.GPUCheckpoint, name string) error {
	rck := &kv1.GPUCheckpoint{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Namespace:   pod.Namespace,
			Labels:      map[string]string{kv1.LabelMigrationOf: string(pod.UID)},
			Annotations: map[string]string{kv1.AnnotationMigratedFrom: gpupod.FormatMigratedFrom(pod)},
			// Owned by the original: it outlives a failed replacement, so that the failure is
			// remembered, and goes with the original once the move is done.
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID}},
		},
		Spec: kv1.GPUCheckpointSpec{
			PodName:    repl.Name,
			PodUID:     string(repl.UID),
			Action:     kv1.ActionRestore,
			Reason:     kv1.ReasonMigration,
			Image:      ck.Status.ImageLocation,
			TargetGPUs: gpupod.AssignedGPUs(repl),
		},
	}
	if _, err := c.kybernate.KybernateV1alpha1().GPUCheckpoints(pod.Namespace).Create(ctx, rck, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("requesting the restore of %s: %w", klog.KObj(repl), err)
	}
	return nil
}

// Replacement is the pod that replaces pod on node: the same spec, bound to node with the GPUs
// gpus, restored from image. Labels and annotations are kept but for Kybernate's outputs;
// a controlling owner is never copied (such pods do not move).
func Replacement(pod *v1.Pod, name, node string, gpus []string, image string) *v1.Pod {
	r := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Namespace:   pod.Namespace,
			Labels:      map[string]string{},
			Annotations: map[string]string{},
		},
		Spec: *pod.Spec.DeepCopy(),
	}
	for k, v := range pod.Labels {
		if k != kv1.LabelTimeSlice {
			r.Labels[k] = v
		}
	}
	for k, v := range pod.Annotations {
		if !gpupod.IsOutput(k) {
			r.Annotations[k] = v
		}
	}
	for _, o := range pod.OwnerReferences {
		if o.Controller == nil || !*o.Controller {
			r.OwnerReferences = append(r.OwnerReferences, o)
		}
	}
	r.Annotations[kv1.AnnotationRestoreFrom] = image
	r.Annotations[kv1.AnnotationGPUs] = gpupod.FormatGPUs(gpus)
	// The replacement continues the checkpointed pod: Checkpointed -> Restoring, which the
	// state machine allows (gpupod's table test).
	_ = gpupod.SetState(r.Annotations, kv1.PodCheckpointed, kv1.PodRestoring)
	r.Annotations[kv1.AnnotationMigratedFrom] = gpupod.FormatMigratedFrom(pod)
	r.Spec.NodeName = node
	r.Spec.EphemeralContainers = nil
	r.Spec.SchedulingGates = nil
	r.Spec.Hostname = ""
	return r
}

func parseMigratedFrom(s string) (ns, name string, uid types.UID, ok bool) {
	ns, name, uid, err := gpupod.ParseMigratedFrom(s)
	return ns, name, uid, err == nil
}

// replacementName is <name>-m<5 characters of the checkpoint's UID>, within 63 characters
// (the pod's hostname).
func replacementName(pod *v1.Pod, ck *kv1.GPUCheckpoint) string {
	uid := strings.ReplaceAll(string(ck.UID), "-", "")
	if len(uid) > 5 {
		uid = uid[:5]
	}
	suffix := "-m" + uid
	name := pod.Name
	if limit := 63 - len(suffix); len(name) > limit {
		name = strings.TrimRight(name[:limit], "-.")
	}
	return name + suffix
}
