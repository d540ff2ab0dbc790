package gpupod

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"

	"github.com/kybernate/kybernate/apis/config"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// Victim is a pod that a preemptor may suspend, with what suspending it costs.
type Victim struct {
	Pod *v1.Pod
	// Bytes of VRAM the suspension moves into host memory.
	Bytes int64
	// ResumedAt is when the pod last became GPU-resident.
	ResumedAt time.Time
	// Turn marks a pod of the preemptor's own priority: it is not suspended now, it gives its
	// GPUs up when its time-slice turn ends (the time-slice controller sees to that).
	Turn bool
}

// Ineligibility says why a pod on the preemptor's node cannot be a victim, or "" when it can;
// turn says it can only as a time-slice turn (equal priority). CheckpointPreemption and the
// extender apply the same rules.
func Ineligibility(pod, preemptor *v1.Pod, defaultMinRuntime time.Duration, now time.Time) (why string, turn bool) {
	switch pp, vp := corev1helpers.PodPriority(preemptor), corev1helpers.PodPriority(pod); {
	case vp > pp:
		return "priority higher than the preemptor's", false
	case vp == pp:
		// The preemptor waits for a turn; one that would never give its turn back gets none.
		if !TakesTurns(preemptor) {
			return "equal priority, and the preemptor does not take turns (" + kv1.AnnotationPreemption + "=Never)", false
		}
		turn = true
	}
	if len(AssignedGPUs(pod)) == 0 {
		return "holds no GPU", false // never deleted to make room: Kybernate only suspends
	}
	if d, err := PodDemand(pod); err != nil || d.Count == 0 {
		return "no valid GPU request", false
	}
	switch kv1.PodGPUState(pod.Annotations[kv1.AnnotationState]) {
	case "", kv1.PodRunning:
	default:
		return "GPU state " + pod.Annotations[kv1.AnnotationState], false
	}
	if NeverSuspended(pod) {
		return kv1.AnnotationPreemption + "=Never", false
	}
	if pod.DeletionTimestamp != nil {
		return "terminating", false
	}
	minRuntime := defaultMinRuntime
	if d, set, err := MinRuntime(pod); err != nil {
		// A malformed annotation protects the pod rather than exposing it.
		return "malformed " + kv1.AnnotationMinRuntime, false
	} else if set {
		minRuntime = d
	}
	if turn {
		// When the turn ends is the time-slice controller's business (quantum, min-runtime).
		return "", true
	}
	if now.Sub(ResidentSince(pod)) < minRuntime {
		return kv1.AnnotationMinRuntime + " not reached", false
	}
	return "", false
}

// ResidentSince is when the pod last became GPU-resident: the transition of its
// kybernate.io/GPUResident condition to True, else its start.
func ResidentSince(pod *v1.Pod) time.Time {
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

// ResidentBytes is the VRAM a pod holds on its GPUs, given the size of each GPU by UUID.
func ResidentBytes(pod *v1.Pod, gpuTotal map[string]int64) int64 {
	d, err := PodDemand(pod)
	if err != nil {
		return 0
	}
	var sum int64
	for _, uuid := range AssignedGPUs(pod) {
		sum += d.On(gpuTotal[uuid])
	}
	return sum
}

// GPUSizes maps a GPUNode's GPU UUIDs to their memory.
func GPUSizes(gn *kv1.GPUNode) map[string]int64 {
	m := make(map[string]int64, len(gn.Status.GPUs))
	for _, g := range gn.Status.GPUs {
		m[g.UUID] = g.MemoryTotalBytes
	}
	return m
}

// ByCost orders victims from the cheapest to suspend to the dearest: lower-priority pods before
// time-slice turns of equal-priority pods, then fewer bytes to move, then lower priority, then
// longer on the GPU since the last resume (the pod that has had its turn goes first).
func ByCost(a, b Victim) int {
	return cmp.Or(
		cmp.Compare(b2i(a.Turn), b2i(b.Turn)),
		cmp.Compare(a.Bytes, b.Bytes),
		cmp.Compare(corev1helpers.PodPriority(a.Pod), corev1helpers.PodPriority(b.Pod)),
		a.ResumedAt.Compare(b.ResumedAt),
		strings.Compare(a.Pod.Namespace+"/"+a.Pod.Name, b.Pod.Namespace+"/"+b.Pod.Name),
	)
}

// SortByCost sorts victims by ByCost.
func SortByCost(vs []Victim) { slices.SortFunc(vs, ByCost) }

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// AsSuspended returns a copy of the pod as it will be once suspended: still bound, holding its
// slot, but with no VRAM on its GPUs. Candidates are Running (Ineligibility), so the projection
// cannot fail; were it to, the pod stays as it is, resident, and no dry run counts on its memory.
func AsSuspended(pod *v1.Pod) *v1.Pod {
	c, err := Projected(pod, kv1.PodSuspended)
	if err != nil {
		return pod
	}
	return c
}

// SuspendCheckpointName is deterministic, so a retried preemption does not request a second
// suspension of the same victim for the same preemptor.
func SuspendCheckpointName(victim, preemptor *v1.Pod) string {
	uid := string(preemptor.UID)
	if len(uid) > 8 {
		uid = uid[:8]
	}
	return CheckpointName(victim, "-suspend-"+uid)
}

// SuspendCheckpoint is the GPUCheckpoint that asks the node agent to suspend victim for
// preemptor (reason Preemption), owned by the victim and labelled with the preemptor's UID.
func SuspendCheckpoint(victim, preemptor *v1.Pod) *kv1.GPUCheckpoint {
	return &kv1.GPUCheckpoint{
		ObjectMeta: metav1.ObjectMeta{
			Name:      SuspendCheckpointName(victim, preemptor),
			Namespace: victim.Namespace,
			Labels:    map[string]string{kv1.LabelPreemptor: string(preemptor.UID)},
			// Gone with the pod.
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: victim.Name, UID: victim.UID}},
		},
		Spec: kv1.GPUCheckpointSpec{
			PodName:   victim.Name,
			PodUID:    string(victim.UID),
			Action:    kv1.ActionSuspend,
			Reason:    kv1.ReasonPreemption,
			Preemptor: &kv1.PodReference{Namespace: preemptor.Namespace, Name: preemptor.Name, UID: string(preemptor.UID)},
		},
	}
}

// VictimRules are the rules of a victim selection outside a scheduling framework.
type VictimRules struct {
	Strategy          config.ScoringStrategyType
	DefaultMinRuntime time.Duration
	Now               time.Time
	// Excluded reports pods that must not be victims (a suspension for this preemptor failed).
	Excluded func(*v1.Pod) bool
}

// SelectVictims is the dry run of a preemption by suspension on one node, by the GPU
// accounting alone: every eligible lower-priority pod is replaced by its suspended self; if the
// preemptor's demand fits then, the dearest candidates are reprieved while it still fits, and
// whoever must stay suspended is a victim (cheapest first). Equal-priority pods (time-slice
// turns) are not suspended here. The victims' VRAM must fit in the node's parkable host memory.
// An empty result comes with the reason.
func SelectVictims(gn *kv1.GPUNode, pods []*v1.Pod, preemptor *v1.Pod, d Demand, rules VictimRules) ([]Victim, string) {
	sizes := GPUSizes(gn)
	current := slices.Clone(pods)
	var candidates []Victim
	at := map[*v1.Pod]int{}
	for i, p := range pods {
		if p.UID == preemptor.UID {
			continue
		}
		why, turn := Ineligibility(p, preemptor, rules.DefaultMinRuntime, rules.Now)
		if why != "" || turn || (rules.Excluded != nil && rules.Excluded(p)) {
			continue
		}
		candidates = append(candidates, Victim{Pod: p, Bytes: ResidentBytes(p, sizes), ResumedAt: ResidentSince(p)})
		at[p] = i
		current[i] = AsSuspended(p)
	}
	if len(candidates) == 0 {
		return nil, "no pod on the node may be suspended"
	}
	fits := func() bool { return NewAccounting(gn, current).Choose(d, rules.Strategy) != nil }
	if !fits() {
		return nil, "the pod does not fit even with every eligible pod suspended"
	}
	SortByCost(candidates)
	var victims []Victim
	for i := len(candidates) - 1; i >= 0; i-- {
		c := candidates[i]
		current[at[c.Pod]] = c.Pod
		if fits() {
			continue
		}
		current[at[c.Pod]] = AsSuspended(c.Pod)
		victims = append(victims, c)
	}
	SortByCost(victims)
	var parked int64
	for _, v := range victims {
		parked += v.Bytes
	}
	if parkable := gn.Status.HostMemory.ParkableBytes; parked > parkable {
		return nil, fmt.Sprintf("suspending would park %s of GPU memory but the node can park only %s", GiB(parked), GiB(parkable))
	}
	return victims, ""
}

// GiB formats bytes for messages.
func GiB(b int64) string { return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30)) }
