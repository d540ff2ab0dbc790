package gpupod

import (
	"fmt"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// transitions is the pod GPU state machine: for each state (kybernate.io/state), the states a
// writer may move the pod to, with who does it. A pod without the annotation is Running. A
// state moving to itself is listed where a writer repeats a step: the agent carries out what
// the scheduler marked (Resuming, Checkpointing) or retries a suspension (Suspending).
var transitions = map[kv1.PodGPUState][]kv1.PodGPUState{
	// The agent suspends (for a preemption or a time-slice turn).
	kv1.PodRunning: {kv1.PodSuspending},
	// The agent retries, finishes, or rolls back to Running (or to Suspended when the engine
	// holds the pod suspended after a failure).
	kv1.PodSuspending: {kv1.PodSuspending, kv1.PodSuspended, kv1.PodRunning},
	// The resume controller and the agent resume; the migration controller and the agent
	// checkpoint for a move.
	kv1.PodSuspended: {kv1.PodResuming, kv1.PodCheckpointing},
	// The agent resumes what the controller marked, finishes, or rolls back to Suspended (the
	// controller too, when its request could not be created); Running when the engine says
	// the pod was not suspended.
	kv1.PodResuming: {kv1.PodResuming, kv1.PodRunning, kv1.PodSuspended},
	// The agent checkpoints what the controller marked, finishes, or rolls back; the migration
	// controller gives up a move.
	kv1.PodCheckpointing: {kv1.PodCheckpointing, kv1.PodCheckpointed, kv1.PodSuspended},
	// The migration controller gives up a move (Suspended) or creates the replacement, which
	// continues the checkpointed pod in state Restoring.
	kv1.PodCheckpointed: {kv1.PodSuspended, kv1.PodRestoring},
	// The agent restores the replacement's GPU memory.
	kv1.PodRestoring: {kv1.PodRunning},
}

// States lists every pod GPU state, in the order of the state machine's table in
// docs/design.md.
var States = []kv1.PodGPUState{
	kv1.PodRunning, kv1.PodSuspending, kv1.PodSuspended, kv1.PodResuming,
	kv1.PodCheckpointing, kv1.PodCheckpointed, kv1.PodRestoring,
}

// Allowed reports whether the state machine lets a pod move from one state to another.
func Allowed(from, to kv1.PodGPUState) bool {
	return slices.Contains(transitions[normal(from)], to)
}

// Next lists the states a pod may move to from the given one.
func Next(from kv1.PodGPUState) []kv1.PodGPUState {
	return slices.Clone(transitions[normal(from)])
}

func normal(s kv1.PodGPUState) kv1.PodGPUState {
	if s == "" {
		return kv1.PodRunning
	}
	return s
}

// StateOf returns the pod's GPU state: its kybernate.io/state, Running without one.
func StateOf(pod *v1.Pod) kv1.PodGPUState {
	return normal(kv1.PodGPUState(pod.Annotations[kv1.AnnotationState]))
}

// TransitionError is a state change the state machine does not allow.
type TransitionError struct {
	From, To kv1.PodGPUState
}

func (e *TransitionError) Error() string {
	next := make([]string, 0, len(transitions[e.From]))
	for _, s := range transitions[e.From] {
		next = append(next, string(s))
	}
	if _, known := transitions[e.From]; !known {
		return fmt.Sprintf("annotation %s=%q is not a pod GPU state: cannot move it to %s", kv1.AnnotationState, e.From, e.To)
	}
	return fmt.Sprintf("annotation %s: a pod that is %s cannot become %s (it may become %s)",
		kv1.AnnotationState, e.From, e.To, strings.Join(next, " or "))
}

// SetState is the one function that writes kybernate.io/state: it records state to in
// annotations (a pod's own, or those of a patch to the pod) for a pod that is in state from,
// and refuses, changing nothing, a transition the state machine does not allow.
func SetState(annotations map[string]string, from, to kv1.PodGPUState) error {
	from = normal(from)
	if !Allowed(from, to) {
		return &TransitionError{From: from, To: to}
	}
	annotations[kv1.AnnotationState] = string(to)
	return nil
}

// Projected returns a copy of the pod as it will be once in state to, for dry runs (a victim
// as it will be once suspended, a waiting pod as it will be once resumed): the state moves
// along the shortest path of allowed transitions, each through SetState. It fails when the
// pod's state is unknown or to cannot be reached.
func Projected(pod *v1.Pod, to kv1.PodGPUState) (*v1.Pod, error) {
	from := StateOf(pod)
	path, ok := pathTo(from, to)
	if !ok {
		return nil, &TransitionError{From: from, To: to}
	}
	c := pod.DeepCopy()
	if c.Annotations == nil {
		c.Annotations = map[string]string{}
	}
	for _, s := range path {
		if err := SetState(c.Annotations, StateOf(c), s); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// pathTo finds the shortest sequence of allowed transitions from one state to another
// (breadth first); empty when they are the same.
func pathTo(from, to kv1.PodGPUState) ([]kv1.PodGPUState, bool) {
	if from == to {
		return nil, true
	}
	prev := map[kv1.PodGPUState]kv1.PodGPUState{from: ""}
	queue := []kv1.PodGPUState{from}
	for len(queue) > 0 {
		s := queue[0]
		queue = queue[1:]
		for _, n := range transitions[s] {
			if _, seen := prev[n]; seen {
				continue
			}
			prev[n] = s
			if n == to {
				var path []kv1.PodGPUState
				for at := to; at != from; at = prev[at] {
					path = append([]kv1.PodGPUState{at}, path...)
				}
				return path, true
			}
			queue = append(queue, n)
		}
	}
	return nil, false
}
