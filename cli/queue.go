package cli

import (
	"context"
	"fmt"
	"slices"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"

	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/scheduler/timeslice"
)

// snapshot is what the read-only commands look at: pods and their GPUCheckpoints, read once.
type snapshot struct {
	now  time.Time
	pods []*v1.Pod
	// checkpoints by pod UID.
	checkpoints map[string][]*kv1.GPUCheckpoint
}

// readSnapshot lists the pods of namespace ns (all when empty) and every GPUCheckpoint of
// those namespaces.
func readSnapshot(ctx context.Context, kube kubernetes.Interface, kyb versioned.Interface, ns string, opts metav1.ListOptions) (*snapshot, error) {
	pods, err := kube.CoreV1().Pods(ns).List(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("listing pods: %w", err)
	}
	cks, err := kyb.KybernateV1alpha1().GPUCheckpoints(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing GPUCheckpoints: %w", err)
	}
	s := &snapshot{now: time.Now(), checkpoints: map[string][]*kv1.GPUCheckpoint{}}
	for i := range pods.Items {
		s.pods = append(s.pods, &pods.Items[i])
	}
	// Checkpoints without a pod UID belong to the pod of their name at the time.
	uidOf := map[string]string{}
	for _, p := range s.pods {
		uidOf[p.Namespace+"/"+p.Name] = string(p.UID)
	}
	for i := range cks.Items {
		ck := &cks.Items[i]
		uid := ck.Spec.PodUID
		if uid == "" {
			uid = uidOf[ck.Namespace+"/"+ck.Spec.PodName]
		}
		s.checkpoints[uid] = append(s.checkpoints[uid], ck)
	}
	return s, nil
}

func (s *snapshot) usage(pod *v1.Pod) timeslice.Usage {
	return timeslice.UsageOf(pod, s.checkpoints[string(pod.UID)], s.now)
}

// lastSuspend is the pod's latest successful Suspend in the snapshot, or nil.
func (s *snapshot) lastSuspend(pod *v1.Pod) *kv1.GPUCheckpoint {
	var last *kv1.GPUCheckpoint
	for _, ck := range s.checkpoints[string(pod.UID)] {
		if ck.Spec.Action == kv1.ActionSuspend && ck.Status.Phase == kv1.PhaseSucceeded && (last == nil || startedAt(ck).After(startedAt(last))) {
			last = ck
		}
	}
	return last
}

// TurnEntry is one pod waiting for GPUs on a node, in the order they get them.
type TurnEntry struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Priority  int32  `json:"priority"`
	// State is Suspended (parked on the node) or Pending (nominated to the node).
	State string `json:"state"`
	// GPUTime is the GPU time the pod has received.
	GPUTime metav1.Duration `json:"gpuTime"`
	// WaitingSince is when it was suspended, or created when pending.
	WaitingSince metav1.Time `json:"waitingSince"`
}

// turnOrder lists the pods waiting for GPUs on node in the order the scheduler's controllers
// serve them (timeslice.NextFirst): suspended pods that come back by themselves (suspended for
// a preemption or a time-slice turn) and GPU pods nominated to the node.
func turnOrder(ctx context.Context, kube kubernetes.Interface, kyb versioned.Interface, node string) ([]TurnEntry, error) {
	onNode, err := readSnapshot(ctx, kube, kyb, "", metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String()})
	if err != nil {
		return nil, err
	}
	// Pending pods are not selectable by nominated node: list the unbound ones.
	unbound, err := readSnapshot(ctx, kube, kyb, "", metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("spec.nodeName", "").String()})
	if err != nil {
		return nil, err
	}
	var out []TurnEntry
	for _, p := range onNode.pods {
		if p.Spec.NodeName != node || gpupod.StateOf(p) != kv1.PodSuspended || p.DeletionTimestamp != nil {
			continue
		}
		last := onNode.lastSuspend(p)
		if last == nil || (last.Spec.Reason != kv1.ReasonPreemption && last.Spec.Reason != kv1.ReasonTimeSlice) {
			continue // a manual suspension waits for a manual resume, an idle one for a request
		}
		out = append(out, TurnEntry{Namespace: p.Namespace, Name: p.Name, Priority: corev1helpers.PodPriority(p), State: string(kv1.PodSuspended),
			GPUTime: metav1.Duration{Duration: onNode.usage(p).Received}, WaitingSince: metav1.NewTime(startedAt(last))})
	}
	for _, p := range unbound.pods {
		if p.Spec.NodeName != "" || p.Status.NominatedNodeName != node || p.DeletionTimestamp != nil {
			continue
		}
		if d, err := gpupod.PodDemand(p); err != nil || d.Count == 0 {
			continue
		}
		out = append(out, TurnEntry{Namespace: p.Namespace, Name: p.Name, Priority: corev1helpers.PodPriority(p), State: "Pending",
			GPUTime: metav1.Duration{Duration: unbound.usage(p).Received}, WaitingSince: p.CreationTimestamp})
	}
	slices.SortFunc(out, func(a, b TurnEntry) int {
		return timeslice.NextFirst(a.Priority, b.Priority, a.GPUTime.Duration, b.GPUTime.Duration, a.WaitingSince.Time, b.WaitingSince.Time)
	})
	return out, nil
}
