package activator

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

// wake acts for the held requests of a route none of whose pods is ready: it asks a sleeping
// pod to wake, and answers the held requests 503 when the wake failed or took too long.
func (c *Controller) wake(ctx context.Context, key string, r *route, pods []*v1.Pod) error {
	st := r.backend.State()
	if st.WakingSince.IsZero() {
		return nil
	}
	if len(pods) == 0 {
		c.fail(ctx, key, r, nil, WakeFailed, fmt.Sprintf("no pod matches %s=%s in its namespace", kv1.AnnotationBackendSelector, r.selector))
		return nil
	}
	if c.now().Sub(st.WakingSince) >= c.cfg.WakeTimeout {
		c.fail(ctx, key, r, pods[0], WakeTimedOut, fmt.Sprintf("no pod became ready within %s", c.cfg.WakeTimeout))
		return nil
	}
	// A pod on its way back (or still going to sleep, to be woken next) is waited for.
	for _, p := range pods {
		switch gpupod.StateOf(p) {
		case kv1.PodResuming, kv1.PodSuspending, kv1.PodRestoring, kv1.PodCheckpointing, kv1.PodRunning:
			if failed := c.failedResume(p, st.WakingSince); failed != nil {
				c.failResume(ctx, key, r, p, failed)
			}
			return nil
		}
	}
	for _, p := range pods {
		if gpupod.StateOf(p) != kv1.PodSuspended {
			continue
		}
		if failed := c.failedResume(p, st.WakingSince); failed != nil {
			c.failResume(ctx, key, r, p, failed)
			return nil
		}
		suspension := c.lastSuspension(p)
		if suspension != nil && gpupod.WakePending(p, suspension.CreationTimestamp.Time) {
			return nil // asked already; the resume controller resumes it when it fits
		}
		return c.requestWake(ctx, p, st.Held)
	}
	c.fail(ctx, key, r, pods[0], WakeFailed, "none of its pods is running or suspended (checkpointed pods are not woken)")
	return nil
}

// requestWake stamps kybernate.io/wake-requested on a sleeping pod: the scheduler's resume
// controller resumes it, by priority, when its node has room.
func (c *Controller) requestWake(ctx context.Context, pod *v1.Pod, held int) error {
	now := c.now()
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{
		kv1.AnnotationWakeRequested: gpupod.FormatWakeRequested(now),
	}}})
	if err != nil {
		return err
	}
	if _, err := c.client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("asking pod %s to wake: %w", klog.KObj(pod), err)
	}
	klog.FromContext(ctx).V(2).Info("Asked a sleeping pod to wake", "pod", klog.KObj(pod), "held", held)
	c.recorder.Eventf(pod, nil, v1.EventTypeNormal, "WakeRequested", "Wake", "%d requests held by the activator: asked the scheduler to resume the pod", held)
	return nil
}

// failedResume is a Resume of the pod created since the wake began that failed for good (not
// deferred for lack of memory: the resume controller tries that again).
func (c *Controller) failedResume(pod *v1.Pod, since time.Time) *kv1.GPUCheckpoint {
	for _, ck := range c.podCheckpoints(pod) {
		if ck.Spec.Action == kv1.ActionResume && ck.Status.Phase == kv1.PhaseFailed && !ck.Status.Deferred() &&
			!ck.CreationTimestamp.Time.Before(since.Truncate(time.Second)) {
			return ck
		}
	}
	return nil
}

func (c *Controller) failResume(ctx context.Context, key string, r *route, pod *v1.Pod, ck *kv1.GPUCheckpoint) {
	reason := "the resume failed"
	for _, cond := range ck.Status.Conditions {
		if cond.Type == kv1.CheckpointComplete && cond.Message != "" {
			reason = "the resume failed: " + cond.Message
		}
	}
	reason = fmt.Sprintf("%s (GPUCheckpoint %s)", reason, ck.Name)
	if r.reported[string(ck.UID)] {
		return
	}
	r.reported[string(ck.UID)] = true
	c.fail(ctx, key, r, pod, WakeFailed, reason)
}

// fail answers the route's held requests 503 with reason and tells the pod.
func (c *Controller) fail(ctx context.Context, key string, r *route, pod *v1.Pod, outcome, reason string) {
	n := r.backend.Fail(outcome, reason)
	klog.FromContext(ctx).Info("Wake failed", "service", key, "outcome", outcome, "reason", reason, "answered", n)
	if pod != nil {
		c.recorder.Eventf(pod, nil, v1.EventTypeWarning, "WakeFailed", "Wake", "%d held requests answered 503: %s", n, reason)
	}
}

// lastSuspension is the pod's latest Suspend GPUCheckpoint that succeeded, or nil.
func (c *Controller) lastSuspension(pod *v1.Pod) *kv1.GPUCheckpoint {
	var last *kv1.GPUCheckpoint
	for _, ck := range c.podCheckpoints(pod) {
		if ck.Spec.Action == kv1.ActionSuspend && ck.Status.Phase == kv1.PhaseSucceeded &&
			(last == nil || ck.CreationTimestamp.After(last.CreationTimestamp.Time)) {
			last = ck
		}
	}
	return last
}

// sleepIfIdle puts the route's ready pods that opted in to sleep once no request has come for
// their kybernate.io/idle-after.
func (c *Controller) sleepIfIdle(ctx context.Context, key string, r *route, pods []*v1.Pod) error {
	st := r.backend.State()
	for _, p := range pods {
		idleAfter, set, err := gpupod.IdleAfter(p)
		if !set {
			continue
		}
		if err != nil {
			if id := string(p.UID) + "/" + p.Annotations[kv1.AnnotationIdleAfter]; !r.reported[id] {
				r.reported[id] = true
				c.recorder.Eventf(p, nil, v1.EventTypeWarning, "InvalidAnnotation", "Sleep", "The pod never sleeps: %v", err)
			}
			continue
		}
		if _, err := gpupod.Sleep(p); err != nil {
			if id := string(p.UID) + "/" + p.Annotations[kv1.AnnotationSleep]; !r.reported[id] {
				r.reported[id] = true
				c.recorder.Eventf(p, nil, v1.EventTypeWarning, "InvalidAnnotation", "Sleep", "The pod never sleeps: %v", err)
			}
			continue
		}
		if st.Busy || st.IdleFor < idleAfter || gpupod.StateOf(p) != kv1.PodRunning || p.Spec.NodeName == "" || !c.settled(p, idleAfter) {
			continue
		}
		if err := c.sleep(ctx, key, r, p, idleAfter); err != nil {
			return err
		}
	}
	return nil
}

// settled reports whether no GPUCheckpoint of the pod is in flight and no sleep of it failed
// within the last idleAfter: a failed suspension is not retried at once.
func (c *Controller) settled(pod *v1.Pod, idleAfter time.Duration) bool {
	for _, ck := range c.podCheckpoints(pod) {
		if !ended(ck) {
			return false
		}
		if ck.Spec.Reason == kv1.ReasonIdle && ck.Status.Phase == kv1.PhaseFailed && ck.Status.CompletionTime != nil &&
			c.now().Sub(ck.Status.CompletionTime.Time) < idleAfter {
			return false
		}
	}
	return true
}

// sleep asks the node agent to suspend an idle pod, through a GPUCheckpoint like any other
// suspension. The route stops sending it requests at once; they are held until it wakes.
func (c *Controller) sleep(ctx context.Context, key string, r *route, pod *v1.Pod, idleAfter time.Duration) error {
	n := 1
	for _, ck := range c.podCheckpoints(pod) {
		if ck.Spec.Action == kv1.ActionSuspend && ck.Spec.Reason == kv1.ReasonIdle {
			n++
		}
	}
	r.backend.SetAsleep()
	ck := gpupod.IdleCheckpoint(pod, n)
	created, err := c.kybernate.KybernateV1alpha1().GPUCheckpoints(pod.Namespace).Create(ctx, ck, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	if err != nil {
		c.queue.Add(key) // back to the pod, which is still awake
		return fmt.Errorf("putting pod %s to sleep: %w", klog.KObj(pod), err)
	}
	sleeps.Inc()
	depth, _ := gpupod.Sleep(pod) // checked by the caller
	klog.FromContext(ctx).V(2).Info("Putting an idle pod to sleep", "service", key, "pod", klog.KObj(pod), "idleAfter", idleAfter, "sleep", depth, "checkpoint", created.Name)
	where := "its GPU memory parked in host memory"
	if depth == kv1.SleepDisk {
		where = "its GPU memory parked in host memory, then spilled to the node agent's disk tier"
	}
	c.recorder.Eventf(pod, created, v1.EventTypeNormal, "Sleeping", "Sleep", "No request for %s (%s): suspending the pod to free its GPU (%s %s: %s)",
		idleAfter, kv1.AnnotationIdleAfter, kv1.AnnotationSleep, depth, where)
	return nil
}
