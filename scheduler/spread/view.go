package spread

import (
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/scheduler/internal/index"
)

// view is a node as the spreading rule sees it.
type view struct {
	gpus  []gpupod.SpreadGPU
	uuids []string
	// pods are the pods resident on one GPU each; owners the pod of each (nil for a share of
	// a pod on several GPUs, which never moves).
	pods   []gpupod.SpreadPod
	owners []*v1.Pod
	// sharing counts the resident pods of each GPU.
	sharing []int
	// unsettled says why nothing spreads on the node now; "" when the node is settled.
	unsettled string
	// recheck is when a pod that may not move yet may (zero: none).
	recheck time.Time
}

// view reads the node: its GPUs from the GPUNode, its pods as the ledger corrects them, and
// the pods nominated to it (or waiting there for their victims).
func (c *Controller) view(gn *kv1.GPUNode, pods, waiters []*v1.Pod, now time.Time) view {
	v := view{}
	byUUID := map[string]int{}
	for _, s := range gn.Status.GPUs {
		var attributed int64
		for _, p := range s.Pods {
			attributed += p.Bytes
		}
		byUUID[s.UUID] = len(v.gpus)
		// Memory of processes that belong to no pod the agent knows (a host process) uses it.
		v.gpus = append(v.gpus, gpupod.SpreadGPU{Node: gn.Name, Model: s.Model, Total: s.MemoryTotalBytes, Unused: s.MemoryUsedBytes <= attributed})
		v.uuids = append(v.uuids, s.UUID)
	}
	v.sharing = make([]int, len(v.gpus))
	for _, p := range waiters {
		if d, err := gpupod.PodDemand(p); err == nil && d.Count > 0 && p.Spec.NodeName == "" && p.DeletionTimestamp == nil {
			v.unsettled = "pod " + klog.KObj(p).String() + " waits for GPU memory on the node"
			return v
		}
	}
	for _, pod := range pods {
		if why := c.add(&v, byUUID, pod, now); why != "" {
			v.unsettled = why
			return v
		}
	}
	return v
}

// add counts a pod of the node in the view; it returns why the node is not settled, if the pod
// makes it so.
func (c *Controller) add(v *view, byUUID map[string]int, pod *v1.Pod, now time.Time) string {
	if pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed {
		return ""
	}
	d, err := gpupod.PodDemand(pod)
	if err != nil || d.Count == 0 {
		return ""
	}
	if pod.DeletionTimestamp != nil {
		// Its GPUs free once it is gone: the node is looked at again then.
		return "pod " + klog.KObj(pod).String() + " is being deleted"
	}
	if _, _, held := c.ledger.Placed(pod.UID); held {
		// Placed a moment ago (bound, resumed, restored): the resume controller would not bring
		// a pod of the node back before that reservation ends, and no event says when it does.
		v.recheckAt(now.Add(heldRecheck))
		return "the placement of pod " + klog.KObj(pod).String() + " is not settled yet"
	}
	cks := index.Checkpoints(c.checkpoints, string(pod.UID))
	for _, ck := range cks {
		if !ended(ck) {
			return "a move of pod " + klog.KObj(pod).String() + " is in flight"
		}
	}
	for _, ck := range cks {
		if until := completed(ck).Add(c.delay); now.Before(until) {
			v.recheckAt(until)
			return "a move of pod " + klog.KObj(pod).String() + " ended less than " + c.delay.String() + " ago"
		}
	}
	uuids := gpupod.AssignedGPUs(pod)
	state := gpupod.StateOf(pod)
	switch {
	case state == kv1.PodSuspended && waits(pod, cks):
		return "pod " + klog.KObj(pod).String() + " waits for GPU memory on the node"
	case state != kv1.PodRunning && state != kv1.PodSuspended:
		return "pod " + klog.KObj(pod).String() + " is " + string(state)
	}
	// Every pod assigned to a GPU holds it, a suspended one by its slot.
	for _, u := range uuids {
		if i, ok := byUUID[u]; ok {
			v.gpus[i].Unused = false
		}
	}
	if state != kv1.PodRunning {
		return ""
	}
	if until := gpupod.ResidentSince(pod).Add(c.delay); now.Before(until) {
		v.recheckAt(until)
		return "pod " + klog.KObj(pod).String() + " is on its GPU for less than " + c.delay.String()
	}
	movable := len(uuids) == 1 && c.movable(v, pod, cks, now)
	for _, u := range uuids {
		i, ok := byUUID[u]
		if !ok {
			continue
		}
		owner := pod
		if !movable {
			owner = nil
		}
		v.pods = append(v.pods, gpupod.SpreadPod{GPU: i, Bytes: d.On(v.gpus[i].Total), Model: d.Model, Movable: movable})
		v.owners = append(v.owners, owner)
		v.sharing[i]++
	}
	return ""
}

// movable reports whether a running pod may move now: it may be suspended, its
// kybernate.io/min-runtime has passed (else v.recheck says when to look again), and no
// spreading suspension of it failed during its stay on its GPU.
func (c *Controller) movable(v *view, pod *v1.Pod, cks []*kv1.GPUCheckpoint, now time.Time) bool {
	if !gpupod.TakesTurns(pod) || pod.Status.Phase != v1.PodRunning {
		return false
	}
	name := checkpointName(pod)
	for _, ck := range cks {
		if ck.Name == name {
			return false
		}
	}
	minRuntime := c.defaultMinRuntime
	if d, set, err := gpupod.MinRuntime(pod); err == nil && set {
		minRuntime = d
	}
	if until := gpupod.ResidentSince(pod).Add(minRuntime); now.Before(until) {
		v.recheckAt(until)
		return false
	}
	return true
}

// recheckAt makes the node be looked at again at t at the latest.
func (v *view) recheckAt(t time.Time) {
	if v.recheck.IsZero() || t.Before(v.recheck) {
		v.recheck = t
	}
}

// waits reports whether a suspended pod waits for GPU memory on its node: the resume
// controller brings it back once some frees (suspended to make room, for a turn, to spread, or
// asleep with a wake requested).
func waits(pod *v1.Pod, cks []*kv1.GPUCheckpoint) bool {
	var last *kv1.GPUCheckpoint
	for _, ck := range cks {
		if ck.Spec.Action == kv1.ActionSuspend && ck.Status.Phase == kv1.PhaseSucceeded && (last == nil || started(ck).After(started(last))) {
			last = ck
		}
	}
	if last == nil {
		return false
	}
	switch last.Spec.Reason {
	case kv1.ReasonPreemption, kv1.ReasonTimeSlice, kv1.ReasonSpread:
		return true
	case kv1.ReasonIdle:
		return gpupod.WakePending(pod, last.CreationTimestamp.Time)
	}
	return false
}

func completed(ck *kv1.GPUCheckpoint) time.Time {
	if ck.Status.CompletionTime != nil {
		return ck.Status.CompletionTime.Time
	}
	return started(ck)
}

func started(ck *kv1.GPUCheckpoint) time.Time {
	if ck.Status.StartTime != nil {
		return ck.Status.StartTime.Time
	}
	return ck.CreationTimestamp.Time
}
