package timeslice

import (
	"cmp"
	"slices"
	"strconv"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kybernate/kybernate/apis/config"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
)

// Usage is what a pod has had of its GPUs, read from the pod and the GPUCheckpoints that moved
// it. Nothing of it is stored: a restarted scheduler reads the same figures.
type Usage struct {
	// Received is the GPU time the pod has had up to now: the time its memory was on its
	// GPUs since it started.
	Received time.Duration
	// Completed is Received without the current turn.
	Completed time.Duration
	// TurnStart is when the current turn began; zero while the pod is not on its GPUs.
	TurnStart time.Time
	// TurnRenewed is when the last time-slice suspension of the current turn failed, if one
	// did: the pod stayed on its GPUs and its turn counts again from then (TurnFrom), so the
	// next attempt comes a quantum later, under a new name.
	TurnRenewed time.Time
	// MoveCost is the last measured suspend plus the last measured resume; zero until the pod
	// has been moved both ways once.
	MoveCost time.Duration
}

// change is a move of the pod onto its GPUs or off them: began is when the action started, at
// when it took effect.
type change struct {
	began, at time.Time
	resident  bool
	// order is the GPUCheckpoint's resourceVersion: its last write, the end of the action.
	order uint64
}

// Resident reports whether the pod is on its GPUs now.
func (u Usage) Resident() bool { return !u.TurnStart.IsZero() }

// TurnFrom is when the current turn counts from: its start, or the failure of the suspension
// that was to end it.
func (u Usage) TurnFrom() time.Time { return maxTime(u.TurnStart, u.TurnRenewed) }

// UsageOf reads a pod's usage at now from its GPUCheckpoints (any order).
//
// A pod is on its GPUs from its start until a Suspend or Checkpoint begins (the process stops at
// its first step, Lock), and again from the end of a Resume or Restore. Failed actions move
// nothing. The agent runs one action of a pod at a time, so the actions are taken in the order
// they began; a time stamp out of that order (an end written a moment after the next action's
// start) shortens an interval to nothing rather than reordering the moves. The API's time
// stamps have whole seconds: actions that began in the same second are taken in the order they
// were last written (resourceVersion, an etcd revision), the order the agent ended them.
// Whether the pod is resident now is the pod's own kybernate.io/state.
func UsageOf(pod *v1.Pod, cks []*kv1.GPUCheckpoint, now time.Time) Usage {
	var u Usage
	if pod.Status.StartTime == nil {
		return u
	}
	var changes []change
	var lastSuspend, lastResume *kv1.GPUCheckpoint
	for _, ck := range cks {
		if ck.Status.Phase != kv1.PhaseSucceeded || ck.Spec.PodUID != "" && ck.Spec.PodUID != string(pod.UID) {
			continue
		}
		switch ck.Spec.Action {
		case kv1.ActionSuspend, kv1.ActionCheckpoint:
			changes = append(changes, change{began: started(ck), at: started(ck), resident: false, order: revision(ck)})
			if ck.Spec.Action == kv1.ActionSuspend && (lastSuspend == nil || started(ck).After(started(lastSuspend))) {
				lastSuspend = ck
			}
		case kv1.ActionResume, kv1.ActionRestore:
			changes = append(changes, change{began: started(ck), at: completed(ck), resident: true, order: revision(ck)})
			if ck.Spec.Action == kv1.ActionResume && (lastResume == nil || completed(ck).After(completed(lastResume))) {
				lastResume = ck
			}
		}
	}
	slices.SortStableFunc(changes, func(a, b change) int {
		return cmp.Or(a.began.Compare(b.began), cmp.Compare(a.order, b.order))
	})

	since, resident := pod.Status.StartTime.Time, true
	for _, c := range changes {
		if c.resident == resident {
			continue
		}
		at := maxTime(c.at, since)
		if resident {
			u.Completed += at.Sub(since)
		}
		since, resident = at, c.resident
	}
	u.Received = u.Completed
	if gpupod.Resident(pod) && pod.Status.Phase != v1.PodSucceeded && pod.Status.Phase != v1.PodFailed {
		if !resident {
			// The pod is back on its GPUs but the Resume that brought it is not seen yet:
			// the turn began when the agent marked it resident, else now.
			at := residentAt(pod)
			if !at.After(since) || !at.Before(now) {
				at = now
			}
			since = at
		}
		u.TurnStart = since
		if now.After(since) {
			u.Received += now.Sub(since)
		}
	}
	if u.Resident() {
		for _, ck := range cks {
			if ck.Spec.Action == kv1.ActionSuspend && ck.Spec.Reason == kv1.ReasonTimeSlice && ck.Status.Phase == kv1.PhaseFailed &&
				(ck.Spec.PodUID == "" || ck.Spec.PodUID == string(pod.UID)) && completed(ck).After(u.TurnStart) {
				u.TurnRenewed = maxTime(u.TurnRenewed, completed(ck))
			}
		}
	}
	if lastSuspend != nil && lastResume != nil {
		u.MoveCost = duration(lastSuspend) + duration(lastResume)
	}
	return u
}

// residentAt is when the pod's kybernate.io/GPUResident condition last turned True.
func residentAt(pod *v1.Pod) time.Time {
	for _, c := range pod.Status.Conditions {
		if string(c.Type) == kv1.ConditionGPUResident && c.Status == v1.ConditionTrue {
			return c.LastTransitionTime.Time
		}
	}
	return time.Time{}
}

// Quantum is how long the pod's turn lasts: the configured quantum, but never less than the
// floor factor times the pod's measured suspend+resume time (so that at most about 1/factor of
// the GPU's time goes to moving memory), nor less than the pod's kybernate.io/min-runtime.
func Quantum(args config.ControllerConfiguration, pod *v1.Pod, u Usage) time.Duration {
	q := max(args.TimeSliceQuantum.Duration, time.Duration(args.TimeSliceMinQuantumFactor)*u.MoveCost)
	minRuntime := args.DefaultMinRuntime.Duration
	if d, set, err := gpupod.MinRuntime(pod); err == nil && set && d > 0 {
		minRuntime = d
	}
	return max(q, minRuntime)
}

// NextFirst orders waiting pods: higher priority first, then the least GPU time received
// (FIFO by GPU time, so shares converge), then the longest waiting.
func NextFirst(aPriority, bPriority int32, aReceived, bReceived time.Duration, aSince, bSince time.Time) int {
	return cmp.Or(
		cmp.Compare(bPriority, aPriority),
		cmp.Compare(aReceived, bReceived),
		aSince.Compare(bSince),
	)
}

// revision is the GPUCheckpoint's resourceVersion as a number; 0 when it has none.
func revision(ck *kv1.GPUCheckpoint) uint64 {
	n, _ := strconv.ParseUint(ck.ResourceVersion, 10, 64)
	return n
}

func started(ck *kv1.GPUCheckpoint) time.Time {
	if ck.Status.StartTime != nil {
		return ck.Status.StartTime.Time
	}
	return ck.CreationTimestamp.Time
}

func completed(ck *kv1.GPUCheckpoint) time.Time {
	if ck.Status.CompletionTime != nil {
		return ck.Status.CompletionTime.Time
	}
	return started(ck)
}

func duration(ck *kv1.GPUCheckpoint) time.Duration {
	return max(completed(ck).Sub(started(ck)), 0)
}
