// Package checkpointpreemption is the PostFilter plugin that makes room for a higher-priority GPU
// pod by suspending lower-priority GPU pods instead of deleting them.
//
// It runs the framework's preemption.Evaluator with its own victim selection: on each node the
// candidates are lower-priority, GPU-resident pods that may be suspended (kybernate.io/preemption
// is not Never, kybernate.io/min-runtime has passed since their last resume, no operation in
// flight). A dry run replaces each candidate by its suspended self (still bound, holding its
// slot, no VRAM) and keeps the cheapest set that lets the preemptor fit: fewest bytes to move,
// then lowest priority, then longest on the GPU. The victims' VRAM must fit in the node's
// parkable host memory. For each victim the plugin creates a GPUCheckpoint (Suspend, reason
// Preemption) that the node agent carries out; no pod is ever deleted. The preemptor is
// nominated to the node and binds once the victims are Suspended.
package checkpointpreemption

import (
	"context"
	"fmt"
	"time"

	v1 "k8s.io/api/core/v1"
	policy "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/util/validation/field"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/klog/v2"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/features"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework/preemption"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"

	"github.com/kybernate/kybernate/apis/config"
	"github.com/kybernate/kybernate/apis/config/validation"
	listers "github.com/kybernate/kybernate/apis/kybernate/client/listers/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/apis/kybernate/connect"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
)

// Name is the plugin's name in a KubeSchedulerConfiguration.
const Name = "CheckpointPreemption"

// CheckpointPreemption suspends lower-priority GPU pods to make room for a GPU pod.
type CheckpointPreemption struct {
	fh          framework.Handle
	args        config.CheckpointPreemptionArgs
	evaluator   *preemption.Evaluator
	gpuNodes    listers.GPUNodeLister
	checkpoints listers.GPUCheckpointLister
	// createCheckpoint creates a GPUCheckpoint; a field so tests can see what is created.
	createCheckpoint func(ctx context.Context, ck *kv1.GPUCheckpoint) error
	now              func() time.Time
	// gated moves preemptors PreEnqueue held back to the active queue when their preemption ends.
	gated *reactivator
}

var (
	_ framework.PreEnqueuePlugin  = &CheckpointPreemption{}
	_ framework.EnqueueExtensions = &CheckpointPreemption{}
	_ framework.PostFilterPlugin  = &CheckpointPreemption{}
	_ framework.PostBindPlugin    = &CheckpointPreemption{}
	_ preemption.Interface        = &CheckpointPreemption{}
)

// New builds the plugin from its args, with GPUNode and GPUCheckpoint informers of its own.
func New(ctx context.Context, obj runtime.Object, fh framework.Handle) (framework.Plugin, error) {
	return newOn(ctx, obj, fh, &connect.Shared{})
}

// NewShared returns the plugin's factory for a program that shares one kybernate.io informer
// factory between its plugins and controllers (kybernate-scheduler): the plugin's GPUNode and
// GPUCheckpoint informers are shared's.
func NewShared(shared *connect.Shared) frameworkruntime.PluginFactory {
	return func(ctx context.Context, obj runtime.Object, fh framework.Handle) (framework.Plugin, error) {
		return newOn(ctx, obj, fh, shared)
	}
}

func newOn(ctx context.Context, obj runtime.Object, fh framework.Handle, shared *connect.Shared) (framework.Plugin, error) {
	args, ok := obj.(*config.CheckpointPreemptionArgs)
	if !ok {
		return nil, fmt.Errorf("want args of type CheckpointPreemptionArgs, got %T", obj)
	}
	if err := validation.ValidateCheckpointPreemptionArgs(field.NewPath("args"), args); err != nil {
		return nil, err
	}
	client, factory, err := shared.Get(fh.KubeConfig())
	if err != nil {
		return nil, err
	}
	gpuNodes := factory.Kybernate().V1alpha1().GPUNodes()
	checkpoints := factory.Kybernate().V1alpha1().GPUCheckpoints()
	gpuNodes.Informer() // register before Start
	checkpoints.Informer()
	if err := connect.StartInformers(ctx, factory); err != nil {
		return nil, err
	}
	registerMetrics()
	pl := newPlugin(fh, *args, gpuNodes.Lister(), checkpoints.Lister())
	pl.createCheckpoint = func(ctx context.Context, ck *kv1.GPUCheckpoint) error {
		_, err := client.KybernateV1alpha1().GPUCheckpoints(ck.Namespace).Create(ctx, ck, metav1.CreateOptions{})
		return err
	}
	// Like DefaultPreemption, request the suspensions asynchronously when the scheduler does
	// (SchedulerAsyncPreemption, on by default in 1.34): PreEnqueue holds the preemptor back
	// until every GPUCheckpoint of its preemption exists.
	pl.evaluator = preemption.NewEvaluator(Name, fh, pl, utilfeature.DefaultFeatureGate.Enabled(features.SchedulerAsyncPreemption))
	pl.evaluator.PreemptPod = pl.suspend
	pl.gated = &reactivator{watching: map[types.UID]bool{}, running: pl.evaluator.IsPodRunningPreemption,
		activate: fh.Activate, interval: 50 * time.Millisecond, timeout: gateTimeout}
	return pl, nil
}

func newPlugin(fh framework.Handle, args config.CheckpointPreemptionArgs, gpuNodes listers.GPUNodeLister, checkpoints listers.GPUCheckpointLister) *CheckpointPreemption {
	return &CheckpointPreemption{fh: fh, args: args, gpuNodes: gpuNodes, checkpoints: checkpoints, now: time.Now}
}

// Name returns the plugin's name.
func (pl *CheckpointPreemption) Name() string { return Name }

// PreEnqueue holds a preemptor back while its suspensions are still being requested (async
// preemption), so that it does not run into the same full node meanwhile; the pod goes back to
// the active queue when the preemption ends (reactivator).
func (pl *CheckpointPreemption) PreEnqueue(ctx context.Context, pod *v1.Pod) *fwk.Status {
	if pl.evaluator != nil && pl.evaluator.IsPodRunningPreemption(pod.UID) {
		if pl.gated != nil {
			pl.gated.watch(klog.FromContext(ctx), pod)
		}
		return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, "waiting for the suspensions this pod asked for to be requested")
	}
	return nil
}

// EventsToRegister: a GPUCheckpoint of the pod's preemption appears (the last one ends the
// wait PreEnqueue imposes).
func (pl *CheckpointPreemption) EventsToRegister(_ context.Context) ([]fwk.ClusterEventWithHint, error) {
	return []fwk.ClusterEventWithHint{{
		Event:          fwk.ClusterEvent{Resource: "gpucheckpoints.v1alpha1.kybernate.io", ActionType: fwk.Add},
		QueueingHintFn: isPreemptorOf,
	}}, nil
}

// isPreemptorOf queues the pod when a GPUCheckpoint names it as the preemptor.
func isPreemptorOf(_ klog.Logger, pod *v1.Pod, _, newObj interface{}) (fwk.QueueingHint, error) {
	var preemptor string
	switch o := newObj.(type) {
	case *kv1.GPUCheckpoint:
		preemptor = o.Labels[kv1.LabelPreemptor]
	case *unstructured.Unstructured:
		preemptor = o.GetLabels()[kv1.LabelPreemptor]
	default:
		return fwk.Queue, fmt.Errorf("unexpected object %T in a GPUCheckpoint event", newObj)
	}
	if preemptor == string(pod.UID) {
		return fwk.Queue, nil
	}
	return fwk.QueueSkip, nil
}

// PostFilter suspends victims for a GPU pod that fits nowhere. Pods that ask for no GPU are left
// to the next PostFilter plugin (DefaultPreemption). For GPU pods a failure is final for this
// cycle (UnschedulableAndUnresolvable), so that no later plugin deletes pods to make room.
func (pl *CheckpointPreemption) PostFilter(ctx context.Context, state fwk.CycleState, pod *v1.Pod, m framework.NodeToStatusReader) (*framework.PostFilterResult, *fwk.Status) {
	d, err := gpupod.PodDemand(pod)
	if err != nil || d.Count == 0 {
		preemptionAttempts.WithLabelValues(outcomeNotGPUPod).Inc()
		return nil, fwk.NewStatus(fwk.Unschedulable, "not a GPU pod")
	}
	result, status := pl.evaluator.Preempt(ctx, state, pod, m)
	switch {
	case status.IsSuccess():
		preemptionAttempts.WithLabelValues(outcomeSuspending).Inc()
		return result, status
	case status.Code() == fwk.Error:
		preemptionAttempts.WithLabelValues(outcomeError).Inc()
		return result, status
	case result == nil:
		// Preempt returns no result when the preemptor may not preempt (yet).
		preemptionAttempts.WithLabelValues(outcomeNotEligible).Inc()
	default:
		preemptionAttempts.WithLabelValues(outcomeNotHelpful).Inc()
	}
	return result, fwk.NewStatus(fwk.UnschedulableAndUnresolvable, "suspension: "+status.Message())
}

// PostBind records how long a pod that suspended others waited from its creation to its binding.
func (pl *CheckpointPreemption) PostBind(_ context.Context, _ fwk.CycleState, pod *v1.Pod, _ string) {
	cks, err := pl.checkpoints.List(labels.SelectorFromSet(labels.Set{kv1.LabelPreemptor: string(pod.UID)}))
	if err != nil || len(cks) == 0 {
		return
	}
	preemptorBindDuration.Observe(pl.now().Sub(pod.CreationTimestamp.Time).Seconds())
}

// GetOffsetAndNumCandidates shortlists nodes for the dry run, as DefaultPreemption does.
func (pl *CheckpointPreemption) GetOffsetAndNumCandidates(numNodes int32) (int32, int32) {
	n := max(numNodes*pl.args.MinCandidateNodesPercentage/100, pl.args.MinCandidateNodesAbsolute)
	return 0, min(n, numNodes)
}

// CandidatesToVictimsMap maps node names to their victims.
func (pl *CheckpointPreemption) CandidatesToVictimsMap(candidates []preemption.Candidate) map[string]*extenderv1.Victims {
	m := make(map[string]*extenderv1.Victims, len(candidates))
	for _, c := range candidates {
		m[c.Name()] = c.Victims()
	}
	return m
}

// PodEligibleToPreemptOthers refuses a preemptor whose earlier suspensions are still in flight:
// it waits for them instead of choosing more victims.
func (pl *CheckpointPreemption) PodEligibleToPreemptOthers(_ context.Context, pod *v1.Pod, nominatedNodeStatus *fwk.Status) (bool, string) {
	if pod.Spec.PreemptionPolicy != nil && *pod.Spec.PreemptionPolicy == v1.PreemptNever {
		return false, "not eligible due to preemptionPolicy=Never"
	}
	if n := pl.inFlight(pod); n > 0 {
		return false, fmt.Sprintf("waiting for %d suspension(s) made for this pod", n)
	}
	if pod.Status.NominatedNodeName != "" && nominatedNodeStatus.Code() != fwk.UnschedulableAndUnresolvable {
		if nodeInfo, _ := pl.fh.SnapshotSharedLister().NodeInfos().Get(pod.Status.NominatedNodeName); nodeInfo != nil {
			for _, p := range nodeInfo.GetPods() {
				if p.GetPod().Annotations[kv1.AnnotationState] == string(kv1.PodSuspending) {
					return false, "waiting for a pod on the nominated node to finish suspending"
				}
			}
		}
	}
	return true, ""
}

// inFlight counts the GPUCheckpoints made for the preemptor that have not ended.
func (pl *CheckpointPreemption) inFlight(pod *v1.Pod) int {
	cks, err := pl.checkpoints.List(labels.SelectorFromSet(labels.Set{kv1.LabelPreemptor: string(pod.UID)}))
	if err != nil {
		return 0
	}
	n := 0
	for _, ck := range cks {
		if ck.Status.Phase != kv1.PhaseSucceeded && ck.Status.Phase != kv1.PhaseFailed {
			n++
		}
	}
	return n
}

// failedSuspensions are the pods whose suspension for this preemptor failed: asking again would
// fail again, so they are no victims of it.
func (pl *CheckpointPreemption) failedSuspensions(preemptor *v1.Pod) sets.Set[types.UID] {
	failed := sets.New[types.UID]()
	cks, err := pl.checkpoints.List(labels.SelectorFromSet(labels.Set{kv1.LabelPreemptor: string(preemptor.UID)}))
	if err != nil {
		return failed
	}
	for _, ck := range cks {
		if ck.Status.Phase == kv1.PhaseFailed {
			failed.Insert(types.UID(ck.Spec.PodUID))
		}
	}
	return failed
}

// SelectVictimsOnNode finds the cheapest set of pods on the node whose suspension lets the
// preemptor fit. nodeInfo and state are copies the plugin may change.
func (pl *CheckpointPreemption) SelectVictimsOnNode(ctx context.Context, state fwk.CycleState, pod *v1.Pod, nodeInfo fwk.NodeInfo, _ []*policy.PodDisruptionBudget) ([]*v1.Pod, int, *fwk.Status) {
	logger := klog.FromContext(ctx)
	node := nodeInfo.Node()
	gn, err := pl.gpuNodes.Get(node.Name)
	if apierrors.IsNotFound(err) {
		return nil, 0, fwk.NewStatus(fwk.UnschedulableAndUnresolvable, "node has no GPUNode")
	}
	if err != nil {
		return nil, 0, fwk.AsStatus(err)
	}
	gpuTotal := gpupod.GPUSizes(gn)

	now := pl.now()
	failed := pl.failedSuspensions(pod)
	var candidates []gpupod.Victim
	for _, pi := range nodeInfo.GetPods() {
		p := pi.GetPod()
		why, turn := gpupod.Ineligibility(p, pod, pl.args.DefaultMinRuntime.Duration, now)
		if why == "" && failed.Has(p.UID) {
			why = "its suspension for this preemptor failed"
		}
		if why != "" {
			logger.V(5).Info("Pod may not be suspended", "pod", klog.KObj(p), "reason", why)
			continue
		}
		candidates = append(candidates, gpupod.Victim{Pod: p, Bytes: gpupod.ResidentBytes(p, gpuTotal), ResumedAt: gpupod.ResidentSince(p), Turn: turn})
	}
	if len(candidates) == 0 {
		return nil, 0, fwk.NewStatus(fwk.UnschedulableAndUnresolvable, "no pod on the node may be suspended")
	}

	// swap replaces one pod on the node by another, telling the PreFilter extensions.
	swap := func(from, to *v1.Pod) error {
		if err := nodeInfo.RemovePod(logger, from); err != nil {
			return err
		}
		fromInfo, err := framework.NewPodInfo(from)
		if err != nil {
			return err
		}
		if s := pl.fh.RunPreFilterExtensionRemovePod(ctx, state, pod, fromInfo, nodeInfo); !s.IsSuccess() {
			return s.AsError()
		}
		toInfo, err := framework.NewPodInfo(to)
		if err != nil {
			return err
		}
		nodeInfo.AddPodInfo(toInfo)
		if s := pl.fh.RunPreFilterExtensionAddPod(ctx, state, pod, toInfo, nodeInfo); !s.IsSuccess() {
			return s.AsError()
		}
		return nil
	}

	// Suspend every candidate; if the preemptor does not fit even then, this node cannot help.
	asSuspended := make(map[*v1.Pod]*v1.Pod, len(candidates))
	for _, c := range candidates {
		asSuspended[c.Pod] = gpupod.AsSuspended(c.Pod)
		if err := swap(c.Pod, asSuspended[c.Pod]); err != nil {
			return nil, 0, fwk.AsStatus(err)
		}
	}
	if s := pl.fh.RunFilterPluginsWithNominatedPods(ctx, state, pod, nodeInfo); !s.IsSuccess() {
		return nil, 0, s
	}

	// Reprieve the dearest candidates first; whoever must stay suspended is a victim.
	gpupod.SortByCost(candidates)
	var victims []gpupod.Victim
	for i := len(candidates) - 1; i >= 0; i-- {
		c := candidates[i]
		if err := swap(asSuspended[c.Pod], c.Pod); err != nil {
			return nil, 0, fwk.AsStatus(err)
		}
		if pl.fh.RunFilterPluginsWithNominatedPods(ctx, state, pod, nodeInfo).IsSuccess() {
			continue
		}
		if err := swap(c.Pod, asSuspended[c.Pod]); err != nil {
			return nil, 0, fwk.AsStatus(err)
		}
		victims = append(victims, c)
	}
	gpupod.SortByCost(victims)

	var parked int64
	pods := make([]*v1.Pod, len(victims))
	for i, v := range victims {
		parked += v.Bytes
		pods[i] = v.Pod
	}
	if parkable := gn.Status.HostMemory.ParkableBytes; parked > parkable {
		return nil, 0, fwk.NewStatus(fwk.UnschedulableAndUnresolvable,
			fmt.Sprintf("suspending would park %s of GPU memory but the node can park only %s", gpupod.GiB(parked), gpupod.GiB(parkable)))
	}
	return pods, 0, nil
}

// OrderedScoreFuncs prefers the node where the suspensions move the fewest bytes.
func (pl *CheckpointPreemption) OrderedScoreFuncs(_ context.Context, nodesToVictims map[string]*extenderv1.Victims) []func(node string) int64 {
	return []func(string) int64{func(node string) int64 {
		gn, err := pl.gpuNodes.Get(node)
		if err != nil {
			return 0
		}
		total := gpupod.GPUSizes(gn)
		var bytes int64
		for _, p := range nodesToVictims[node].Pods {
			bytes += gpupod.ResidentBytes(p, total)
		}
		return -bytes
	}}
}

// suspend replaces the evaluator's PreemptPod: instead of deleting the victim it asks the node
// agent to suspend it, through a GPUCheckpoint.
func (pl *CheckpointPreemption) suspend(ctx context.Context, c preemption.Candidate, preemptor, victim *v1.Pod, _ string) error {
	logger := klog.FromContext(ctx)
	if waiting := pl.fh.GetWaitingPod(victim.UID); waiting != nil {
		// Not bound yet: nothing to suspend; it goes back to the queue.
		waiting.Reject(Name, "preempted")
		return nil
	}
	if corev1helpers.PodPriority(victim) == corev1helpers.PodPriority(preemptor) {
		// A time-slice turn: the preemptor is nominated to the node and waits; the time-slice
		// controller suspends the victim when its turn ends.
		logger.V(4).Info("Pod waits for a time-slice turn", "pod", klog.KObj(preemptor), "node", c.Name(), "runningPod", klog.KObj(victim))
		return nil
	}
	ck := gpupod.SuspendCheckpoint(victim, preemptor)
	if err := pl.createCheckpoint(ctx, ck); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("requesting the suspension of pod %s: %w", klog.KObj(victim), err)
	}
	logger.V(2).Info("Suspending pod for a preemptor", "victim", klog.KObj(victim), "preemptor", klog.KObj(preemptor), "node", c.Name(), "gpuCheckpoint", klog.KObj(ck))
	pl.fh.EventRecorder().Eventf(victim, preemptor, v1.EventTypeNormal, "Preempted", "Suspending",
		"Preempted by pod %s on node %s: suspending its GPU memory to host memory (GPUCheckpoint %s)", klog.KObj(preemptor), c.Name(), ck.Name)
	return nil
}
