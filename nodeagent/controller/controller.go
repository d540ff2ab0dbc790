// Package controller reconciles GPUCheckpoint objects for the pods on the agent's nodes: it
// suspends and resumes them through the engine (Operator) and reports phase, timings, bytes
// moved and conditions in the object's status.
//
// An object moves Pending -> InProgress -> Succeeded or Failed, and is never acted on again
// once finished. Objects the agent cannot carry out (the pod is missing, unbound, replaced, in
// the wrong state, names GPUs the node does not have) end Failed with a message that says what
// is wrong. Objects for pods on nodes other agents serve are left to them.
//
// Checkpoint writes an image of a suspended pod into a folder of its own under the agent's
// --checkpoint-dir (ImageDir), reads it back, verifies every file against metadata.json and
// reports the folder in status.imageLocation and what it holds (digest, GPU model, driver) in
// status.image. Restore confirms the restore of a pod created with kybernate.io/restore-from
// and puts its GPU memory onto spec.targetGPUs.
package controller

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	listers "github.com/kybernate/kybernate/apis/kybernate/client/listers/kybernate/v1alpha1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/engine"
)

// Reasons of the GPUCheckpoint conditions.
const (
	ReasonSucceeded = "Succeeded"
	ReasonInvalid   = "Invalid"
	ReasonRolled    = "RolledBack"
	ReasonNotRolled = "NotRolledBack"
)

// Config configures the Controller.
type Config struct {
	// LockTimeout is the lock timeout of suspends; 0 is the engine's.
	LockTimeout time.Duration
}

// Controller reconciles GPUCheckpoints.
type Controller struct {
	cfg   Config
	kube  kubernetes.Interface
	kyb   versioned.Interface
	ckpts listers.GPUCheckpointLister
	pods  corelisters.PodLister
	op    *Operator
	clock clock.PassiveClock
	queue workqueue.TypedRateLimitingInterface[string]

	mu sync.Mutex
	// finished holds the final status of the objects this agent finished, by UID, until the
	// cache shows them finished: a failed status write is retried without doing the action
	// again, and a cache that lags behind the agent's own writes does not make it act twice.
	finished map[types.UID]*result
}

type result struct {
	status  kv1.GPUCheckpointStatus
	written bool
}

// New returns a Controller. pods may be a lister of the served nodes' pods only: pods it does
// not have are looked up in the API.
func New(cfg Config, kube kubernetes.Interface, kyb versioned.Interface, ckpts listers.GPUCheckpointLister, pods corelisters.PodLister, op *Operator, clk clock.WithTicker) *Controller {
	return &Controller{
		cfg:   cfg,
		kube:  kube,
		kyb:   kyb,
		ckpts: ckpts,
		pods:  pods,
		op:    op,
		clock: clk,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "kybernate_gpucheckpoint", Clock: clk}),
		finished: map[types.UID]*result{},
	}
}

// EventHandler queues GPUCheckpoints that are added or change.
func (c *Controller) EventHandler() cache.ResourceEventHandler {
	add := func(obj interface{}) {
		if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			c.queue.Add(key)
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    add,
		UpdateFunc: func(_, obj interface{}) { add(obj) },
		DeleteFunc: func(obj interface{}) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if ck, ok := obj.(*kv1.GPUCheckpoint); ok {
				c.Forget(ck.UID)
			}
		},
	}
}

// RequeueUnfinished queues every GPUCheckpoint that is not finished: a node the agent has
// just begun to serve (a simulated node appears after the agent started) may have objects
// that were left alone as another agent's.
func (c *Controller) RequeueUnfinished() {
	list, err := c.ckpts.List(labels.Everything())
	if err != nil {
		return
	}
	for _, ck := range list {
		if ck.Status.Phase != kv1.PhaseSucceeded && ck.Status.Phase != kv1.PhaseFailed {
			c.queue.Add(ck.Namespace + "/" + ck.Name)
		}
	}
}

// Run processes the queue with workers goroutines until ctx ends. Each worker carries out one
// action at a time, so workers is how many pods are suspended or resumed in parallel.
func (c *Controller) Run(ctx context.Context, workers int) {
	defer c.queue.ShutDown()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			wait.UntilWithContext(ctx, func(ctx context.Context) {
				for c.next(ctx) {
				}
			}, time.Second)
		})
	}
	<-ctx.Done()
	c.queue.ShutDown()
	wg.Wait()
}

func (c *Controller) next(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	logger := klog.FromContext(ctx).WithValues("gpuCheckpoint", key)
	if err := c.Reconcile(klog.NewContext(ctx, logger), key); err != nil {
		logger.Error(err, "Reconciling GPUCheckpoint failed; retrying")
		c.queue.AddRateLimited(key)
		return true
	}
	c.queue.Forget(key)
	return true
}

// Reconcile carries out the GPUCheckpoint named key (namespace/name), if it is for a pod on a
// node the agent serves and not finished. Errors mean: try again later.
func (c *Controller) Reconcile(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil // not ours to retry
	}
	ck, err := c.ckpts.GPUCheckpoints(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	} else if err != nil {
		return fmt.Errorf("getting gpucheckpoint from cache: %w", err)
	}
	if done, err := c.finishedAlready(ctx, ck); done {
		return err
	}
	pod, err := c.admit(ctx, ck)
	if pod == nil {
		return err
	}
	if ck.Status.Phase != kv1.PhaseInProgress {
		upd := ck.DeepCopy()
		now := metav1.NewTime(c.clock.Now())
		upd.Status.Phase, upd.Status.NodeName, upd.Status.StartTime, upd.Status.ObservedGeneration = kv1.PhaseInProgress, pod.Spec.NodeName, &now, ck.Generation
		if ck, err = c.kyb.KybernateV1alpha1().GPUCheckpoints(ns).UpdateStatus(ctx, upd, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("marking gpucheckpoint in progress: %w", err)
		}
	}
	klog.FromContext(ctx).V(2).Info("Carrying out GPUCheckpoint", "action", ck.Spec.Action, "pod", klog.KObj(pod), "node", pod.Spec.NodeName, "reason", ck.Spec.Reason)

	res, img, err := c.carryOut(ctx, ck, pod)
	if done, err := c.failed(ctx, ck, pod, err); done {
		return err
	}
	if ck.Spec.Action == kv1.ActionSuspend {
		c.op.sleptShallow(pod, ck.Spec.Reason)
	}
	return c.writeFinal(ctx, ck, c.succeeded(ck, pod, res, img, err))
}

// finishedAlready reports whether ck needs nothing more: it has ended, or the agent has
// ended it and (done, the returned error) writes that again until the write is seen.
func (c *Controller) finishedAlready(ctx context.Context, ck *kv1.GPUCheckpoint) (bool, error) {
	c.mu.Lock()
	if ck.Status.Phase == kv1.PhaseSucceeded || ck.Status.Phase == kv1.PhaseFailed {
		delete(c.finished, ck.UID)
		c.mu.Unlock()
		return true, nil
	}
	r, done := c.finished[ck.UID]
	c.mu.Unlock()
	if !done || r.written {
		return done, nil // written: the cache has not caught up with the agent's write
	}
	return true, c.writeFinal(ctx, ck, r.status)
}

// admit returns the pod ck acts on when this agent carries ck out. Otherwise it returns nil,
// after failing ck for an invalid request (with the error of that write).
func (c *Controller) admit(ctx context.Context, ck *kv1.GPUCheckpoint) (*v1.Pod, error) {
	ns := ck.Namespace
	if n := ck.Status.NodeName; n != "" {
		if _, ours := c.op.engines.Engine(n); !ours && !c.op.freezes(n) {
			return nil, nil // another agent has taken it on
		}
	}
	pod, err := c.pod(ctx, ns, ck.Spec.PodName)
	if err != nil {
		return nil, err
	}
	if pod == nil {
		return nil, c.fail(ctx, ck, nil, ReasonInvalid, fmt.Sprintf("pod %s/%s does not exist", ns, ck.Spec.PodName))
	}
	if pod.Spec.NodeName == "" {
		return nil, c.fail(ctx, ck, nil, ReasonInvalid, fmt.Sprintf("pod %s/%s is not bound to a node", ns, pod.Name))
	}
	if !c.op.serves(pod, pod.Spec.NodeName) {
		if why, ok := c.op.driverUnavailable(pod); ok {
			return nil, c.failNoDriver(ctx, ck, pod, why)
		}
		if ck.Status.NodeName != "" {
			if _, mine := c.op.engines.Engine(ck.Status.NodeName); mine {
				return nil, c.fail(ctx, ck, nil, ReasonInvalid, fmt.Sprintf("pod %s/%s is on node %s, not on node %s where this action started", ns, pod.Name, pod.Spec.NodeName, ck.Status.NodeName))
			}
		}
		klog.FromContext(ctx).V(5).Info("Pod is on a node another agent serves", "node", pod.Spec.NodeName)
		return nil, nil
	}
	if ck.Spec.PodUID != "" && types.UID(ck.Spec.PodUID) != pod.UID {
		return nil, c.fail(ctx, ck, pod, ReasonInvalid, fmt.Sprintf("pod %s/%s has UID %s, but this GPUCheckpoint is for UID %s: the pod was replaced", ns, pod.Name, pod.UID, ck.Spec.PodUID))
	}
	switch ck.Spec.Action {
	case kv1.ActionSuspend, kv1.ActionResume:
	case kv1.ActionCheckpoint:
		if c.op.imageRoot == "" {
			return nil, c.fail(ctx, ck, pod, ReasonInvalid, "this agent has no --checkpoint-dir: it writes no checkpoint images")
		}
	case kv1.ActionRestore:
		if ck.Spec.Image == "" {
			return nil, c.fail(ctx, ck, pod, ReasonInvalid, "action Restore needs spec.image")
		}
	default:
		return nil, c.fail(ctx, ck, pod, ReasonInvalid, fmt.Sprintf("unknown action %q: want Suspend, Resume, Checkpoint or Restore", ck.Spec.Action))
	}
	return pod, nil
}

// carryOut runs ck's action on pod; img is the image a Checkpoint wrote.
func (c *Controller) carryOut(ctx context.Context, ck *kv1.GPUCheckpoint, pod *v1.Pod) (res engine.Result, img *ImageResult, err error) {
	switch ck.Spec.Action {
	case kv1.ActionSuspend:
		res, err = c.op.Suspend(ctx, pod, c.cfg.LockTimeout)
	case kv1.ActionResume:
		res, err = c.op.Resume(ctx, pod, ck.Spec.TargetGPUs)
	case kv1.ActionCheckpoint:
		var r ImageResult
		r, err = c.op.Checkpoint(ctx, pod, ImageDir(c.op.imageRoot, ck))
		img, res = &r, engine.Result{Bytes: r.Image.VRAMBytes, Steps: r.Steps}
	case kv1.ActionRestore:
		res, err = c.op.Restore(ctx, pod, ck.Spec.Image, ck.Spec.TargetGPUs)
	}
	return res, img, err
}

// failed reports whether err ends or defers ck (then with the error to return): failed with
// its cause, or retried later. nil and ErrNotRecorded are not failures.
func (c *Controller) failed(ctx context.Context, ck *kv1.GPUCheckpoint, pod *v1.Pod, err error) (bool, error) {
	var inv *InvalidError
	var opErr *engine.Error
	var imgErr *ImageError
	switch {
	case err == nil || errors.Is(err, ErrNotRecorded):
		return false, nil
	case errors.As(err, &inv):
		return true, c.fail(ctx, ck, pod, ReasonInvalid, inv.Msg)
	case errors.As(err, &imgErr):
		return true, c.fail(ctx, ck, pod, imgErr.Cause, err.Error(), &imgErr.RolledBack)
	case errors.As(err, &opErr) && opErr.Cause == engine.CauseBusy:
		return true, err // another action on the pod is running: later
	case errors.As(err, &opErr) && opErr.Cause.Attempted():
		return true, c.fail(ctx, ck, pod, string(opErr.Cause), err.Error(), &opErr.RolledBack)
	case errors.As(err, &opErr):
		return true, c.fail(ctx, ck, pod, string(opErr.Cause), err.Error())
	default:
		return true, err // the API, before anything was done: try again
	}
}

// succeeded is ck's final status after its action moved res (a failure to record it on the
// pod, notRecorded, is in the message but does not undo it).
func (c *Controller) succeeded(ck *kv1.GPUCheckpoint, pod *v1.Pod, res engine.Result, img *ImageResult, notRecorded error) kv1.GPUCheckpointStatus {
	st := ck.Status.DeepCopy()
	st.Phase = kv1.PhaseSucceeded
	st.BytesMoved = res.Bytes
	st.Steps = steps(res.Steps)
	st.GPUs = nil
	for _, g := range res.GPUs {
		st.GPUs = append(st.GPUs, g.String())
	}
	st.Footprint = FootprintStatus(res.Parked)
	st.Storage = res.Storage
	if img != nil {
		st.ImageLocation = ImageDir(c.op.imageRoot, ck)
		st.Image = img.Image.DeepCopy()
	}
	now := metav1.NewTime(c.clock.Now())
	st.CompletionTime = &now
	st.Message = fmt.Sprintf("%s of pod %s/%s moved %s in %s", ck.Spec.Action, ck.Namespace, pod.Name, quantity(res.Bytes), describe(res.Steps))
	if notRecorded != nil {
		st.Message += "; " + notRecorded.Error()
	}
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: kv1.CheckpointComplete, Status: metav1.ConditionTrue, Reason: ReasonSucceeded,
		Message: st.Message, ObservedGeneration: ck.Generation, LastTransitionTime: now})
	return *st
}

// pod returns the pod, nil when it does not exist. The cache (the served nodes' pods) says
// whether the pod is one of ours; what the action works from is read from the API, because
// the cache may lag behind the agent's own writes (a Resume right after a Suspend).
func (c *Controller) pod(ctx context.Context, ns, name string) (*v1.Pod, error) {
	cached, err := c.pods.Pods(ns).Get(name)
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("getting pod from cache: %w", err)
	}
	if cached != nil && cached.Spec.NodeName != "" {
		if _, ours := c.op.engines.Engine(cached.Spec.NodeName); !ours {
			return cached, nil // another agent's: no need to ask the API
		}
	}
	pod, err := c.kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("getting pod %s/%s: %w", ns, name, err)
	}
	return pod, nil
}

// fail ends the object Failed. rolled, when known, says whether the pod is back in the state it
// had before.
func (c *Controller) fail(ctx context.Context, ck *kv1.GPUCheckpoint, pod *v1.Pod, reason, msg string, rolled ...*bool) error {
	st := ck.Status.DeepCopy()
	now := metav1.NewTime(c.clock.Now())
	st.Phase, st.Message, st.CompletionTime, st.ObservedGeneration = kv1.PhaseFailed, msg, &now, ck.Generation
	if pod != nil && st.NodeName == "" {
		st.NodeName = pod.Spec.NodeName
	}
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: kv1.CheckpointComplete, Status: metav1.ConditionFalse, Reason: reason,
		Message: msg, ObservedGeneration: ck.Generation, LastTransitionTime: now})
	if len(rolled) > 0 && rolled[0] != nil {
		c := metav1.Condition{Type: kv1.CheckpointRolledBack, Status: metav1.ConditionTrue, Reason: ReasonRolled,
			Message: "the pod is back in the state it had before", ObservedGeneration: ck.Generation, LastTransitionTime: now}
		if !*rolled[0] {
			c.Status, c.Reason, c.Message = metav1.ConditionFalse, ReasonNotRolled, "undoing the failed action failed too: the pod's GPU state needs a look"
		}
		meta.SetStatusCondition(&st.Conditions, c)
	}
	klog.FromContext(ctx).Info("GPUCheckpoint failed", "action", ck.Spec.Action, "pod", klog.KRef(ck.Namespace, ck.Spec.PodName), "reason", reason, "message", msg)
	return c.writeFinal(ctx, ck, *st)
}

func (c *Controller) writeFinal(ctx context.Context, ck *kv1.GPUCheckpoint, st kv1.GPUCheckpointStatus) error {
	upd := ck.DeepCopy()
	upd.Status = st
	_, err := c.kyb.KybernateV1alpha1().GPUCheckpoints(ck.Namespace).UpdateStatus(ctx, upd, metav1.UpdateOptions{})
	c.mu.Lock()
	c.finished[ck.UID] = &result{status: st, written: err == nil}
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("writing gpucheckpoint status %s: %w", st.Phase, err)
	}
	return nil
}

// Forget drops what the controller remembers of a deleted object.
func (c *Controller) Forget(uid types.UID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.finished, uid)
}

func steps(s []engine.Step) []kv1.StepTiming {
	out := make([]kv1.StepTiming, len(s))
	for i := range s {
		out[i] = kv1.StepTiming{Name: s[i].Name, Duration: metav1.Duration{Duration: s[i].Duration}, Bytes: s[i].Bytes}
	}
	return out
}

// Operator returns the controller's Operator, for other front ends (the gRPC API) to share.
func (c *Controller) Operator() *Operator { return c.op }
