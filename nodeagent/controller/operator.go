package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/podmap"
)

// Event reasons on pods.
const (
	EventSuspending    = "Suspending"
	EventSuspended     = "Suspended"
	EventSuspendFailed = "SuspendFailed"
	EventResuming      = "Resuming"
	EventResumed       = "Resumed"
	EventResumeFailed  = "ResumeFailed"
	// EventResumeDeferred: the restore guard refused the resume because a target GPU lacks
	// free memory; the pod stays suspended and nothing was tried.
	EventResumeDeferred = "ResumeDeferred"
	// EventGPUStateLost: the driver refused a restore for lack of memory and destroyed the
	// pod's GPU state; the pod cannot run on.
	EventGPUStateLost = "GPUStateLost"
)

// Reasons of the pod condition kybernate.io/GPUResident.
const (
	ReasonSuspended = "Suspended"
	ReasonResumed   = "Resumed"
)

// Engines gives the engine of each node the agent serves.
type Engines interface {
	Engine(node string) (*engine.Engine, bool)
}

// EngineMap is Engines over a fixed map, for a single node and tests.
type EngineMap map[string]*engine.Engine

// Engine returns the engine of node.
func (m EngineMap) Engine(node string) (*engine.Engine, bool) {
	e, ok := m[node]
	return e, ok
}

// InvalidError is a request that cannot be carried out as asked: the pod, its state or the
// GPUs named are not what the operation needs. Nothing was done.
type InvalidError struct {
	Msg string
}

func (e *InvalidError) Error() string { return e.Msg }

func invalid(format string, args ...any) error {
	return &InvalidError{Msg: fmt.Sprintf(format, args...)}
}

// ErrNotServed is returned for pods on nodes this agent does not serve.
var ErrNotServed = errors.New("pod is not on a node this agent serves")

// ErrNotRecorded is wrapped when an operation succeeded but writing its outcome onto the pod
// (annotation, condition) failed.
var ErrNotRecorded = errors.New("recording the outcome on the pod failed")

// Operator suspends and resumes pods with the bookkeeping around the engine: the pod's
// kybernate.io/state annotation (Suspending, Suspended, Resuming, Running) and
// kybernate.io/gpus after a move, its kybernate.io/GPUResident condition, an Event for every
// transition and failure, and a nudge to the GPUNode status.
type Operator struct {
	kube     kubernetes.Interface
	engines  Engines
	recorder record.EventRecorder
	clock    clock.PassiveClock
	// changed is told the node whose GPUs changed.
	changed func(node string)
	// images are the nodes' checkpoint images, written under imageRoot; nil without.
	images    ImageStores
	imageRoot string
	// tiers keep suspended pods' memory below host memory; nil without a tier policy.
	tiers Tiers
	// freezers suspend pods without GPUs (freeze.go); nil without.
	freezers Freezers
	// noDriver are this agent's nodes without a usable CUDA driver (nodriver.go).
	noDriver driverProblems
}

// NewOperator returns an Operator. changed may be nil.
func NewOperator(kube kubernetes.Interface, engines Engines, recorder record.EventRecorder, clk clock.PassiveClock, changed func(node string)) *Operator {
	if changed == nil {
		changed = func(string) {}
	}
	return &Operator{kube: kube, engines: engines, recorder: recorder, clock: clk, changed: changed}
}

func ref(pod *v1.Pod) podmap.PodRef {
	return podmap.PodRef{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID}
}

// prepare checks what every operation needs: a running pod on a served node whose
// kybernate.io/gpus are GPUs of the node. It returns the node's engine and the pod's GPUs.
func (o *Operator) prepare(pod *v1.Pod, allowed ...kv1.PodGPUState) (*engine.Engine, []cuda.UUID, error) {
	if pod.Spec.NodeName == "" {
		return nil, nil, invalid("pod %s/%s is not bound to a node", pod.Namespace, pod.Name)
	}
	e, ok := o.engines.Engine(pod.Spec.NodeName)
	if !ok {
		return nil, nil, fmt.Errorf("pod %s/%s on node %s: %w", pod.Namespace, pod.Name, pod.Spec.NodeName, ErrNotServed)
	}
	if pod.DeletionTimestamp != nil || pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed {
		return nil, nil, invalid("pod %s/%s is finished or being deleted (phase %s)", pod.Namespace, pod.Name, pod.Status.Phase)
	}
	if s := gpupod.StateOf(pod); !slices.Contains(allowed, s) {
		return nil, nil, invalid("pod %s/%s is %s (annotation %s); this needs a pod that is %s", pod.Namespace, pod.Name, s, kv1.AnnotationState, joinStates(allowed))
	}
	gpus, err := podGPUs(pod, e)
	if err != nil {
		return nil, nil, err
	}
	return e, gpus, nil
}

func joinStates(s []kv1.PodGPUState) string {
	out := make([]string, len(s))
	for i := range s {
		out[i] = string(s[i])
	}
	return strings.Join(out, " or ")
}

// podGPUs parses the pod's kybernate.io/gpus and checks that they are GPUs of the node.
func podGPUs(pod *v1.Pod, e *engine.Engine) ([]cuda.UUID, error) {
	list, ok, err := gpupod.PodGPUs(pod)
	if err != nil {
		return nil, invalid("pod %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	if !ok {
		return nil, invalid("pod %s/%s has no %s annotation: it was not placed on GPUs by kybernate-scheduler", pod.Namespace, pod.Name, kv1.AnnotationGPUs)
	}
	all, err := e.GPUs()
	if err != nil {
		return nil, fmt.Errorf("listing the gpus of node %s: %w", pod.Spec.NodeName, err)
	}
	return parseGPUs(list, all, fmt.Sprintf("annotation %s of pod %s/%s", kv1.AnnotationGPUs, pod.Namespace, pod.Name), pod.Spec.NodeName)
}

func parseGPUs(list []string, all []cuda.UUID, what, node string) ([]cuda.UUID, error) {
	out := make([]cuda.UUID, 0, len(list))
	for _, s := range list {
		u, err := cuda.ParseUUID(strings.TrimSpace(s))
		if err != nil {
			return nil, invalid("%s: %v", what, err)
		}
		if !slices.Contains(all, u) {
			return nil, invalid("%s names gpu %s, which is not a gpu of node %s (it has %s)", what, u, node, uuidList(all))
		}
		if slices.Contains(out, u) {
			return nil, invalid("%s names gpu %s twice", what, u)
		}
		out = append(out, u)
	}
	return out, nil
}

func uuidList(u []cuda.UUID) string {
	s := make([]string, len(u))
	for i := range u {
		s[i] = u[i].String()
	}
	return strings.Join(s, ", ")
}

// Suspend moves the pod's GPU memory to host memory. lockTimeout 0 is the engine's default.
func (o *Operator) Suspend(ctx context.Context, pod *v1.Pod, lockTimeout time.Duration) (engine.Result, error) {
	if f, ok := o.freezer(pod); ok {
		return o.suspendFrozen(ctx, pod, f)
	}
	e, _, err := o.prepare(pod, kv1.PodRunning, kv1.PodSuspending)
	if err != nil {
		return engine.Result{}, err
	}
	logger := klog.FromContext(ctx).WithValues("pod", klog.KObj(pod), "node", pod.Spec.NodeName)
	// Two suspends of one pod (a time-slice turn and a preemption) must not write over each
	// other: while one runs the other waits, and once the pod is suspended the other only
	// records it. Marking it Suspending again would tell the scheduler that memory which is
	// free is held.
	if e.PodBusy(pod.UID) {
		return engine.Result{}, &engine.Error{Op: "suspend", Pod: ref(pod).String(), Cause: engine.CauseBusy, Err: errors.New("another operation on the pod is in progress")}
	}
	if e.IsSuspended(pod.UID) {
		if gpupod.StateOf(pod) == kv1.PodSuspending {
			if err := o.setState(ctx, pod, kv1.PodSuspending, kv1.PodSuspended, ""); err != nil {
				return engine.Result{}, err
			}
		}
		logger.V(2).Info("Pod is suspended already; nothing to move")
		return engine.Result{}, nil
	}
	if err := o.setState(ctx, pod, gpupod.StateOf(pod), kv1.PodSuspending, ""); err != nil {
		return engine.Result{}, err
	}
	o.makeRoom(ctx, e, pod)
	o.recorder.Eventf(pod, v1.EventTypeNormal, EventSuspending, "Suspending: moving GPU memory to host memory")
	res, opErr := e.Suspend(ctx, ref(pod), lockTimeout)
	o.changed(pod.Spec.NodeName)
	if opErr != nil {
		// Back to Running, also when the rollback failed: the scheduler then keeps counting
		// the pod's memory, which is the safe mistake. Unless the engine holds it suspended.
		back := kv1.PodRunning
		if e.IsSuspended(pod.UID) {
			back = kv1.PodSuspended
		}
		err := o.setState(ctx, pod, kv1.PodSuspending, back, "")
		o.recorder.Eventf(pod, v1.EventTypeWarning, EventSuspendFailed, "Suspend failed (%s): %v", engine.CauseOf(opErr), opErr)
		logger.Info("Suspend failed", "cause", engine.CauseOf(opErr), "rolledBack", engine.RolledBack(opErr), "err", opErr)
		return engine.Result{}, errors.Join(opErr, err)
	}
	msg := fmt.Sprintf("Suspended: moved %s of GPU memory to host memory in %s", quantity(res.Bytes), describe(res.Steps))
	if err := errors.Join(o.setState(ctx, pod, kv1.PodSuspending, kv1.PodSuspended, ""), o.setResident(ctx, pod, false, msg)); err != nil {
		return res, fmt.Errorf("pod suspended, but %w: %w", ErrNotRecorded, err)
	}
	o.recorder.Event(pod, v1.EventTypeNormal, EventSuspended, msg)
	return res, nil
}

// Resume puts the pod's GPU memory back, onto targets (UUIDs, one per GPU of the pod) when
// given. When the pod moves, its kybernate.io/gpus annotation is updated.
func (o *Operator) Resume(ctx context.Context, pod *v1.Pod, targets []string) (engine.Result, error) {
	if f, ok := o.freezer(pod); ok {
		if tier, spilled := o.tierOf(pod); spilled {
			// Its container was spilled (and stopped): it comes back from the tier, not thawed.
			if len(targets) > 0 {
				return engine.Result{}, invalid("pod %s/%s has no GPUs: a resume of it takes no target GPUs", pod.Namespace, pod.Name)
			}
			return o.resumeFromTier(ctx, pod, tier, nil, nil)
		}
		return o.resumeFrozen(ctx, pod, f, targets)
	}
	e, from, err := o.prepare(pod, kv1.PodSuspended, kv1.PodResuming)
	if err != nil {
		return engine.Result{}, err
	}
	var to []cuda.UUID
	if len(targets) > 0 {
		all, err := e.GPUs()
		if err != nil {
			return engine.Result{}, fmt.Errorf("listing the gpus of node %s: %w", pod.Spec.NodeName, err)
		}
		if to, err = parseGPUs(targets, all, "target gpus", pod.Spec.NodeName); err != nil {
			return engine.Result{}, err
		}
		if len(to) != len(from) {
			return engine.Result{}, invalid("%d target gpus for pod %s/%s, which has %d (%s): want one per gpu of the pod, in its order",
				len(to), pod.Namespace, pod.Name, len(from), uuidList(from))
		}
	}
	if tier, ok := o.tierOf(pod); ok {
		return o.resumeFromTier(ctx, pod, tier, from, to)
	}
	logger := klog.FromContext(ctx).WithValues("pod", klog.KObj(pod), "node", pod.Spec.NodeName)
	if err := o.setState(ctx, pod, gpupod.StateOf(pod), kv1.PodResuming, ""); err != nil {
		return engine.Result{}, err
	}
	o.recorder.Eventf(pod, v1.EventTypeNormal, EventResuming, "Resuming: moving GPU memory back onto GPUs %s", uuidList(firstNonEmpty(to, from)))
	res, opErr := e.Resume(ctx, ref(pod), from, to)
	o.changed(pod.Spec.NodeName)
	if opErr != nil {
		back := kv1.PodSuspended
		if engine.CauseOf(opErr) == engine.CauseWrongState && !e.IsSuspended(pod.UID) {
			back = kv1.PodRunning // the engine says it is not suspended
		}
		err := o.setState(ctx, pod, kv1.PodResuming, back, "")
		o.resumeFailed(pod, opErr)
		logger.Info("Resume failed", "cause", engine.CauseOf(opErr), "rolledBack", engine.RolledBack(opErr), "err", opErr)
		return engine.Result{}, errors.Join(opErr, err)
	}
	gpus := ""
	if !slices.Equal(res.GPUs, from) {
		gpus = gpupod.FormatGPUs(strings.Split(uuidList(res.GPUs), ", "))
	}
	msg := fmt.Sprintf("Resumed: moved %s of GPU memory onto GPUs %s in %s", quantity(res.Bytes), uuidList(res.GPUs), describe(res.Steps))
	if err := errors.Join(o.setState(ctx, pod, kv1.PodResuming, kv1.PodRunning, gpus), o.setResident(ctx, pod, true, msg)); err != nil {
		return res, fmt.Errorf("pod resumed, but %w: %w", ErrNotRecorded, err)
	}
	o.recorder.Event(pod, v1.EventTypeNormal, EventResumed, msg)
	return res, nil
}

// resumeFailed records a failed resume on the pod: a guard refusal is a wait, not a failure.
func (o *Operator) resumeFailed(pod *v1.Pod, err error) {
	switch engine.CauseOf(err) {
	case engine.CauseInsufficientGPUMemory:
		o.recorder.Eventf(pod, v1.EventTypeWarning, EventResumeDeferred,
			"Resume deferred, the pod stays suspended: %v; it is resumed once the memory is free", errors.Unwrap(err))
	case engine.CauseGPUStateLost:
		o.recorder.Eventf(pod, v1.EventTypeWarning, EventGPUStateLost,
			"The GPU driver refused the restore for lack of GPU memory, which destroys a process's GPU state: the pod cannot run on; delete it so that its controller starts it again: %v", err)
	default:
		o.recorder.Eventf(pod, v1.EventTypeWarning, EventResumeFailed, "Resume failed (%s): %v", engine.CauseOf(err), err)
	}
}

func firstNonEmpty(a, b []cuda.UUID) []cuda.UUID {
	if len(a) > 0 {
		return a
	}
	return b
}

// setState moves the pod's kybernate.io/state from from to s (through the state machine, which
// refuses other transitions) and, when gpus is set, writes kybernate.io/gpus. The UID in the
// patch makes it fail on a new pod of the same name.
func (o *Operator) setState(ctx context.Context, pod *v1.Pod, from, s kv1.PodGPUState, gpus string) error {
	ann := map[string]string{}
	if err := gpupod.SetState(ann, from, s); err != nil {
		return fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	if gpus != "" {
		ann[kv1.AnnotationGPUs] = gpus
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"uid": pod.UID, "annotations": ann}})
	if err != nil {
		return fmt.Errorf("encoding pod patch: %w", err)
	}
	if _, err := o.kube.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("setting %s=%s on pod %s/%s: %w", kv1.AnnotationState, s, pod.Namespace, pod.Name, err)
	}
	return nil
}

// setResident writes the pod's kybernate.io/GPUResident condition.
func (o *Operator) setResident(ctx context.Context, pod *v1.Pod, resident bool, msg string) error {
	c := v1.PodCondition{
		Type:               kv1.ConditionGPUResident,
		Status:             v1.ConditionTrue,
		Reason:             ReasonResumed,
		Message:            msg,
		LastTransitionTime: metav1.NewTime(o.clock.Now()),
	}
	if !resident {
		c.Status, c.Reason = v1.ConditionFalse, ReasonSuspended
	}
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"uid": pod.UID},
		"status":   map[string]any{"conditions": []v1.PodCondition{c}},
	})
	if err != nil {
		return fmt.Errorf("encoding pod status patch: %w", err)
	}
	if _, err := o.kube.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
		return fmt.Errorf("setting condition %s=%s on pod %s/%s: %w", kv1.ConditionGPUResident, c.Status, pod.Namespace, pod.Name, err)
	}
	return nil
}

func quantity(n int64) string { return resource.NewQuantity(n, resource.BinarySI).String() }

// describe renders steps as "1.2s (Lock 1ms, Checkpoint 1.2s)".
func describe(steps []engine.Step) string {
	var total time.Duration
	parts := make([]string, len(steps))
	for i, s := range steps {
		total += s.Duration
		parts[i] = fmt.Sprintf("%s %v", s.Name, s.Duration.Round(time.Millisecond))
	}
	return fmt.Sprintf("%v (%s)", total.Round(time.Millisecond), strings.Join(parts, ", "))
}
