// Package timeslice is the controller in kybernate-scheduler that makes equal-priority pods take
// turns on a node whose GPUs they oversubscribe.
//
// Who takes part: GPU pods of equal priority on one node, some on their GPUs (running) and some
// waiting for them: suspended there (reason TimeSlice or Preemption), or pending and nominated
// to the node (CheckpointPreemption nominates a GPU pod that only equal-priority pods keep
// out). Pods with kybernate.io/preemption: Never never give their GPUs up. Higher priority
// still preempts at once (CheckpointPreemption); lower priority waits.
//
// Rotation: a running pod whose turn has lasted its quantum (see Quantum) gives its GPUs to the
// waiting pod that has received the least GPU time (FIFO by GPU time, so shares converge),
// provided that pod has received less than it. The running pod is suspended through a
// GPUCheckpoint (Suspend, reason TimeSlice; with the waiting pod as preemptor when it is
// pending, so that the scheduler binds it once the memory is free). A suspended successor comes
// back through the resume controller, which resumes waiting pods in the same order onto any free
// GPU of the node. A pod that ends frees its turn at once: its memory goes to the next pod.
//
// What users see: the label kybernate.io/time-slice (Running or Waiting) on the pods that take
// turns, the annotation kybernate.io/gpu-time with the GPU time each received up to its last
// turn change, and an Event on both pods at each turn change.
package timeslice

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
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
)

// Controller rotates the turns of equal-priority pods on oversubscribed nodes.
type Controller struct {
	client      kubernetes.Interface
	kybernate   versioned.Interface
	pods        cache.Indexer
	gpuNodes    listers.GPUNodeLister
	checkpoints cache.Indexer
	recorder    events.EventRecorder
	queue       *keyqueue.Queue
	args        config.ControllerConfiguration
	strategy    config.ScoringStrategyType
	now         func() time.Time
}

// New wires the controller to informers that the caller starts; it must be called before they
// run.
func New(client kubernetes.Interface, kybernate versioned.Interface, pods coreinformers.PodInformer,
	gpuNodes kinformers.GPUNodeInformer, checkpoints kinformers.GPUCheckpointInformer, recorder events.EventRecorder,
	args config.ControllerConfiguration) (*Controller, error) {
	if err := skeleton.Register(pods, checkpoints); err != nil {
		return nil, err
	}
	c := &Controller{
		client:      client,
		kybernate:   kybernate,
		pods:        pods.Informer().GetIndexer(),
		gpuNodes:    gpuNodes.Lister(),
		checkpoints: checkpoints.Informer().GetIndexer(),
		recorder:    recorder,
		args:        args,
		strategy:    config.MostAllocated,
		now:         time.Now,
	}
	c.queue = skeleton.Queue("kybernate-timeslice", "Rotating time-slice turns failed", c.sync)
	queuePod := func(obj interface{}) {
		if pod, ok := skeleton.Pod(obj); ok && skeleton.Node(pod) != "" {
			c.queue.Add(skeleton.Node(pod))
		}
	}
	if _, err := pods.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: queuePod,
		UpdateFunc: func(old, obj interface{}) {
			if o, p := old.(*v1.Pod), obj.(*v1.Pod); skeleton.GPUChange(o, p) {
				queuePod(o)
				queuePod(p)
			}
		},
		DeleteFunc: queuePod,
	}); err != nil {
		return nil, err
	}
	if _, err := checkpoints.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, obj interface{}) {
			if ck := obj.(*kv1.GPUCheckpoint); ck.Status.NodeName != "" && ended(ck) {
				c.queue.Add(ck.Status.NodeName)
			}
		},
	}); err != nil {
		return nil, err
	}
	return c, nil
}

// Run processes nodes until ctx ends (the lease is lost); it may run again later.
func (c *Controller) Run(ctx context.Context, workers int) {
	defer utilruntime.HandleCrashWithContext(ctx)
	logger := klog.FromContext(ctx)
	logger.Info("Starting time-slice controller", "quantum", c.args.TimeSliceQuantum.Duration, "minQuantumFactor", c.args.TimeSliceMinQuantumFactor)
	for _, obj := range c.pods.List() {
		if pod := obj.(*v1.Pod); pod.Spec.NodeName != "" {
			c.queue.Add(pod.Spec.NodeName)
		}
	}
	c.queue.Work(ctx, workers)
	<-ctx.Done()
	logger.Info("Stopping time-slice controller")
}

// ShutDown stops the queue; Run must not be called after it.
func (c *Controller) ShutDown() { c.queue.ShutDown() }

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
	// recheck is when the node must be looked at again (zero: on events only).
	recheck time.Time
}

// sync rotates the turns on one node and brings the members' labels up to date.
func (c *Controller) sync(ctx context.Context, node string) error {
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
	nominated, err := index.Pods(c.pods, index.PodsByNominatedNode, node)
	if err != nil {
		return err
	}
	now := c.now()
	p := c.plan(gn, onNode, nominated, now)
	if !p.recheck.IsZero() {
		c.queue.AddAfter(node, max(p.recheck.Sub(now), 100*time.Millisecond))
	}
	for _, t := range p.turns {
		if err := c.rotate(ctx, node, t, now); err != nil {
			return err
		}
	}
	for _, pod := range slices.Concat(onNode, nominated) {
		if err := c.label(ctx, pod, p.labels, p.gpuTimes); err != nil {
			return err
		}
	}
	return nil
}

// plan decides the rotations due on a node at now. It changes nothing.
func (c *Controller) plan(gn *kv1.GPUNode, onNode, nominated []*v1.Pod, now time.Time) plan {
	p := plan{labels: map[types.UID]string{}, gpuTimes: map[types.UID]string{}}
	var running, waiting []*member
	for _, pod := range onNode {
		if m := c.runningMember(pod, now); m != nil {
			running = append(running, m)
		} else if m := c.suspendedMember(pod, now); m != nil {
			waiting = append(waiting, m)
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

	// Who takes part: running and waiting pods of a priority that has both.
	shared := map[int32]bool{}
	for _, w := range waiting {
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
	// given are the running pods whose GPUs are promised to a waiting pod: now (a turn) or
	// when their turns end (held, so that a large waiting pod is not passed over again and
	// again by smaller ones that fit into whatever frees first).
	given, served := map[types.UID]bool{}, map[types.UID]bool{}
	turnEnd := func(r *member) time.Time { return r.usage.TurnStart.Add(r.quantum) }
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
	// A running pod whose GPU time has not yet passed a waiting pod's will have by then.
	for _, w := range waiting {
		for _, r := range running {
			if !served[w.pod.UID] && !given[r.pod.UID] && r.priority == w.priority && r.usage.Received <= w.usage.Received {
				p.recheck = earliest(p.recheck, maxTime(r.usage.TurnStart.Add(r.quantum),
					now.Add(w.usage.Received-r.usage.Received+time.Millisecond)))
			}
		}
	}
	return p
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
	return &member{pod: pod, demand: d, priority: corev1helpers.PodPriority(pod), usage: UsageOf(pod, cks, now), since: started(last)}
}

// fits returns the GPUs the waiting pod would get on the node in the given state, or nil.
func fits(gn *kv1.GPUNode, state []*v1.Pod, w *member, strategy config.ScoringStrategyType) []string {
	acc := gpupod.NewAccounting(gn, state)
	if !w.pending {
		from := gpupod.AssignedGPUs(w.pod)
		if acc.FitsSlotHeld(w.demand, from) {
			return from
		}
		acc.Release(from)
	}
	return acc.Choose(w.demand, strategy)
}

// rotate asks the agent to suspend the pods whose turn ends, for the next pod.
func (c *Controller) rotate(ctx context.Context, node string, t turn, now time.Time) error {
	logger := klog.FromContext(ctx)
	next := t.next
	for _, r := range t.yielders {
		ck := &kv1.GPUCheckpoint{
			ObjectMeta: metav1.ObjectMeta{
				Name:            turnName(r.pod, r.usage.TurnStart),
				Namespace:       r.pod.Namespace,
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: r.pod.Name, UID: r.pod.UID}},
			},
			Spec: kv1.GPUCheckpointSpec{
				PodName: r.pod.Name,
				PodUID:  string(r.pod.UID),
				Action:  kv1.ActionSuspend,
				Reason:  kv1.ReasonTimeSlice,
			},
		}
		if next.pending {
			ck.Labels = map[string]string{kv1.LabelPreemptor: string(next.pod.UID)}
			ck.Spec.Preemptor = &kv1.PodReference{Namespace: next.pod.Namespace, Name: next.pod.Name, UID: string(next.pod.UID)}
		}
		_, err := c.kybernate.KybernateV1alpha1().GPUCheckpoints(ck.Namespace).Create(ctx, ck, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			continue // this turn's end is requested already
		}
		if err != nil {
			return fmt.Errorf("requesting the end of the turn of pod %s: %w", klog.KObj(r.pod), err)
		}
		rotations.Inc()
		turnLength := now.Sub(r.usage.TurnStart).Round(time.Second)
		logger.V(2).Info("Time-slice turn ends", "pod", klog.KObj(r.pod), "node", node, "turn", turnLength,
			"gpuTime", r.usage.Received.Round(time.Second), "next", klog.KObj(next.pod), "nextGPUTime", next.usage.Received.Round(time.Second))
		c.recorder.Eventf(r.pod, ck, v1.EventTypeNormal, "TimeSliceTurnEnded", "Suspend",
			"Turn on node %s ended after %s (GPU time %s): pod %s (GPU time %s) is next",
			node, turnLength, r.usage.Received.Round(time.Second), klog.KObj(next.pod), next.usage.Received.Round(time.Second))
		c.recorder.Eventf(next.pod, ck, v1.EventTypeNormal, "TimeSliceTurnNext", "Wait",
			"Next turn on node %s (GPU time %s so far): pod %s is being suspended", node, next.usage.Received.Round(time.Second), klog.KObj(r.pod))
	}
	return nil
}

// label brings the pod's kybernate.io/time-slice label and kybernate.io/gpu-time annotation to
// what the plan says. A pod that takes no turns keeps its last GPU time.
func (c *Controller) label(ctx context.Context, pod *v1.Pod, labels, gpuTimes map[types.UID]string) error {
	want, has := labels[pod.UID], pod.Labels[kv1.LabelTimeSlice]
	gpuTime, ok := gpuTimes[pod.UID]
	if want == has && (!ok || gpuTime == pod.Annotations[kv1.AnnotationGPUTime]) {
		return nil
	}
	meta := map[string]any{}
	if want != has {
		var v any // null removes the label
		if want != "" {
			v = want
		}
		meta["labels"] = map[string]any{kv1.LabelTimeSlice: v}
	}
	if ok {
		meta["annotations"] = map[string]string{kv1.AnnotationGPUTime: gpuTime}
	}
	patch, err := json.Marshal(map[string]any{"metadata": meta})
	if err != nil {
		return err
	}
	if _, err := c.client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("labelling pod %s: %w", klog.KObj(pod), err)
	}
	return nil
}

// turnName is the same for every request to end one turn, so that a retry creates no second
// suspension.
func turnName(pod *v1.Pod, turnStart time.Time) string {
	suffix := fmt.Sprintf("-turn-%d", turnStart.Unix())
	name := pod.Name
	if limit := 253 - len(suffix); len(name) > limit {
		name = name[:limit]
	}
	return strings.ToLower(name + suffix)
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

func ended(ck *kv1.GPUCheckpoint) bool {
	return ck.Status.Phase == kv1.PhaseSucceeded || ck.Status.Phase == kv1.PhaseFailed
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
