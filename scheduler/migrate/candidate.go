package migrate

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
	"k8s.io/klog/v2"

	"github.com/kybernate/kybernate/apis/config"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/scheduler/internal/index"
)

// candidate is a suspended pod that may move.
type candidate struct {
	pod        *v1.Pod
	demand     gpupod.Demand
	suspension *kv1.GPUCheckpoint
	waited     time.Duration
	bytes      int64
	attempt    int
	// draining: the pod's node is cordoned; it moves now if it can.
	draining bool
}

// scan starts the migrations that are worth it now.
func (c *Controller) scan(ctx context.Context) error {
	if c.args.DisableMigration {
		return nil
	}
	logger := klog.FromContext(ctx)
	// Only suspended pods can move: the scan runs on every GPU change of a pod, so it reads
	// them from their index rather than going through every pod of the cluster.
	suspended, err := index.Pods(c.pods, index.PodsByGPUState, string(kv1.PodSuspended))
	if err != nil {
		return err
	}
	var cands []candidate
	for _, pod := range suspended {
		if cand, ok := c.candidate(pod); ok {
			cands = append(cands, cand)
		}
	}
	if len(cands) == 0 {
		return nil
	}
	slices.SortFunc(cands, func(a, b candidate) int {
		if pa, pb := corev1helpers.PodPriority(a.pod), corev1helpers.PodPriority(b.pod); pa != pb {
			return int(pb) - int(pa)
		}
		return int(b.waited - a.waited)
	})
	accs := map[string]*gpupod.Accounting{}
	for _, cand := range cands {
		from := cand.pod.Spec.NodeName
		src, err := c.gpuNodes.Get(from)
		if err != nil {
			continue
		}
		accA, err := c.accounting(from, accs)
		if err != nil {
			return err
		}
		gpus := gpupod.AssignedGPUs(cand.pod)
		estimate := Estimate(cand.bytes, c.args.MigrationBytesPerSecond)
		if !cand.draining && c.staysHome(ctx, cand.restoring(src), accA, gpus, estimate) {
			continue
		}
		want := Requirements{Model: modelOf(src, gpus), DriverVersion: src.Status.DriverVersion,
			CUDADriverVersion: src.Status.CUDADriverVersion, Simulated: simulated(src)}
		target, uuids, err := c.target(cand.pod, cand.demand, want, accs)
		if err != nil {
			return err
		}
		if target == "" {
			logger.V(4).Info("No other node has room for the suspended pod", "pod", klog.KObj(cand.pod), "model", want.Model)
			if cand.draining {
				c.recorder.Eventf(cand.pod, nil, v1.EventTypeWarning, EventNotMovedFromCordonedNode, "Migrate",
					"Node %s is cordoned, but no other Ready node with GPU model %s and driver %s has room for the pod: it stays suspended there",
					from, want.Model, want.DriverVersion)
			}
			continue
		}
		if err := c.start(ctx, cand, target, estimate); err != nil {
			return err
		}
		accs[target].Take(cand.demand.WithModel(want.Model), uuids)
	}
	return nil
}

// restoring is the candidate with the demand of its resume on gn's node: the resume controller
// brings it back only where the agent's restore margin is left over, and so it is judged here.
func (cand candidate) restoring(gn *kv1.GPUNode) candidate {
	cand.demand = cand.demand.Restoring(gn)
	return cand
}

// staysHome reports whether a suspended pod on a node that is not cordoned waits where it is:
// its node has room (the resume controller brings it back), or it has not waited long enough
// for a move to pay.
func (c *Controller) staysHome(ctx context.Context, cand candidate, acc *gpupod.Accounting, gpus []string, estimate time.Duration) bool {
	if acc.FitsSlotHeld(cand.demand, gpus) {
		return true
	}
	acc.Release(gpus)
	fitsHome := acc.Choose(cand.demand, config.MostAllocated) != nil
	acc.Hold(gpus)
	if fitsHome {
		return true
	}
	if cand.waited < c.args.MigrationMinWait.Duration || estimate > cand.waited {
		klog.FromContext(ctx).V(5).Info("Suspended pod waits on its node", "pod", klog.KObj(cand.pod), "waited", cand.waited, "estimate", estimate)
		return true
	}
	return false
}

// Estimate is how long moving bytes takes at rate bytes per second, with the Overhead.
func Estimate(bytes, rate int64) time.Duration {
	if rate <= 0 {
		return Overhead
	}
	return Overhead + time.Duration(float64(bytes)/float64(rate)*float64(time.Second))
}

// candidate reports whether pod is a suspended pod that may move now.
func (c *Controller) candidate(pod *v1.Pod) (candidate, bool) {
	if kv1.PodGPUState(pod.Annotations[kv1.AnnotationState]) != kv1.PodSuspended || pod.DeletionTimestamp != nil ||
		pod.Spec.NodeName == "" || pod.Status.Phase != v1.PodRunning {
		return candidate{}, false
	}
	// A controlling owner (Job, ReplicaSet, StatefulSet, ...) would replace the deleted
	// original itself, or count the replacement as one pod too many.
	if metav1.GetControllerOf(pod) != nil || len(pod.Spec.Containers) != 1 {
		return candidate{}, false
	}
	d, err := gpupod.PodDemand(pod)
	if err != nil || d.Count == 0 || len(gpupod.AssignedGPUs(pod)) != d.Count {
		return candidate{}, false
	}
	cks := index.Checkpoints(c.checkpoints, string(pod.UID))
	var suspension *kv1.GPUCheckpoint
	for _, ck := range cks {
		if ck.Spec.Action == kv1.ActionSuspend && ck.Status.Phase == kv1.PhaseSucceeded &&
			(suspension == nil || endedAt(ck).After(endedAt(suspension))) {
			suspension = ck
		}
	}
	// A pod suspended by hand stays where it was put, unless its node is being drained.
	draining := c.cordoned(pod.Spec.NodeName)
	if suspension == nil || (suspension.Spec.Reason != kv1.ReasonPreemption && suspension.Spec.Reason != kv1.ReasonTimeSlice && !draining) {
		return candidate{}, false
	}
	attempt, last := 0, time.Time{}
	for _, ck := range cks {
		if !ended(ck) && (ck.Spec.Action != kv1.ActionSuspend || ck.Status.Phase == kv1.PhaseInProgress) {
			// A resume or a migration in flight, or a suspension the agent has not ended: it
			// marks the pod Suspended first, and until the end is seen the pod reads as
			// suspended long ago (by the suspension before) and still resident (its
			// kybernate.io/GPUResident condition is written after the state).
			return candidate{}, false
		}
		if ck.Spec.Action == kv1.ActionResume && ck.Status.Phase == kv1.PhaseSucceeded && ck.Labels[kv1.LabelSuspension] == string(suspension.UID) {
			return candidate{}, false // that suspension is over; the pod's current one is not seen yet
		}
		if ck.Spec.Action != kv1.ActionCheckpoint || ck.Spec.Reason != kv1.ReasonMigration || ck.CreationTimestamp.Time.Before(endedAt(suspension)) {
			continue
		}
		if ck.Annotations[kv1.AnnotationMigrationResult] == "" && ck.Status.Phase == kv1.PhaseSucceeded {
			return candidate{}, false // being finished by syncPod
		}
		attempt++
		if t := endedAt(ck); t.After(last) {
			last = t
		}
	}
	if attempt >= MaxAttempts || (attempt > 0 && c.now().Before(last.Add(firstBackoff<<(attempt-1)))) {
		return candidate{}, false
	}
	bytes := suspension.Status.BytesMoved
	if bytes == 0 {
		bytes = d.Bytes * int64(d.Count)
	}
	// The restore on the target needs the pod's footprint before the suspension free there.
	d = d.AtLeast(suspension.Status.GPUFootprint())
	return candidate{pod: pod, demand: d, suspension: suspension, waited: c.now().Sub(endedAt(suspension)), bytes: bytes, attempt: attempt, draining: draining}, true
}

// Requirements are what a target node must have to restore an image.
type Requirements struct {
	Model             string
	DriverVersion     string
	CUDADriverVersion int32
	Simulated         bool
}

// Compatible reports whether a node's GPUNode meets the requirements (the GPU model is checked
// per GPU by the accounting) and says why not.
func (r Requirements) Compatible(gn *kv1.GPUNode) (bool, string) {
	switch {
	case !meta.IsStatusConditionTrue(gn.Status.Conditions, kv1.GPUNodeReady):
		return false, "not Ready"
	case gn.Status.DriverVersion != r.DriverVersion || gn.Status.CUDADriverVersion != r.CUDADriverVersion:
		return false, fmt.Sprintf("driver %s (CUDA %d), the image needs %s (CUDA %d)", gn.Status.DriverVersion, gn.Status.CUDADriverVersion, r.DriverVersion, r.CUDADriverVersion)
	case simulated(gn) != r.Simulated:
		return false, "simulated and real nodes do not share images"
	}
	return true, ""
}

// target picks the node and GPUs a pod moves to: the first node by name that meets want,
// admits the pod and has room now; "" when none.
func (c *Controller) target(pod *v1.Pod, d gpupod.Demand, want Requirements, accs map[string]*gpupod.Accounting) (string, []string, error) {
	gns, err := c.gpuNodes.List(labels.Everything())
	if err != nil {
		return "", nil, err
	}
	slices.SortFunc(gns, func(a, b *kv1.GPUNode) int { return strings.Compare(a.Name, b.Name) })
	affinity := nodeaffinity.GetRequiredNodeAffinity(pod)
	for _, gn := range gns {
		if gn.Name == pod.Spec.NodeName {
			continue
		}
		if ok, _ := want.Compatible(gn); !ok {
			continue
		}
		node, err := c.nodes.Get(gn.Name)
		if err != nil || node.DeletionTimestamp != nil || node.Spec.Unschedulable {
			continue
		}
		if ok, _ := affinity.Match(node); !ok {
			continue
		}
		if _, untolerated := corev1helpers.FindMatchingUntoleratedTaint(node.Spec.Taints, pod.Spec.Tolerations, func(t *v1.Taint) bool {
			return t.Effect == v1.TaintEffectNoSchedule || t.Effect == v1.TaintEffectNoExecute
		}); untolerated {
			continue
		}
		acc, err := c.accounting(gn.Name, accs)
		if err != nil {
			return "", nil, err
		}
		// The replacement's memory is restored there: the agent keeps its margin free.
		if uuids := acc.Choose(d.WithModel(want.Model).Restoring(gn), config.MostAllocated); uuids != nil {
			return gn.Name, uuids, nil
		}
	}
	return "", nil, nil
}

// accounting returns the GPU accounting of a node: its pods, the GPUs nominated preemptors
// will take, and the pods on their way there (migrations in flight).
func (c *Controller) accounting(node string, accs map[string]*gpupod.Accounting) (*gpupod.Accounting, error) {
	if acc, ok := accs[node]; ok {
		return acc, nil
	}
	gn, err := c.gpuNodes.Get(node)
	if err != nil {
		return nil, err
	}
	onNode, err := index.Pods(c.pods, index.PodsByNode, node)
	if err != nil {
		return nil, err
	}
	acc := gpupod.NewAccounting(gn, c.ledger.Pods(node, onNode))
	nominated, err := index.Pods(c.pods, index.PodsByNominatedNode, node)
	if err != nil {
		return nil, err
	}
	for _, p := range nominated {
		if _, _, held := c.ledger.Placed(p.UID); p.Spec.NodeName != "" || held {
			continue // bound, or being bound (the ledger counts it)
		}
		if d, err := gpupod.PodDemand(p); err == nil && d.Count > 0 {
			if uuids := acc.Choose(d, config.MostAllocated); uuids != nil {
				acc.Take(d, uuids)
			}
		}
	}
	for _, obj := range c.pods.List() {
		p := obj.(*v1.Pod)
		if p.Annotations[kv1.AnnotationMigrateTo] != node || p.DeletionTimestamp != nil {
			continue
		}
		if s := kv1.PodGPUState(p.Annotations[kv1.AnnotationState]); s != kv1.PodCheckpointing && s != kv1.PodCheckpointed {
			continue
		}
		if d, err := gpupod.PodDemand(p); err == nil && d.Count > 0 {
			if uuids := acc.Choose(d, config.MostAllocated); uuids != nil {
				acc.Take(d, uuids)
			}
		}
	}
	accs[node] = acc
	return acc, nil
}

// accountingWithout is the accounting of node without the pod's own migration mark.
func (c *Controller) accountingWithout(node string, pod *v1.Pod, accs map[string]*gpupod.Accounting) (*gpupod.Accounting, error) {
	// The pod itself is counted on its target by accounting (migrations in flight); give its
	// GPUs back by computing without it.
	gn, err := c.gpuNodes.Get(node)
	if err != nil {
		return nil, err
	}
	onNode, err := index.Pods(c.pods, index.PodsByNode, node)
	if err != nil {
		return nil, err
	}
	acc := gpupod.NewAccounting(gn, c.ledger.Pods(node, onNode))
	for _, obj := range c.pods.List() {
		p := obj.(*v1.Pod)
		if p.UID == pod.UID || p.Annotations[kv1.AnnotationMigrateTo] != node || p.DeletionTimestamp != nil {
			continue
		}
		if s := kv1.PodGPUState(p.Annotations[kv1.AnnotationState]); s != kv1.PodCheckpointing && s != kv1.PodCheckpointed {
			continue
		}
		if d, err := gpupod.PodDemand(p); err == nil && d.Count > 0 {
			if uuids := acc.Choose(d, config.MostAllocated); uuids != nil {
				acc.Take(d, uuids)
			}
		}
	}
	accs[node] = acc
	return acc, nil
}

// modelOf is the model of the pod's GPUs on its node.
func modelOf(gn *kv1.GPUNode, gpus []string) string {
	for _, g := range gn.Status.GPUs {
		if len(gpus) > 0 && g.UUID == gpus[0] {
			return g.Model
		}
	}
	return ""
}

func simulated(gn *kv1.GPUNode) bool {
	return meta.IsStatusConditionTrue(gn.Status.Conditions, kv1.GPUNodeSimulated)
}
