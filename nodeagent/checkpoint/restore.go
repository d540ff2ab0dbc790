package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/image"
	"github.com/kybernate/kybernate/nodeagent/podmap"
)

// RestoreRequest is the GPU half of a restore from an image, after the shim's runc restore.
type RestoreRequest struct {
	// ImageDir is the image the container was restored from.
	ImageDir string
	// ContainerID is the restored container in containerd.
	ContainerID string
	// Pod is the restored container's pod; it keys the engine's one-operation-per-pod rule.
	Pod image.Pod
	// TargetGPUs are the GPUs of this node the memory goes to, one per GPU of the image in
	// order (the restored container's kybernate.io/gpus); empty: the image's own GPUs.
	TargetGPUs []string
}

// RestoreResult is what a restore did.
type RestoreResult struct {
	Metadata image.Metadata
	// Result is the engine's: bytes, steps and the GPUs the memory is on; empty for an image
	// without GPUs.
	Result engine.Result
}

// Restore cause besides the checkpoint ones.
const (
	// CauseImage: the image is incomplete or corrupt.
	CauseImage Cause = "ImageInvalid"
)

// StepPids is the step that lists the restored container's processes.
const StepPids = "Pids"

// Restore puts the GPU memory of a container restored from an image onto GPUs of this node:
// it checks the image (metadata.json and every file present at its size: the checksums were
// verified before the runc restore read the files, and nothing but the metadata is used
// here), lists the container's processes through containerd, and has the
// engine restore the checkpointed CUDA processes among them onto req.TargetGPUs (pairs over
// every GPU of the node) and unlock them. An image without GPUs needs nothing: it is checked
// and the call succeeds.
//
// Nothing is rolled back here and nothing is deleted: a restored process whose memory cannot
// go back cannot run, and the caller (the shim, inside the container's start) stops the
// container; the image stays as it was, for another attempt. Errors are *Error with Restore
// set.
func (c *Checkpointer) Restore(ctx context.Context, req RestoreRequest) (RestoreResult, error) {
	logger := klog.FromContext(ctx).WithValues("image", req.ImageDir, "containerID", req.ContainerID)
	failed := func(cause Cause, format string, args ...any) error {
		return &Error{Cause: cause, Restore: true, Err: fmt.Errorf(format, args...)}
	}
	m, err := image.Check(req.ImageDir)
	if err != nil {
		if errors.Is(err, image.ErrMissing) {
			return RestoreResult{}, failed(CauseNotFound, "%w", err)
		}
		return RestoreResult{}, failed(CauseImage, "%w", err)
	}
	out := RestoreResult{Metadata: m}
	if len(m.GPUs) == 0 {
		return out, nil
	}
	if c.gpus == nil {
		return out, failed(CauseUnsupported, "image %s holds gpu memory (gpus %v), but the CUDA driver is not usable on this node", req.ImageDir, m.GPUs)
	}
	if req.ContainerID == "" {
		return out, failed(CauseInvalid, "container_id is required to restore an image with gpu memory")
	}
	from := make([]cuda.UUID, len(m.GPUs))
	for i, g := range m.GPUs {
		if from[i], err = cuda.ParseUUID(g); err != nil {
			return out, failed(CauseImage, "image %s: gpu %q in metadata.json: %w", req.ImageDir, g, err)
		}
	}
	to := from
	if len(req.TargetGPUs) > 0 {
		to = make([]cuda.UUID, 0, len(req.TargetGPUs))
		for _, g := range req.TargetGPUs {
			u, err := cuda.ParseUUID(strings.TrimSpace(g))
			if err != nil {
				return out, failed(CauseInvalid, "target gpu %q: %w", g, err)
			}
			to = append(to, u)
		}
		if len(to) != len(from) {
			return out, failed(CauseInvalid, "%d target gpus for an image of %d gpus (%v): want one per gpu of the image", len(to), len(from), m.GPUs)
		}
	}

	pctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	start := c.clock.Now()
	pids, err := c.runtime.Pids(pctx, req.ContainerID)
	if err != nil {
		return out, failed(causeOf(pctx, CauseNotFound), "listing the processes of restored container %s: %w", req.ContainerID, err)
	}
	pidsStep := engine.Step{Name: StepPids, Duration: c.clock.Since(start)}

	pod := podmap.PodRef{Namespace: req.Pod.Namespace, Name: req.Pod.Name, UID: types.UID(req.Pod.UID)}
	if pod.UID == "" {
		// Outside Kubernetes the container keys the one-operation rule.
		pod.UID = types.UID("container-" + req.ContainerID)
	}
	r, err := c.gpus.RestoreImage(ctx, pod, engine.ImageRestore{PIDs: pids, From: from, To: to, Bytes: m.VRAMBytes})
	if err != nil {
		return out, &Error{Cause: CauseGPU, Restore: true, Err: fmt.Errorf("putting the image's gpu memory onto gpus %v: %w", to, err)}
	}
	r.Steps = append([]engine.Step{pidsStep}, r.Steps...)
	out.Result = r
	logger.V(2).Info("Restored the GPU memory of a container from an image", "from", m.GPUs, "to", r.GPUs, "bytes", r.Bytes, "pids", pids)
	return out, nil
}
