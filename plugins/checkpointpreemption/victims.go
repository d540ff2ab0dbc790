package checkpointpreemption

import (
	"cmp"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
)

// victim is a pod that a preemptor may suspend, with what suspending it costs.
type victim struct {
	pod *v1.Pod
	// bytes of VRAM the suspension moves into host memory.
	bytes int64
	// resumedAt is when the pod last became GPU-resident.
	resumedAt time.Time
	// turn marks a pod of the preemptor's own priority: it is not suspended now, it gives its
	// GPUs up when its time-slice turn ends (the time-slice controller sees to that).
	turn bool
}

// ineligibility says why a pod on the preemptor's node cannot be a victim, or "" when it can;
// turn says it can only as a time-slice turn (equal priority).
func ineligibility(pod, preemptor *v1.Pod, defaultMinRuntime time.Duration, now time.Time) (why string, turn bool) {
	switch pp, vp := corev1helpers.PodPriority(preemptor), corev1helpers.PodPriority(pod); {
	case vp > pp:
		return "priority higher than the preemptor's", false
	case vp == pp:
		// The preemptor waits for a turn; one that would never give its turn back gets none.
		if !gpupod.TakesTurns(preemptor) {
			return "equal priority, and the preemptor does not take turns (" + kv1.AnnotationPreemption + "=Never)", false
		}
		turn = true
	}
	if len(gpupod.AssignedGPUs(pod)) == 0 {
		return "holds no GPU", false // never deleted to make room: Kybernate only suspends
	}
	if d, err := gpupod.PodDemand(pod); err != nil || d.Count == 0 {
		return "no valid GPU request", false
	}
	switch kv1.PodGPUState(pod.Annotations[kv1.AnnotationState]) {
	case "", kv1.PodRunning:
	default:
		return "GPU state " + pod.Annotations[kv1.AnnotationState], false
	}
	if gpupod.NeverSuspended(pod) {
		return kv1.AnnotationPreemption + "=Never", false
	}
	if pod.DeletionTimestamp != nil {
		return "terminating", false
	}
	minRuntime := defaultMinRuntime
	if d, set, err := gpupod.MinRuntime(pod); err != nil {
		// A malformed annotation protects the pod rather than exposing it.
		return "malformed " + kv1.AnnotationMinRuntime, false
	} else if set {
		minRuntime = d
	}
	if turn {
		// When the turn ends is the time-slice controller's business (quantum, min-runtime).
		return "", true
	}
	if now.Sub(residentSince(pod)) < minRuntime {
		return kv1.AnnotationMinRuntime + " not reached", false
	}
	return "", false
}

// residentSince is when the pod last became GPU-resident: the transition of its
// kybernate.io/GPUResident condition to True, else its start.
func residentSince(pod *v1.Pod) time.Time {
	for _, c := range pod.Status.Conditions {
		if string(c.Type) == kv1.ConditionGPUResident && c.Status == v1.ConditionTrue {
			return c.LastTransitionTime.Time
		}
	}
	if pod.Status.StartTime != nil {
		return pod.Status.StartTime.Time
	}
	return pod.CreationTimestamp.Time
}

// podBytes is the VRAM a pod holds on its GPUs, given the size of each GPU by UUID.
func podBytes(pod *v1.Pod, gpuTotal map[string]int64) int64 {
	d, err := gpupod.PodDemand(pod)
	if err != nil {
		return 0
	}
	var sum int64
	for _, uuid := range gpupod.AssignedGPUs(pod) {
		sum += d.On(gpuTotal[uuid])
	}
	return sum
}

// byCost orders victims from the cheapest to suspend to the dearest: lower-priority pods before
// time-slice turns of equal-priority pods, then fewer bytes to move, then lower priority, then
// longer on the GPU since the last resume (the pod that has had its turn goes first).
func byCost(a, b victim) int {
	return cmp.Or(
		cmp.Compare(b2i(a.turn), b2i(b.turn)),
		cmp.Compare(a.bytes, b.bytes),
		cmp.Compare(corev1helpers.PodPriority(a.pod), corev1helpers.PodPriority(b.pod)),
		a.resumedAt.Compare(b.resumedAt),
		strings.Compare(a.pod.Namespace+"/"+a.pod.Name, b.pod.Namespace+"/"+b.pod.Name),
	)
}

func sortByCost(vs []victim) { slices.SortFunc(vs, byCost) }

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// suspended returns a copy of the pod as it will be once suspended: still bound, holding its
// slot, but with no VRAM on its GPUs.
// Candidates are Running (ineligibility), so the projection cannot fail; were it to, the pod
// stays as it is, resident, and no dry run counts on its memory.
func suspended(pod *v1.Pod) *v1.Pod {
	c, err := gpupod.Projected(pod, kv1.PodSuspended)
	if err != nil {
		return pod
	}
	return c
}
