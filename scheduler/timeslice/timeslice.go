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
	if err := skeleton.QueueNodesOfPods(pods, c.queue); err != nil {
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
		if p.moving[pod.UID] {
			continue
		}
		if err := c.label(ctx, pod, p.labels, p.gpuTimes); err != nil {
			return err
		}
	}
	return nil
}

// rotate asks the agent to suspend the pods whose turn ends, for the next pod.
func (c *Controller) rotate(ctx context.Context, node string, t turn, now time.Time) error {
	logger := klog.FromContext(ctx)
	next := t.next
	for _, r := range t.yielders {
		ck := &kv1.GPUCheckpoint{
			ObjectMeta: metav1.ObjectMeta{
				Name:            turnName(r.pod, r.usage.TurnFrom()),
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
		turnLength := now.Sub(r.usage.TurnFrom()).Round(time.Second)
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
	return strings.ToLower(gpupod.CheckpointName(pod, fmt.Sprintf("-turn-%d", turnStart.Unix())))
}

func ended(ck *kv1.GPUCheckpoint) bool {
	return ck.Status.Phase == kv1.PhaseSucceeded || ck.Status.Phase == kv1.PhaseFailed
}
