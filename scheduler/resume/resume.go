// Package resume is the controller in kybernate-scheduler that brings suspended pods back.
//
// Whenever something on a node may have freed GPU memory (a pod ended, a pod was suspended or
// moved, the node's GPUNode changed, a GPUCheckpoint ended), the controller looks at the pods of
// the node that were suspended to make room for others (reason Preemption) or for another pod's
// time-slice turn (reason TimeSlice), or put to sleep for idleness (reason Idle) and since asked
// by the activator to wake (kybernate.io/wake-requested), and resumes, highest priority first, among equals the one
// that has received the least GPU time, then the first suspended, each that fits: on its own GPUs when
// they have room, otherwise on any free GPUs of its node (the agent remaps the process). A pod
// that the spreading controller suspended to move it off a shared GPU (reason Spread) comes
// back onto the emptiest GPU of its node that holds it (LeastAllocated). GPUs
// that a nominated preemptor will need are held back. A resume is requested like a suspension,
// through a GPUCheckpoint that the node agent carries out; before it, the controller moves the
// pod's kybernate.io/gpus to the target GPUs and marks it Resuming, so the scheduler counts the
// memory there from that moment and never hands those GPUs to another pod. Until its pod
// informer shows that mark, the memory is held in the program's gpupod.Ledger: the choice is
// made under the ledger's lock, against what GPUShare (or the extender) has reserved for pods
// it is binding, and GPUShare sees the reservation in its next Filter and Reserve.
//
// A pod woken from an idle sleep that does not fit on its node suspends lower-priority pods to
// come back (wake.go), by the rules of CheckpointPreemption, as a new pod of its priority would.
package resume

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/klog/v2"

	"github.com/kybernate/kybernate/apis/config"
	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	kinformers "github.com/kybernate/kybernate/apis/kybernate/client/informers/externalversions/kybernate/v1alpha1"
	listers "github.com/kybernate/kybernate/apis/kybernate/client/listers/kybernate/v1alpha1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/scheduler/internal/index"
	"github.com/kybernate/kybernate/scheduler/internal/keyqueue"
	"github.com/kybernate/kybernate/scheduler/internal/skeleton"
	"github.com/kybernate/kybernate/scheduler/timeslice"
)

const (
	// maxAttempts bounds the resumes tried for one suspension; after that the pod stays
	// suspended and an Event says why.
	maxAttempts = 5
	// firstBackoff is the wait after a failed resume; it doubles with each failure.
	firstBackoff = 10 * time.Second
	// maxDeferredWait bounds the wait after a resume the agent deferred (its restore guard saw
	// too little free GPU memory): a deferral is a "not yet", retried without limit.
	maxDeferredWait = 2 * time.Minute
	// reservationTTL bounds how long the ledger holds a resume's memory when the pod informer
	// never shows the pod Resuming (the mark is rolled back, say).
	reservationTTL = time.Minute
	// heldRecheck is when a node is looked at again after a candidate was passed over because
	// the ledger still held a placement of it.
	heldRecheck = time.Second
	// resyncPeriod is how often every node is looked at again, whatever happened. Events bring
	// a node back whenever room may have freed there, but some room frees without one (a
	// ledger reservation that runs out unseen), and a suspended pod must not wait beside free
	// memory for an event that does not come.
	resyncPeriod = 30 * time.Second
)

// Controller resumes suspended pods when their node has room.
type Controller struct {
	client      kubernetes.Interface
	kybernate   versioned.Interface
	pods        cache.Indexer
	podLister   corelisters.PodLister
	gpuNodes    listers.GPUNodeLister
	checkpoints cache.Indexer
	recorder    events.EventRecorder
	queue       *keyqueue.Queue
	ledger      *gpupod.Ledger
	strategy    config.ScoringStrategyType
	// defaultMinRuntime protects pods from a wake's preemption as from any other.
	defaultMinRuntime time.Duration
	now               func() time.Time
	resync            time.Duration
}

// New wires the controller to informers that the caller starts and to the program's ledger of
// GPU placements. It adds indexers, so it must be called before the informers run.
func New(client kubernetes.Interface, kybernate versioned.Interface, pods coreinformers.PodInformer,
	gpuNodes kinformers.GPUNodeInformer, checkpoints kinformers.GPUCheckpointInformer, recorder events.EventRecorder,
	cfg config.ControllerConfiguration, ledger *gpupod.Ledger) (*Controller, error) {
	if err := skeleton.Register(pods, checkpoints); err != nil {
		return nil, err
	}
	c := &Controller{
		client:      client,
		kybernate:   kybernate,
		pods:        pods.Informer().GetIndexer(),
		podLister:   pods.Lister(),
		gpuNodes:    gpuNodes.Lister(),
		checkpoints: checkpoints.Informer().GetIndexer(),
		recorder:    recorder,
		ledger:      ledger,
		strategy:    config.MostAllocated,
		now:         time.Now,

		defaultMinRuntime: cfg.DefaultMinRuntime.Duration,
		resync:            resyncPeriod,
	}
	c.queue = skeleton.Queue("kybernate-resume", "Resuming pods failed", c.sync)
	if _, err := pods.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(old, obj interface{}) { c.podChanged(old.(*v1.Pod), obj.(*v1.Pod)) },
		DeleteFunc: func(obj interface{}) {
			if pod, ok := skeleton.Pod(obj); ok && pod.Spec.NodeName != "" {
				c.queue.Add(pod.Spec.NodeName)
			}
		},
	}); err != nil {
		return nil, err
	}
	if _, err := gpuNodes.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj interface{}) { c.queue.Add(obj.(*kv1.GPUNode).Name) },
		UpdateFunc: func(_, obj interface{}) { c.queue.Add(obj.(*kv1.GPUNode).Name) },
	}); err != nil {
		return nil, err
	}
	if _, err := checkpoints.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(old, obj interface{}) {
			ck := obj.(*kv1.GPUCheckpoint)
			if ck.Status.NodeName != "" && ended(ck) && !ended(old.(*kv1.GPUCheckpoint)) {
				if ck.Status.Phase == kv1.PhaseFailed && ck.Spec.Action == kv1.ActionResume {
					// Try again once the backoff has passed.
					c.queue.AddAfter(ck.Status.NodeName, backoff(1))
					if ck.Status.Deferred() {
						c.deferred(ck)
					}
				}
				c.queue.Add(ck.Status.NodeName)
			}
		},
	}); err != nil {
		return nil, err
	}
	return c, nil
}

// podChanged queues the node of a pod whose change may free GPU memory or slots (it stopped
// holding VRAM, moved GPUs, finished, or a preemptor bound there) or of a sleeping pod a
// request asks to wake.
func (c *Controller) podChanged(old, pod *v1.Pod) {
	if pod.Spec.NodeName != "" && (skeleton.GPUChange(old, pod) ||
		old.Annotations[kv1.AnnotationWakeRequested] != pod.Annotations[kv1.AnnotationWakeRequested]) {
		c.queue.Add(pod.Spec.NodeName)
	}
}

// ShutDown stops the work queue; Run returns once the current item is done.
func (c *Controller) ShutDown() { c.queue.ShutDown() }

// Run processes nodes until ctx ends (the lease is lost); it may run again later.
func (c *Controller) Run(ctx context.Context, workers int) {
	defer utilruntime.HandleCrashWithContext(ctx)
	logger := klog.FromContext(ctx)
	logger.Info("Starting resume controller")
	// Suspended pods from before a restart get their chance at once, and every node again
	// each resync period.
	go wait.UntilWithContext(ctx, func(context.Context) {
		for _, gn := range c.gpuNodeNames() {
			c.queue.Add(gn)
		}
	}, c.resync)
	c.queue.Work(ctx, workers)
	<-ctx.Done()
	logger.Info("Stopping resume controller")
}

func (c *Controller) gpuNodeNames() []string {
	gns, err := c.gpuNodes.List(labels.Everything())
	if err != nil {
		return nil
	}
	names := make([]string, len(gns))
	for i, gn := range gns {
		names[i] = gn.Name
	}
	return names
}

// candidate is a suspended pod that may come back.
type candidate struct {
	pod        *v1.Pod
	demand     gpupod.Demand
	suspension *kv1.GPUCheckpoint
	attempt    int
	// gpuTime is the GPU time the pod has received: among equal priorities the least served
	// comes back first.
	gpuTime time.Duration
	// woken is true for a pod put to sleep for idleness that a request asked to wake: it may
	// suspend lower-priority pods to come back, as a new pod of its priority could.
	woken bool
	// noGPUs is true for a pod without GPUs: nothing to place, it comes back at once.
	noGPUs bool
}

// sync resumes what fits on one node.
func (c *Controller) sync(ctx context.Context, node string) error {
	logger := klog.FromContext(ctx)
	gn, err := c.gpuNodes.Get(node)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	onNode, err := index.Pods(c.pods, index.PodsByNode, node)
	if err != nil {
		return err
	}
	var candidates []candidate
	retryAt := time.Time{}
	for _, pod := range onNode {
		cand, wait, ok := c.candidate(pod)
		if !wait.IsZero() && (retryAt.IsZero() || wait.Before(retryAt)) {
			retryAt = wait
		}
		if ok {
			candidates = append(candidates, cand)
		}
	}
	if !retryAt.IsZero() {
		c.queue.AddAfter(node, retryAt.Sub(c.now()))
	}
	logger.V(4).Info("Looking for pods to resume", "node", node, "pods", len(onNode), "candidates", len(candidates))
	candidates, err = c.resumeWithoutGPUs(ctx, candidates)
	if err != nil || len(candidates) == 0 {
		return err
	}
	slices.SortFunc(candidates, func(a, b candidate) int {
		return timeslice.NextFirst(corev1helpers.PodPriority(a.pod), corev1helpers.PodPriority(b.pod),
			a.gpuTime, b.gpuTime, suspendedAt(a.suspension), suspendedAt(b.suspension))
	})
	c.ledger.Lock()
	moves, wakes, err := c.place(ctx, node, gn, onNode, candidates)
	c.ledger.Unlock()
	if err != nil {
		return err
	}
	for _, cand := range wakes {
		if err := c.preemptForWake(ctx, gn, onNode, cand); err != nil {
			for _, m := range moves {
				c.ledger.Release(m.cand.pod.UID)
			}
			return err
		}
	}
	for i, m := range moves {
		if err := c.resume(ctx, m.cand, m.from, m.target); err != nil {
			for _, rest := range moves[i+1:] {
				c.ledger.Release(rest.cand.pod.UID)
			}
			return err
		}
	}
	return nil
}

// move is a resume decided: the pod comes back from its GPUs onto target.
type move struct {
	cand         candidate
	from, target []string
}

// place chooses the candidates that fit on the node, in order, and reserves their GPUs in the
// ledger; woken pods that do not fit are returned to make room for (outside the ledger's lock,
// which the caller holds here).
func (c *Controller) place(ctx context.Context, node string, gn *kv1.GPUNode, onNode []*v1.Pod, candidates []candidate) (moves []move, wakes []candidate, err error) {
	logger := klog.FromContext(ctx)
	acc := gpupod.NewAccounting(gn, c.ledger.Pods(node, onNode))
	// GPUs that nominated preemptors will take are not for resuming pods.
	nominated, err := index.Pods(c.pods, index.PodsByNominatedNode, node)
	if err != nil {
		return nil, nil, err
	}
	// A nominated pod that does not fit yet waits for the memory its victims are freeing (or
	// for its time-slice turn): that memory is its own, so no pod of its priority or lower
	// resumes on the node meanwhile. So do preemptors that wait for their victims without a
	// nomination (extender mode).
	waiting := false
	var waitingPriority int32
	claimed := map[types.UID]bool{}
	for _, p := range append(nominated, index.WaitingPreemptors(c.checkpoints, c.pods, node)...) {
		if p.Spec.NodeName != "" || claimed[p.UID] {
			continue
		}
		claimed[p.UID] = true
		if _, _, held := c.ledger.Placed(p.UID); held {
			continue // being bound: counted from the ledger already
		}
		if d, err := gpupod.PodDemand(p); err == nil && d.Count > 0 {
			if uuids := acc.Choose(d, c.strategy); uuids != nil {
				acc.Take(d, uuids)
			} else if prio := corev1helpers.PodPriority(p); !waiting || prio > waitingPriority {
				waiting, waitingPriority = true, prio
			}
		}
	}

	for _, cand := range candidates {
		if _, _, held := c.ledger.Placed(cand.pod.UID); held {
			// Resumed a moment ago (the informer does not show it yet), or bound a moment ago
			// and suspended since: the reservation runs out by itself, with no event to
			// bring the node back here, so look again once it has.
			c.queue.AddAfter(node, heldRecheck)
			continue
		}
		if waiting && corev1helpers.PodPriority(cand.pod) <= waitingPriority {
			logger.V(4).Info("Suspended pod waits: a nominated pod of its priority or higher waits for memory on the node", "pod", klog.KObj(cand.pod), "node", node)
			continue
		}
		from := gpupod.AssignedGPUs(cand.pod)
		target := from
		// Its memory is restored: the agent keeps its restore margin free beyond it.
		restoring := cand.demand.Restoring(gn)
		// A pod suspended to spread comes back onto the emptiest GPU that holds it (the unused
		// one it was suspended for, if nothing took it meanwhile), not where it shared.
		spread := cand.suspension.Spec.Reason == kv1.ReasonSpread
		if !spread && acc.FitsSlotHeld(restoring, from) {
			acc.Use(cand.demand, from)
		} else {
			// Its slots move with it to other GPUs of the node.
			acc.Release(from)
			strategy := c.strategy
			if spread {
				strategy = config.LeastAllocated
			}
			if target = acc.Choose(restoring, strategy); target == nil {
				acc.Hold(from)
				logger.V(4).Info("Suspended pod does not fit on its node yet", "pod", klog.KObj(cand.pod), "node", node)
				if cand.woken {
					wakes = append(wakes, cand)
					// The room it makes is the woken pod's: nothing of its priority or lower
					// resumes meanwhile.
					waiting, waitingPriority = true, max(waitingPriority, corev1helpers.PodPriority(cand.pod))
				}
				continue
			}
			acc.Take(cand.demand, target)
		}
		c.ledger.Reserve(gpupod.OwnerResume, resuming(cand.pod, target), reservationTTL)
		moves = append(moves, move{cand: cand, from: from, target: target})
	}
	return moves, wakes, nil
}

// resuming is the pod as the resume marks it: on target, Resuming.
func resuming(pod *v1.Pod, target []string) *v1.Pod {
	p := pod.DeepCopy()
	p.Annotations[kv1.AnnotationGPUs] = gpupod.FormatGPUs(target)
	p.Annotations[kv1.AnnotationState] = string(kv1.PodResuming)
	return p
}

// candidate reports whether a pod on the node is a suspended pod to bring back now; when it
// must wait for a backoff, wait says until when.
func (c *Controller) candidate(pod *v1.Pod) (cand candidate, wait time.Time, ok bool) {
	if kv1.PodGPUState(pod.Annotations[kv1.AnnotationState]) != kv1.PodSuspended || pod.DeletionTimestamp != nil {
		return cand, wait, false
	}
	// A pod without GPUs (which the agent suspends by freezing its containers) needs no room.
	noGPUs := gpupod.WithoutGPUs(pod)
	d, err := gpupod.PodDemand(pod)
	if !noGPUs && (err != nil || d.Count == 0 || len(gpupod.AssignedGPUs(pod)) != d.Count) {
		return cand, wait, false
	}
	cks := index.Checkpoints(c.checkpoints, string(pod.UID))
	var suspension *kv1.GPUCheckpoint
	for _, ck := range cks {
		if (ck.Spec.Action == kv1.ActionSuspend || ck.Spec.Action == kv1.ActionCheckpoint) && ck.Status.Phase == kv1.PhaseInProgress {
			// The agent marks the pod Suspended before it ends the GPUCheckpoint: until that
			// end is seen, the latest Succeeded suspension is the one before, already resumed,
			// and the pod's last turn is not counted in its GPU time. Its end queues the node.
			return cand, wait, false
		}
		if ck.Spec.Action == kv1.ActionSuspend && ck.Status.Phase == kv1.PhaseSucceeded &&
			(suspension == nil || suspendedAt(ck).After(suspendedAt(suspension))) {
			suspension = ck
		}
	}
	// Only pods suspended to make room or to take turns come back by themselves, and pods put
	// to sleep for idleness once a request asked the activator to wake them; a manual
	// suspension stays.
	if suspension == nil || !comesBack(pod, suspension) {
		return cand, wait, false
	}
	// Deferred resumes (the agent's restore guard found too little free GPU memory) are retried
	// without limit; failures count towards maxAttempts.
	attempt, failures, last, lastDeferred := 0, 0, time.Time{}, false
	for _, ck := range cks {
		if ck.Spec.Action != kv1.ActionResume || ck.Labels[kv1.LabelSuspension] != string(suspension.UID) {
			continue
		}
		if !ended(ck) {
			return cand, wait, false // in flight
		}
		if ck.Status.Phase == kv1.PhaseSucceeded {
			// This suspension is over: the pod's current one is not seen yet.
			return cand, wait, false
		}
		attempt++
		if !ck.Status.Deferred() {
			failures++
		}
		if ck.Status.CompletionTime != nil && ck.Status.CompletionTime.After(last) {
			last, lastDeferred = ck.Status.CompletionTime.Time, ck.Status.Deferred()
		}
	}
	if failures >= maxAttempts {
		return cand, wait, false
	}
	if attempt > 0 {
		if next := last.Add(retryAfter(attempt, lastDeferred)); c.now().Before(next) {
			return cand, next, false
		}
	}
	gpuTime := timeslice.UsageOf(pod, cks, c.now()).Received
	// The pod needs its footprint before the suspend free, when that is more than it declared.
	d = d.AtLeast(suspension.Status.GPUFootprint())
	return candidate{pod: pod, demand: d, suspension: suspension, attempt: attempt, gpuTime: gpuTime,
		woken: suspension.Spec.Reason == kv1.ReasonIdle, noGPUs: noGPUs}, wait, true
}

// comesBack reports whether the controller brings a pod back from this suspension.
func comesBack(pod *v1.Pod, suspension *kv1.GPUCheckpoint) bool {
	switch suspension.Spec.Reason {
	case kv1.ReasonPreemption, kv1.ReasonTimeSlice, kv1.ReasonSpread:
		return true
	case kv1.ReasonIdle:
		return gpupod.WakePending(pod, suspension.CreationTimestamp.Time)
	}
	return false
}

// resume moves the pod's GPUs to the target, marks it Resuming and asks the agent to resume it.
// The ledger holds the target's memory; it is released here when the resume is not made.
func (c *Controller) resume(ctx context.Context, cand candidate, from, target []string) (err error) {
	defer func() {
		if err != nil {
			c.ledger.Release(cand.pod.UID)
		}
	}()
	logger := klog.FromContext(ctx)
	pod := cand.pod
	mark := map[string]string{kv1.AnnotationGPUs: gpupod.FormatGPUs(target)}
	if err := gpupod.SetState(mark, gpupod.StateOf(pod), kv1.PodResuming); err != nil {
		return fmt.Errorf("pod %s: %w", klog.KObj(pod), err)
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
		// The pod must still be the one we looked at: a conflict means someone else acted.
		"resourceVersion": pod.ResourceVersion,
		"annotations":     mark,
	}})
	if err != nil {
		return err
	}
	if _, err := c.client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			c.ledger.Release(pod.UID)
			return nil // the pod's deletion queues the node again
		}
		// A conflict too is retried: the change that caused it (another controller's
		// annotation, say) may be one that does not queue the node by itself, and the pod
		// would stay suspended on a free GPU.
		return fmt.Errorf("marking pod %s Resuming: %w", klog.KObj(pod), err)
	}
	ck := &kv1.GPUCheckpoint{
		ObjectMeta: metav1.ObjectMeta{
			Name:      resumeName(pod, cand.suspension, cand.attempt),
			Namespace: pod.Namespace,
			Labels:    map[string]string{kv1.LabelSuspension: string(cand.suspension.UID)},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID,
			}},
		},
		Spec: kv1.GPUCheckpointSpec{
			PodName: pod.Name,
			PodUID:  string(pod.UID),
			Action:  kv1.ActionResume,
			Reason:  cand.suspension.Spec.Reason,
		},
	}
	if !slices.Equal(from, target) {
		ck.Spec.TargetGPUs = target
	}
	if _, err := c.kybernate.KybernateV1alpha1().GPUCheckpoints(pod.Namespace).Create(ctx, ck, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		// Undo the mark, so that the pod is not left Resuming with nobody resuming it.
		back := map[string]string{kv1.AnnotationGPUs: gpupod.FormatGPUs(from)}
		_ = gpupod.SetState(back, kv1.PodResuming, kv1.PodSuspended) // allowed: the rollback of a resume
		undo, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": back}})
		if _, uerr := c.client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, undo, metav1.PatchOptions{}); uerr != nil {
			logger.Error(uerr, "Could not undo the Resuming mark", "pod", klog.KObj(pod))
		}
		return fmt.Errorf("requesting the resume of pod %s: %w", klog.KObj(pod), err)
	}
	where := "its GPUs " + strings.Join(target, ",")
	switch {
	case cand.noGPUs:
		where = "no GPUs (the pod has none)"
	case !slices.Equal(from, target):
		where = fmt.Sprintf("GPUs %s (it was on %s)", strings.Join(target, ","), strings.Join(from, ","))
	}
	logger.V(2).Info("Resuming pod", "pod", klog.KObj(pod), "node", pod.Spec.NodeName, "from", from, "to", target, "attempt", cand.attempt+1)
	c.recorder.Eventf(pod, ck, v1.EventTypeNormal, "Resuming", "Resume", "GPU memory free on node %s: resuming onto %s", pod.Spec.NodeName, where)
	return nil
}

// resumeWithoutGPUs resumes the candidates without GPUs, which need no room, and returns the
// others.
func (c *Controller) resumeWithoutGPUs(ctx context.Context, candidates []candidate) ([]candidate, error) {
	rest := candidates[:0:0]
	for _, cand := range candidates {
		if !cand.noGPUs {
			rest = append(rest, cand)
			continue
		}
		if err := c.resume(ctx, cand, nil, nil); err != nil {
			return nil, err
		}
	}
	return rest, nil
}

func resumeName(pod *v1.Pod, suspension *kv1.GPUCheckpoint, attempt int) string {
	return gpupod.MoveName(pod, "resume", suspension, attempt)
}

func suspendedAt(ck *kv1.GPUCheckpoint) time.Time {
	if ck.Status.CompletionTime != nil {
		return ck.Status.CompletionTime.Time
	}
	return ck.CreationTimestamp.Time
}

func ended(ck *kv1.GPUCheckpoint) bool {
	return ck.Status.Phase == kv1.PhaseSucceeded || ck.Status.Phase == kv1.PhaseFailed
}

func backoff(attempt int) time.Duration {
	return firstBackoff << min(attempt-1, 6)
}

// retryAfter is the wait after the attempt-th resume ended without success.
func retryAfter(attempt int, deferred bool) time.Duration {
	if deferred {
		return min(backoff(attempt), maxDeferredWait)
	}
	return backoff(attempt)
}

// deferred tells the pod that its resume waits for GPU memory.
func (c *Controller) deferred(ck *kv1.GPUCheckpoint) {
	pod, err := c.podLister.Pods(ck.Namespace).Get(ck.Spec.PodName)
	if err != nil || (ck.Spec.PodUID != "" && string(pod.UID) != ck.Spec.PodUID) {
		return
	}
	resumesDeferred.Inc()
	c.recorder.Eventf(pod, ck, v1.EventTypeNormal, "ResumeDeferred", "Resume",
		"Node %s has less free GPU memory than the pod needs to be restored (what it used before its suspension plus the agent's margin); the resume is tried again as memory frees, within %s",
		ck.Status.NodeName, maxDeferredWait)
}
