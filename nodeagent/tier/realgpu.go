package tier

import (
	"context"
	"errors"
	"fmt"
	"slices"

	v1 "k8s.io/api/core/v1"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/nodeagent/engine"
)

// A real node's suspended pod with GPUs has its GPU memory parked in its processes' host
// memory: its container's CRIU image holds it, and its restore puts it back onto GPUs.

// checkpointContainer writes the pod's container into the disk tier and stops it. For a pod
// with GPUs it runs while the engine holds the pod, records its parked processes in e (what a
// restore needs free) and has the engine drop them once the container is stopped.
func (m *Manager) checkpointContainer(ctx context.Context, n Node, pod *v1.Pod, e *entry) (Spilled, error) {
	podRef := PodRef{Namespace: pod.Namespace, Name: pod.Name, UID: string(pod.UID)}
	if gpupod.WithoutGPUs(pod) {
		return n.Containers.SpillFrozen(ctx, podRef)
	}
	if n.Engine == nil {
		return Spilled{}, cfail(ContainerInvalid, "the pod has GPUs, but the CUDA driver is not usable on this node")
	}
	var out Spilled
	err := n.Engine.WithParked(ctx, ref(pod), func(parked []engine.Process) (bool, error) {
		var err error
		if out, err = n.Containers.Spill(ctx, podRef, kv1.TierDisk, 0); err != nil {
			return false, err
		}
		gpus, vram := parkedOnGPUs(parked)
		m.mu.Lock()
		e.parked, e.gpus, e.vram = parked, gpus, vram
		m.mu.Unlock()
		return true, nil
	})
	return out, err
}

// checkContainerTarget is the restore guard of a spilled container with GPU memory, before the
// gate opens: the shim restores its memory onto the GPUs of the pod's kybernate.io/gpus, so a
// resume onto other GPUs is refused (CauseInvalidTarget), and those GPUs must have what its
// processes had in use free (CauseInsufficientGPUMemory): a restore the driver refuses for
// lack of memory destroys the processes' GPU state. It returns the GPUs the memory goes to;
// none for a container without GPU memory.
func (m *Manager) checkContainerTarget(ctx context.Context, n Node, e *entry, pod *v1.Pod, to []cuda.UUID) ([]cuda.UUID, error) {
	if len(e.gpus) == 0 {
		return nil, nil
	}
	fail := func(cause engine.Cause, err error) ([]cuda.UUID, error) {
		return nil, &engine.Error{Op: "resume", Pod: pod.Namespace + "/" + pod.Name, Cause: cause, Err: err}
	}
	names, err := gpupod.ParseGPUs(pod.Annotations[kv1.AnnotationGPUs])
	if err != nil {
		return fail(engine.CauseInvalidTarget, fmt.Errorf("the pod's %s: %w", kv1.AnnotationGPUs, err))
	}
	own := make([]cuda.UUID, 0, len(names))
	for _, g := range names {
		u, err := cuda.ParseUUID(g)
		if err != nil {
			return fail(engine.CauseInvalidTarget, fmt.Errorf("the pod's %s: %w", kv1.AnnotationGPUs, err))
		}
		own = append(own, u)
	}
	if len(to) > 0 && !slices.Equal(to, own) {
		return fail(engine.CauseInvalidTarget, fmt.Errorf(
			"the container is spilled to %s; its restore puts its GPU memory onto the GPUs of its %s (%s), not onto %s", e.tier, kv1.AnnotationGPUs, uuidList(own), uuidList(to)))
	}
	if n.Engine == nil {
		return fail(engine.CauseUnsupported, errors.New("the CUDA driver is not usable on this node"))
	}
	if err := n.Engine.CheckRestore(ctx, e.pod, e.parked, e.gpus, own); err != nil {
		return nil, err
	}
	return own, nil
}
