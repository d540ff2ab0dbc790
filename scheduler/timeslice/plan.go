package timeslice

import (
	"cmp"
	"slices"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"

	"github.com/kybernate/kybernate/apis/config"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/scheduler/internal/index"
)

// member is a pod that takes turns on the node, with what it has had.
type member struct {
	pod      *v1.Pod
	demand   gpupod.Demand
	priority int32
	usage    Usage
	// quantum is the length of its turn (running pods).
	quantum time.Duration
	// since is when it began to wait (waiting pods).
	since time.Time
	// pending is a waiting pod that is not bound yet.
	pending bool
	// yielded: a suspended pod whose last suspension ended its time-slice turn.
	yielded bool
}

// turn is one rotation decided by a sync: the running pods that give their GPUs up and the
// waiting pod that gets them.
type turn struct {
	yielders []*member
	next     *member
}

// plan is what a sync decides for a node.
type plan struct {
	turns []turn
	// labels and gpuTimes are what the members' kybernate.io/time-slice label and
	// kybernate.io/gpu-time annotation should say; "" removes the label.
	labels   map[types.UID]string
	gpuTimes map[types.UID]string
	// moving are pods in the middle of a move (a suspension, resume or migration in flight):
	// they are no members now, but keep their label and GPU time until the move ends, so that
	// a rotating pod's label does not flap.
	moving map[types.UID]bool
	// recheck is when the node must be looked at again (zero: on events only).
	recheck time.Time
}

// plan decides the rotations due on a node at now. It changes nothing.
func (c *Controller) plan(gn *kv1.GPUNode, onNode, nominated []*v1.Pod, now time.Time) plan {
	p := plan{labels: map[types.UID]string{}, gpuTimes: map[types.UID]string{}, moving: map[types.UID]bool{}}
	running, waiting := c.members(&p, onNode, nominated, now)
	p.label(running, waiting)
	served, given := c.decideTurns(&p, gn, onNode, running, waiting, now)
	// A running pod whose GPU time has not yet passed a waiting pod's will have by then.
	for _, w := range waiting {
		for _, r := range running {
			if !served[w.pod.UID] && !given[r.pod.UID] && r.priority == w.priority && r.usage.Received <= w.usage.Received {
				p.recheck = earliest(p.recheck, maxTime(r.usage.TurnFrom().Add(r.quantum),
					now.Add(w.usage.Received-r.usage.Received+time.Millisecond)))
			}
		}
	}
	return p
}

// members are the node's running and waiting pods (nominated pending pods included), the
// waiting ones in the order they get turns; pods in mid-move go to p.moving.
func (c *Controller) members(p *plan, onNode, nominated []*v1.Pod, now time.Time) (running, waiting []*member) {
	for _, pod := range onNode {
		if m := c.runningMember(pod, now); m != nil {
			running = append(running, m)
		} else if m := c.suspendedMember(pod, now); m != nil {
			waiting = append(waiting, m)
		} else if c.inMove(pod) {
			p.moving[pod.UID] = true
		}
	}
	for _, pod := range nominated {
		if pod.Spec.NodeName != "" || pod.DeletionTimestamp != nil {
			continue
		}
		d, err := gpupod.PodDemand(pod)
		if err != nil || d.Count == 0 {
			continue
		}
		waiting = append(waiting, &member{pod: pod, demand: d, priority: corev1helpers.PodPriority(pod),
			usage: UsageOf(pod, index.Checkpoints(c.checkpoints, string(pod.UID)), now), since: pod.CreationTimestamp.Time, pending: true})
	}
	slices.SortFunc(waiting, func(a, b *member) int {
		return NextFirst(a.priority, b.priority, a.usage.Received, b.usage.Received, a.since, b.since)
	})
	return running, waiting
}

// label gives the pods that take part in time slicing, running and waiting pods of a priority
// that has both, their time-slice label and GPU time. A priority one of whose waiting pods
// yielded a turn takes part while none of its pods runs too: between one pod's suspension and
// the next one's resume the rotation goes on, and its labels do not flap.
func (p *plan) label(running, waiting []*member) {
	shared := map[int32]bool{}
	for _, w := range waiting {
		if w.yielded {
			shared[w.priority] = true
		}
		for _, r := range running {
			if r.priority == w.priority {
				shared[w.priority] = true
			}
		}
	}
	for _, m := range slices.Concat(running, waiting) {
		if !shared[m.priority] {
			continue
		}
		p.labels[m.pod.UID] = kv1.TimeSliceWaiting
		if m.usage.Resident() {
			p.labels[m.pod.UID] = kv1.TimeSliceRunning
		}
		p.gpuTimes[m.pod.UID] = gpupod.FormatGPUTime(m.usage.Completed)
	}
}

// decideTurns decides the turns: for each waiting pod in order, the fewest running pods of its
// priority that have had more GPU time and whose suspension lets it fit. served are the waiting
// pods that get a turn now; given the running pods whose GPUs are promised to a waiting pod,
// now (a turn) or when their turns end (held, so that a large waiting pod is not passed over
// again and again by smaller ones that fit into whatever frees first).
func (c *Controller) decideTurns(p *plan, gn *kv1.GPUNode, onNode []*v1.Pod, running, waiting []*member, now time.Time) (served, given map[types.UID]bool) {
	// The node as it will be after the rotations decided so far.
	state := slices.Clone(onNode)
	replace := func(pod, with *v1.Pod) {
		for i := range state {
			if state[i].UID == pod.UID {
				state[i] = with
				return
			}
		}
		state = append(state, with)
	}
	given, served = map[types.UID]bool{}, map[types.UID]bool{}
	turnEnd := func(r *member) time.Time { return r.usage.TurnFrom().Add(r.quantum) }
	for _, w := range waiting {
		var cands []*member
		for _, r := range running {
			if !given[r.pod.UID] && r.priority == w.priority && r.usage.Received > w.usage.Received {
				cands = append(cands, r)
			}
		}
		// The turns that end first, among equals those who have had the most.
		slices.SortFunc(cands, func(a, b *member) int {
			return cmp.Or(turnEnd(a).Compare(turnEnd(b)), cmp.Compare(b.usage.Received, a.usage.Received))
		})
		yielders := c.fewestYielders(gn, state, w, cands)
		if yielders == nil {
			continue
		}
		due := now
		for _, r := range yielders {
			given[r.pod.UID] = true
			due = maxTime(due, turnEnd(r))
		}
		if now.Before(due) {
			p.recheck = earliest(p.recheck, due)
			continue
		}
		trial := slices.Clone(state)
		for _, r := range yielders {
			trial = swapped(trial, r.pod, asSuspended(r.pod))
			replace(r.pod, asSuspended(r.pod))
		}
		replace(w.pod, asResident(w.pod, gn.Name, fits(gn, trial, w, c.strategy)))
		served[w.pod.UID] = true
		p.turns = append(p.turns, turn{yielders: yielders, next: w})
	}
	return served, given
}

// fewestYielders returns the shortest prefix of cands whose suspension lets the waiting pod fit
// on the node, without the members it does not need; nil when even all of them are not enough.
func (c *Controller) fewestYielders(gn *kv1.GPUNode, state []*v1.Pod, w *member, cands []*member) []*member {
	fitsWithout := func(set []*member) bool {
		trial := slices.Clone(state)
		for _, r := range set {
			trial = swapped(trial, r.pod, asSuspended(r.pod))
		}
		return fits(gn, trial, w, c.strategy) != nil
	}
	for k := 1; k <= len(cands); k++ {
		if !fitsWithout(cands[:k]) {
			continue
		}
		set := slices.Clone(cands[:k])
		for i := len(set) - 2; i >= 0; i-- {
			if fewer := slices.Delete(slices.Clone(set), i, i+1); fitsWithout(fewer) {
				set = fewer
			}
		}
		return set
	}
	return nil
}

// runningMember returns the pod as a member that may give its GPUs up, or nil.
func (c *Controller) runningMember(pod *v1.Pod, now time.Time) *member {
	switch kv1.PodGPUState(pod.Annotations[kv1.AnnotationState]) {
	case "", kv1.PodRunning:
	default:
		return nil
	}
	if pod.DeletionTimestamp != nil || pod.Status.Phase != v1.PodRunning || !gpupod.TakesTurns(pod) || len(gpupod.AssignedGPUs(pod)) == 0 {
		return nil
	}
	d, _ := gpupod.PodDemand(pod)
	cks := index.Checkpoints(c.checkpoints, string(pod.UID))
	for _, ck := range cks {
		if !ended(ck) {
			return nil // a move in flight; its end brings the node back here
		}
	}
	u := UsageOf(pod, cks, now)
	if !u.Resident() {
		return nil
	}
	return &member{pod: pod, demand: d, priority: corev1helpers.PodPriority(pod), usage: u, quantum: Quantum(c.args, pod, u)}
}

// inMove reports whether a pod is between two states: a move of the agent in flight, a state
// between running and suspended, or suspended to be spread onto another GPU of the node (the
// resume controller brings it back at once).
func (c *Controller) inMove(pod *v1.Pod) bool {
	state := kv1.PodGPUState(pod.Annotations[kv1.AnnotationState])
	switch state {
	case "", kv1.PodRunning, kv1.PodSuspended:
	default:
		return true
	}
	cks := index.Checkpoints(c.checkpoints, string(pod.UID))
	if slices.ContainsFunc(cks, func(ck *kv1.GPUCheckpoint) bool { return !ended(ck) }) {
		return true
	}
	if state != kv1.PodSuspended {
		return false
	}
	var last *kv1.GPUCheckpoint
	for _, ck := range cks {
		if ck.Spec.Action == kv1.ActionSuspend && ck.Status.Phase == kv1.PhaseSucceeded && (last == nil || started(ck).After(started(last))) {
			last = ck
		}
	}
	return last != nil && last.Spec.Reason == kv1.ReasonSpread
}

// suspendedMember returns a pod suspended to make room (reason TimeSlice or Preemption) as a
// waiting member, or nil.
func (c *Controller) suspendedMember(pod *v1.Pod, now time.Time) *member {
	if kv1.PodGPUState(pod.Annotations[kv1.AnnotationState]) != kv1.PodSuspended || pod.DeletionTimestamp != nil {
		return nil
	}
	d, err := gpupod.PodDemand(pod)
	if err != nil || d.Count == 0 || len(gpupod.AssignedGPUs(pod)) != d.Count {
		return nil
	}
	cks := index.Checkpoints(c.checkpoints, string(pod.UID))
	var last *kv1.GPUCheckpoint
	for _, ck := range cks {
		if ck.Spec.Action == kv1.ActionSuspend && ck.Status.Phase == kv1.PhaseSucceeded && (last == nil || started(ck).After(started(last))) {
			last = ck
		}
	}
	if last == nil || (last.Spec.Reason != kv1.ReasonTimeSlice && last.Spec.Reason != kv1.ReasonPreemption) {
		return nil
	}
	return &member{pod: pod, demand: d, priority: corev1helpers.PodPriority(pod), usage: UsageOf(pod, cks, now), since: started(last),
		yielded: last.Spec.Reason == kv1.ReasonTimeSlice}
}

// fits returns the GPUs the waiting pod would get on the node in the given state, or nil.
func fits(gn *kv1.GPUNode, state []*v1.Pod, w *member, strategy config.ScoringStrategyType) []string {
	acc := gpupod.NewAccounting(gn, state)
	if w.pending {
		return acc.Choose(w.demand, strategy)
	}
	// A suspended pod's memory is restored: the agent keeps its restore margin free beyond it.
	d := w.demand.Restoring(gn)
	from := gpupod.AssignedGPUs(w.pod)
	if acc.FitsSlotHeld(d, from) {
		return from
	}
	acc.Release(from)
	return acc.Choose(d, strategy)
}

// asSuspended is the pod as it will be once suspended. A pod in a state the state machine
// does not know stays as it is: resident, so no plan counts on its memory.
func asSuspended(pod *v1.Pod) *v1.Pod {
	c, err := gpupod.Projected(pod, kv1.PodSuspended)
	if err != nil {
		return pod
	}
	return c
}

// asResident is the pod as it will be once resumed onto gpus of node.
func asResident(pod *v1.Pod, node string, gpus []string) *v1.Pod {
	c, err := gpupod.Projected(pod, kv1.PodRunning)
	if err != nil {
		return pod
	}
	c.Spec.NodeName = node
	c.Annotations[kv1.AnnotationGPUs] = gpupod.FormatGPUs(gpus)
	return c
}

func swapped(state []*v1.Pod, pod, with *v1.Pod) []*v1.Pod {
	for i := range state {
		if state[i].UID == pod.UID {
			state[i] = with
		}
	}
	return state
}

func earliest(a, b time.Time) time.Time {
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
