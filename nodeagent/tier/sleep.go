package tier

import (
	"context"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/nodeagent/controller"
)

// spillSleepers spills the node's pods that sleep on disk (SleepSpills) as soon as their
// suspension succeeded, whatever the high-water mark says. A failed spill leaves the pod
// asleep in host memory (Spill says why) and is tried again after a backoff.
func (m *Manager) spillSleepers(ctx context.Context, node string) {
	n, ok := m.nodes.TierNode(node)
	if !ok {
		return
	}
	pods := map[types.UID]*v1.Pod{}
	var asleep []Asleep
	parked, names, err := m.parkedOn(ctx, n)
	if err != nil {
		klog.FromContext(ctx).V(2).Info("Listing the suspended pods of a node failed", "node", node, "err", err)
		return
	}
	for _, u := range names {
		pod, err := m.pods.Pods(u.Namespace).Get(u.Name)
		if err != nil || pod.UID != u.UID {
			continue
		}
		if a, ok := m.asleep(pod, node); ok {
			pods[pod.UID] = pod
			asleep = append(asleep, a)
		}
	}
	m.pruneSleeps(node, pods)
	for _, uid := range SleepSpills(asleep, m.clock.Now()) {
		if ctx.Err() != nil {
			return
		}
		pod := pods[uid]
		klog.FromContext(ctx).V(2).Info("Spilling a pod put to sleep on disk", "pod", klog.KObj(pod), "node", node, "sleep", kv1.SleepDisk)
		err := m.spillOn(ctx, node, n, pod, bytesOf(parked, uid))
		m.mu.Lock()
		if err == nil {
			delete(m.failedSleeps, uid)
		} else {
			r := m.failedSleeps[uid]
			r.node, r.failures = node, r.failures+1
			r.notBefore = m.clock.Now().Add(Backoff(r.failures, m.cfg.RetryBackoff, m.cfg.MaxBackoff))
			m.failedSleeps[uid] = r
		}
		m.mu.Unlock()
		if err != nil {
			klog.FromContext(ctx).V(2).Info("Spilling a pod put to sleep on disk failed; it sleeps in host memory until the next try",
				"pod", klog.KObj(pod), "node", node, "err", err)
		}
	}
}

// asleep is how the sleep rule sees a pod whose memory is parked in host memory: the reason
// of its last Suspend on node, its kybernate.io/sleep and whether a wake was asked for since.
// A kybernate.io/sleep that does not decode counts as HostMemory (the activator reports it on
// the pod and never puts such a pod to sleep).
func (m *Manager) asleep(pod *v1.Pod, node string) (Asleep, bool) {
	list, err := m.ckpts.GPUCheckpoints(pod.Namespace).List(labels.Everything())
	if err != nil {
		return Asleep{}, false
	}
	last := controller.LastSuspend(list, pod, node)
	if last == nil {
		return Asleep{}, false
	}
	depth, err := gpupod.Sleep(pod)
	if err != nil {
		depth = kv1.SleepHostMemory
	}
	m.mu.Lock()
	notBefore := m.failedSleeps[pod.UID].notBefore
	m.mu.Unlock()
	return Asleep{UID: pod.UID, Reason: last.Spec.Reason, Depth: depth, NotBefore: notBefore,
		WakePending: gpupod.WakePending(pod, last.CreationTimestamp.Time)}, true
}

// pruneSleeps forgets the failed spills of node's pods that are no longer asleep in host
// memory (woken, spilled, gone): their next sleep starts without a backoff.
func (m *Manager) pruneSleeps(node string, asleep map[types.UID]*v1.Pod) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for uid, r := range m.failedSleeps {
		if _, ok := asleep[uid]; r.node == node && !ok {
			delete(m.failedSleeps, uid)
		}
	}
}

// CheckpointHandler pokes the policy when a suspension for idleness succeeds, so that a pod
// that sleeps on disk is spilled at once rather than at the next Config.Interval. Register it
// on the informer of the GPUCheckpoints the manager lists.
func (m *Manager) CheckpointHandler() cache.ResourceEventHandler {
	sleptNow := func(obj any) bool {
		ck, ok := obj.(*kv1.GPUCheckpoint)
		return ok && ck.Spec.Action == kv1.ActionSuspend && ck.Spec.Reason == kv1.ReasonIdle && ck.Status.Phase == kv1.PhaseSucceeded
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if sleptNow(obj) {
				m.Poke()
			}
		},
		UpdateFunc: func(old, obj any) {
			if sleptNow(obj) && !sleptNow(old) {
				m.Poke()
			}
		},
	}
}
