package controller

import (
	"context"
	"fmt"
	"strings"
	"sync"

	v1 "k8s.io/api/core/v1"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
)

// An agent whose CUDA driver is not usable (no driver, cuInit failed) still is its node's
// agent: it reports the GPU inventory, freezes pods without GPUs, and fails every action on a
// pod with GPUs at once with the driver's error. Left alone, such an action would wait for an
// agent that does not exist, and whoever waits for it (the activator holding requests, the
// scheduler waiting for room) would wait until its own timeout.

// ReasonDriverUnavailable: the node's agent has no usable CUDA driver, so it cannot move GPU
// memory; nothing was done.
const ReasonDriverUnavailable = "DriverUnavailable"

// driverProblems are the nodes this agent serves whose CUDA driver is not usable, and why.
type driverProblems struct {
	mu sync.RWMutex
	m  map[string]string
}

// SetDriverUnavailable tells the Operator that node is this agent's, but its CUDA driver is
// not usable (why): the GPUCheckpoints of pods with GPUs there fail at once with why.
func (o *Operator) SetDriverUnavailable(node, why string) {
	o.noDriver.mu.Lock()
	defer o.noDriver.mu.Unlock()
	if o.noDriver.m == nil {
		o.noDriver.m = map[string]string{}
	}
	o.noDriver.m[node] = why
}

// driverUnavailable reports why this agent cannot act on a pod with GPUs on the pod's node,
// when that node is this agent's but has no GPU engine. Pods without GPUs are frozen instead.
func (o *Operator) driverUnavailable(pod *v1.Pod) (string, bool) {
	if gpupod.WithoutGPUs(pod) {
		return "", false
	}
	if _, ok := o.engines.Engine(pod.Spec.NodeName); ok {
		return "", false
	}
	o.noDriver.mu.RLock()
	defer o.noDriver.mu.RUnlock()
	why, ok := o.noDriver.m[pod.Spec.NodeName]
	return why, ok
}

// failNoDriver fails ck, an action on a pod with GPUs on a node whose driver is not usable,
// and tells the pod.
func (c *Controller) failNoDriver(ctx context.Context, ck *kv1.GPUCheckpoint, pod *v1.Pod, why string) error {
	msg := fmt.Sprintf("the agent of node %s cannot %s pods with GPUs: its CUDA driver is not usable (%s)",
		pod.Spec.NodeName, strings.ToLower(string(ck.Spec.Action)), why)
	c.op.recorder.Eventf(pod, v1.EventTypeWarning, failedEvent(ck.Spec.Action), "%s failed (%s, GPUCheckpoint %s): %s",
		ck.Spec.Action, ReasonDriverUnavailable, ck.Name, msg)
	return c.fail(ctx, ck, pod, ReasonDriverUnavailable, msg)
}

// failedEvent is the reason of the Event of a failed action.
func failedEvent(a kv1.CheckpointAction) string {
	switch a {
	case kv1.ActionSuspend:
		return EventSuspendFailed
	case kv1.ActionResume:
		return EventResumeFailed
	}
	return string(a) + "Failed"
}
