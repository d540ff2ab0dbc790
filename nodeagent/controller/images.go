package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
	ckpt "github.com/kybernate/kybernate/nodeagent/checkpoint"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/image"
)

// Event reasons of checkpoints and restores on pods.
const (
	EventCheckpointing    = "Checkpointing"
	EventCheckpointed     = "Checkpointed"
	EventCheckpointFailed = "CheckpointFailed"
	EventRestoring        = "Restoring"
	EventRestored         = "Restored"
	EventRestoreFailed    = "RestoreFailed"
	// EventRestoreRefused: kybernate.io/restore-from names no image the pod may restore from
	// (outside the checkpoint folder, another namespace's, through a symbolic link).
	EventRestoreRefused = "RestoreRefused"
)

// ImageResult is what a checkpoint wrote.
type ImageResult struct {
	// Image describes the image, read back and verified.
	Image kv1.CheckpointImage
	Steps []engine.Step
}

// Images writes and restores the checkpoint images of the pods of one node.
type Images interface {
	// Checkpoint writes an image of the suspended pod into dir, which must not exist yet (its
	// parent does). The pod stays as it was, suspended: its process is gone only when the pod
	// is deleted, so that a failed restore elsewhere leaves it where it was. On failure
	// nothing is left in dir.
	Checkpoint(ctx context.Context, pod *v1.Pod, dir string) (ImageResult, error)
	// Restore puts the GPU memory of a pod whose container was restored from the image dir
	// onto gpus (UUIDs of the node's GPUs, one per GPU of the image).
	Restore(ctx context.Context, pod *v1.Pod, dir string, gpus []string) (engine.Result, error)
}

// ImageStores gives the Images of each node the agent serves.
type ImageStores interface {
	Images(node string) (Images, bool)
}

// ImageError is a checkpoint or restore that failed. RolledBack tells whether the pod is as it
// was before.
type ImageError struct {
	Cause      string
	RolledBack bool
	Err        error
}

func (e *ImageError) Error() string { return e.Err.Error() }
func (e *ImageError) Unwrap() error { return e.Err }

// Describe verifies the image in dir (every file against metadata.json) and describes it for
// the GPUCheckpoint status. model is the model of the GPUs the image's memory came from.
func Describe(dir, model string) (kv1.CheckpointImage, image.Metadata, error) {
	m, err := image.Verify(dir)
	if err != nil {
		return kv1.CheckpointImage{}, image.Metadata{}, err
	}
	data, err := os.ReadFile(filepath.Join(dir, image.MetadataFile))
	if err != nil {
		return kv1.CheckpointImage{}, image.Metadata{}, fmt.Errorf("image %s: %w", dir, err)
	}
	sum := sha256.Sum256(data)
	out := kv1.CheckpointImage{
		Digest:            "sha256:" + hex.EncodeToString(sum[:]),
		Files:             int32(len(m.Files)),
		VRAMBytes:         m.VRAMBytes,
		GPUModel:          model,
		DriverVersion:     m.DriverVersion,
		CUDADriverVersion: m.CUDADriverVersion,
	}
	for _, f := range m.Files {
		out.SizeBytes += f.Size
	}
	return out, m, nil
}

// ImageDir is where the agent writes the image of a GPUCheckpoint: a folder per namespace
// under root, named after the pod and the GPUCheckpoint's UID, so that no two checkpoints
// ever share one.
func ImageDir(root string, ck *kv1.GPUCheckpoint) string {
	return filepath.Join(root, ck.Namespace, ck.Spec.PodName+"-"+string(ck.UID))
}

// ContainerdImages are the images of a real node: CRIU images written through containerd by
// package checkpoint. Restores of containers are the shim's (kybernate.io/restore-from); what
// is left here is to confirm it and, for images with GPU memory, the GPU half, which package
// checkpoint does not have yet.
type ContainerdImages struct {
	Checkpointer *ckpt.Checkpointer
	// Model returns the model of a GPU of the node by UUID; nil or "" when unknown.
	Model func(ctx context.Context, uuid string) string
}

var _ Images = (*ContainerdImages)(nil)

// Checkpoint writes a CRIU image of the pod's only container and leaves the container running
// (suspended pods stay suspended).
func (c *ContainerdImages) Checkpoint(ctx context.Context, pod *v1.Pod, dir string) (ImageResult, error) {
	res, err := c.Checkpointer.Checkpoint(ctx, ckpt.Request{
		Pod:          image.Pod{Namespace: pod.Namespace, Name: pod.Name, UID: string(pod.UID)},
		ImageDir:     dir,
		LeaveRunning: true,
	})
	if err != nil {
		var ce *ckpt.Error
		rolled := errors.As(err, &ce) && ce.RolledBack
		return ImageResult{}, &ImageError{Cause: string(ckpt.CauseOf(err)), RolledBack: rolled, Err: err}
	}
	model := ""
	if c.Model != nil && len(res.Metadata.GPUs) > 0 {
		model = c.Model(ctx, res.Metadata.GPUs[0])
	}
	img, _, err := Describe(dir, model)
	if err != nil {
		return ImageResult{}, &ImageError{Cause: "ImageUnverified", RolledBack: true, Err: fmt.Errorf("image written, but reading it back failed: %w", err)}
	}
	return ImageResult{Image: img, Steps: res.Steps}, nil
}

// Restore confirms the restore of the pod's container from an image. On a real node the work
// is done by then: the shim restored the container (kybernate.io/restore-from) and, for an image
// with GPU memory, had this agent put the memory onto the pod's GPUs (the Restore RPC) before
// the container started. What is left is to check that the image is the verified one.
func (c *ContainerdImages) Restore(ctx context.Context, pod *v1.Pod, dir string, _ []string) (engine.Result, error) {
	m, err := image.Verify(dir)
	if err != nil {
		return engine.Result{}, &ImageError{Cause: "RestoreFailed", RolledBack: false, Err: err}
	}
	klog.FromContext(ctx).V(2).Info("Container restored from image", "pod", klog.KObj(pod), "image", dir, "gpus", m.GPUs, "bytes", m.VRAMBytes)
	return engine.Result{Bytes: m.VRAMBytes}, nil
}

// Checkpoint writes an image of a suspended pod into dir: the pod is Checkpointing while it
// runs, Checkpointed after (still on its node, suspended), Suspended again when it failed.
func (o *Operator) Checkpoint(ctx context.Context, pod *v1.Pod, dir string) (ImageResult, error) {
	if _, _, err := o.prepare(pod, kv1.PodSuspended, kv1.PodCheckpointing); err != nil {
		return ImageResult{}, err
	}
	imgs, ok := o.imageStore(pod.Spec.NodeName)
	if !ok {
		return ImageResult{}, invalid("node %s has no place for checkpoint images (the agent runs without --checkpoint-dir, or without containerd)", pod.Spec.NodeName)
	}
	logger := klog.FromContext(ctx).WithValues("pod", klog.KObj(pod), "node", pod.Spec.NodeName, "image", dir)
	nsDir, err := image.NamespaceDir(o.imageRoot, pod.Namespace)
	if err != nil {
		return ImageResult{}, &ImageError{Cause: string(ckpt.CauseImageDir), RolledBack: true, Err: err}
	}
	if filepath.Dir(dir) != nsDir {
		return ImageResult{}, invalid("image folder %s is not in the folder of namespace %s, %s", dir, pod.Namespace, nsDir)
	}
	if err := o.setState(ctx, pod, gpupod.StateOf(pod), kv1.PodCheckpointing, ""); err != nil {
		return ImageResult{}, err
	}
	var res ImageResult
	if tier, spilled := o.tierOf(pod); spilled {
		// Its processes are gone: the image is the one the tier holds.
		o.recorder.Eventf(pod, v1.EventTypeNormal, EventCheckpointing, "Checkpointing into %s from the pod's image in tier %s", dir, tier)
		res, err = o.tiers.Export(ctx, pod, dir)
	} else {
		o.recorder.Eventf(pod, v1.EventTypeNormal, EventCheckpointing, "Checkpointing into %s", dir)
		res, err = imgs.Checkpoint(ctx, pod, dir)
	}
	o.changed(pod.Spec.NodeName)
	if err != nil {
		serr := o.setState(ctx, pod, kv1.PodCheckpointing, kv1.PodSuspended, "")
		o.recorder.Eventf(pod, v1.EventTypeWarning, EventCheckpointFailed, "Checkpoint failed; the pod stays suspended on its node: %v", err)
		logger.Info("Checkpoint failed", "err", err)
		var ie *ImageError
		if !errors.As(err, &ie) {
			err = &ImageError{Cause: "CheckpointFailed", RolledBack: true, Err: err}
		}
		return ImageResult{}, errors.Join(err, serr)
	}
	msg := fmt.Sprintf("Checkpointed into %s: %d files, %s, %s of GPU memory, digest %s", dir, res.Image.Files,
		quantity(res.Image.SizeBytes), quantity(res.Image.VRAMBytes), res.Image.Digest)
	if err := o.setState(ctx, pod, kv1.PodCheckpointing, kv1.PodCheckpointed, ""); err != nil {
		return res, fmt.Errorf("pod checkpointed, but %w: %w", ErrNotRecorded, err)
	}
	o.recorder.Event(pod, v1.EventTypeNormal, EventCheckpointed, msg)
	return res, nil
}

// Restore puts the memory of a pod restored from image onto gpus (default: its
// kybernate.io/gpus). The pod must carry kybernate.io/restore-from=image and be Restoring;
// it is Running after.
func (o *Operator) Restore(ctx context.Context, pod *v1.Pod, dir string, gpus []string) (engine.Result, error) {
	if got := pod.Annotations[kv1.AnnotationRestoreFrom]; got != dir {
		return engine.Result{}, invalid("pod %s/%s has %s=%q, not the image %q this restore names", pod.Namespace, pod.Name, kv1.AnnotationRestoreFrom, got, dir)
	}
	if err := o.checkRestoreFrom(pod, dir); err != nil {
		return engine.Result{}, err
	}
	if _, _, err := o.prepare(pod, kv1.PodRestoring); err != nil {
		return engine.Result{}, err
	}
	if pod.Status.Phase != v1.PodRunning {
		return engine.Result{}, fmt.Errorf("pod %s/%s is %s: waiting for its container to be restored", pod.Namespace, pod.Name, pod.Status.Phase)
	}
	imgs, ok := o.imageStore(pod.Spec.NodeName)
	if !ok {
		return engine.Result{}, invalid("node %s cannot restore checkpoint images (the agent runs without --checkpoint-dir, or without containerd)", pod.Spec.NodeName)
	}
	if len(gpus) == 0 {
		gpus = gpupod.AssignedGPUs(pod)
	}
	logger := klog.FromContext(ctx).WithValues("pod", klog.KObj(pod), "node", pod.Spec.NodeName, "image", dir)
	o.recorder.Eventf(pod, v1.EventTypeNormal, EventRestoring, "Restoring from %s onto GPUs %s", dir, strings.Join(gpus, ","))
	res, err := imgs.Restore(ctx, pod, dir, gpus)
	o.changed(pod.Spec.NodeName)
	if err != nil {
		o.recorder.Eventf(pod, v1.EventTypeWarning, EventRestoreFailed, "Restore from %s failed; the image is kept: %v", dir, err)
		logger.Info("Restore failed", "err", err)
		var ie *ImageError
		if !errors.As(err, &ie) {
			err = &ImageError{Cause: "RestoreFailed", Err: err}
		}
		return engine.Result{}, err
	}
	msg := fmt.Sprintf("Restored from %s: %s of GPU memory onto GPUs %s in %s", dir, quantity(res.Bytes), strings.Join(gpus, ","), describe(res.Steps))
	if err := errors.Join(o.setState(ctx, pod, kv1.PodRestoring, kv1.PodRunning, ""), o.setResident(ctx, pod, true, msg)); err != nil {
		return res, fmt.Errorf("pod restored, but %w: %w", ErrNotRecorded, err)
	}
	o.recorder.Event(pod, v1.EventTypeNormal, EventRestored, msg)
	return res, nil
}

func (o *Operator) imageStore(node string) (Images, bool) {
	if o.images == nil {
		return nil, false
	}
	return o.images.Images(node)
}

// SetImages gives the Operator the nodes' checkpoint images and the folder they are written
// under. Call it before the controller runs.
func (o *Operator) SetImages(stores ImageStores, root string) {
	o.images, o.imageRoot = stores, root
}
