package tier

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"k8s.io/klog/v2"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/checkpoint"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/image"
	"github.com/kybernate/kybernate/nodeagent/metrics"
	"github.com/kybernate/kybernate/nodeagent/storage"
)

// Containers moves the checkpoint images of a real node's containers between the tiers and
// brings them back through the shim. A spill checkpoints the container with CRIU (through
// containerd and the shim; its parked GPU memory is in its processes' host memory, so in the
// image), stores the image encrypted in the disk tier and only then stops the container. An
// upload copies it to object storage. When the container is created again (the kubelet
// restarts it in the same pod), the shim asks Fetch: the image is fetched from object storage
// when it is there, checked and decrypted into the checkpoint folder, and the shim restores the
// container from it with runc restore (and, for an image with GPU memory, the agent's Restore).
// Release then deletes the plaintext and, after a restore, the stored image.
//
// Images are named as the policy names them (ImageOf): one per pod, of the pod's only
// container, so the sweep of images whose pod is gone covers them too.
type Containers struct {
	// Checkpointer writes CRIU images of the node's containers.
	Checkpointer *checkpoint.Checkpointer
	// Disk is the disk tier, Objects the object store (nil: none).
	Disk, Objects storage.Tier
	Keys          Keys
	// DiskDir is --disk-tier-dir: the plaintext of a spill is written under it before it is
	// encrypted.
	DiskDir string
	// ImageRoot is the checkpoint folder the shim restores from (--checkpoint-dir, the shim's
	// checkpointDir): decrypted images go into their namespace's folder under it.
	ImageRoot string
	// Timeout bounds one move.
	Timeout time.Duration
	// Gate, when set, decides whether a container's create may restore it from its image now
	// (the policy holds the images of suspended pods until their Resume) and hears how each
	// restore ended.
	Gate Gate

	mu   sync.Mutex
	busy map[storage.ImageID]bool
}

// ContainerCause says why a move of a container's image failed.
type ContainerCause string

// Causes of ContainerError.
const (
	ContainerInvalid       ContainerCause = "Invalid"
	ContainerBusy          ContainerCause = "Busy"
	ContainerNotFound      ContainerCause = "NotFound"
	ContainerExists        ContainerCause = "Exists"
	ContainerNoKey         ContainerCause = "NoKey"
	ContainerNoObjectStore ContainerCause = "NoObjectStore"
	// ContainerCheckpoint: the checkpoint failed (rolled back; the error wraps checkpoint's).
	ContainerCheckpoint ContainerCause = "CheckpointFailed"
	// ContainerStore: the image could not be written to or read from a tier.
	ContainerStore        ContainerCause = "StoreFailed"
	ContainerFetchFailed  ContainerCause = "FetchFailed"
	ContainerImageCorrupt ContainerCause = "ImageCorrupt"
	// ContainerNotYet: the pod is suspended with its container spilled and not asked to resume;
	// its container is not created yet (retryable).
	ContainerNotYet ContainerCause = "NotResumed"
)

// Gate is the tier policy's hold on spilled containers: a suspended pod's container is
// restored only once the pod is resumed.
type Gate interface {
	// Admit returns nil when the pod's container may be restored from its image now, else a
	// ContainerError with cause ContainerNotYet saying why; it may wait, bounded, for a resume.
	Admit(ctx context.Context, pod PodRef) error
	// Restored tells the policy how the restore of a container the gate admitted ended.
	Restored(pod PodRef, restored bool)
}

// ContainerError is a failed move of a container's image; nothing was lost.
type ContainerError struct {
	Cause ContainerCause
	Err   error
}

func (e *ContainerError) Error() string { return e.Err.Error() }
func (e *ContainerError) Unwrap() error { return e.Err }

func cfail(cause ContainerCause, format string, args ...any) error {
	return &ContainerError{Cause: cause, Err: fmt.Errorf(format, args...)}
}

// ContainerCauseOf is the cause of a ContainerError, "" for other errors.
func ContainerCauseOf(err error) ContainerCause {
	var e *ContainerError
	if errors.As(err, &e) {
		return e.Cause
	}
	return ""
}

// PodRef names a pod and its container.
type PodRef struct {
	Namespace, Name, UID, Container string
}

// ImageOf is the name of the image of a pod in the tiers: its namespace, and its name with its
// UID (the sweep reads the UID back).
func ImageOf(namespace, name, uid string) storage.ImageID {
	if len(name) > 200 {
		name = name[:200]
	}
	return storage.ImageID{Namespace: namespace, Name: name + "-" + uid}
}

// Spilled says where a container's image is after a move.
type Spilled struct {
	Tier     kv1.StorageTier
	Location string
	Manifest storage.Manifest
	// Steps are the checkpoint's steps and the moves'.
	Steps []engine.Step
	// VRAMBytes is the GPU memory the image holds.
	VRAMBytes int64
	// Pod is the container's pod as the image records it.
	Pod image.Pod
	// Upload is what the move to object storage copied.
	Upload storage.CopyResult
}

// Spill moves the image of pod's container to tier to: Disk checkpoints the running container
// into the disk tier and stops it; ObjectStore moves the image on disk (written first when the
// pod has none) to object storage.
func (c *Containers) Spill(ctx context.Context, pod PodRef, to kv1.StorageTier, lockTimeout time.Duration) (Spilled, error) {
	if pod.Namespace == "" || pod.Name == "" {
		return Spilled{}, cfail(ContainerInvalid, "pod namespace and name are required")
	}
	switch to {
	case kv1.TierDisk:
		return c.spillToDisk(ctx, pod, lockTimeout, false)
	case kv1.TierObjectStore:
		if c.Objects == nil {
			return Spilled{}, cfail(ContainerNoObjectStore, "no object store configured (--object-store-secret)")
		}
		if pod.UID == "" {
			s, err := c.spillToDisk(ctx, pod, lockTimeout, false)
			if err != nil {
				return Spilled{}, err
			}
			pod.UID = s.Pod.UID
			up, err := c.upload(ctx, pod)
			up.Steps = append(s.Steps, up.Steps...)
			up.VRAMBytes = s.VRAMBytes
			return up, err
		}
		return c.upload(ctx, pod)
	default:
		return Spilled{}, cfail(ContainerInvalid, "tier %q: want %s or %s", to, kv1.TierDisk, kv1.TierObjectStore)
	}
}

// SpillFrozen spills the container of a suspended pod whose containers are frozen already (a
// pod without GPUs): as Spill to Disk, but a failure leaves the container frozen.
func (c *Containers) SpillFrozen(ctx context.Context, pod PodRef) (Spilled, error) {
	if pod.Namespace == "" || pod.Name == "" || pod.UID == "" {
		return Spilled{}, cfail(ContainerInvalid, "pod namespace, name and uid are required")
	}
	return c.spillToDisk(ctx, pod, 0, true)
}

// spillToDisk checkpoints the container into the staging folder and, with the container still
// frozen, stores the image encrypted in the disk tier; then the container is stopped. Any
// failure rolls the checkpoint back (the container runs on, or stays frozen when it was) and
// deletes what was stored.
func (c *Containers) spillToDisk(ctx context.Context, pod PodRef, lockTimeout time.Duration, frozen bool) (Spilled, error) {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	start := time.Now()
	key, err := c.Keys.Key(ctx, pod.Namespace)
	if err != nil {
		return Spilled{}, cfail(ContainerNoKey, "%w", err)
	}
	staging := filepath.Join(c.DiskDir, dirStaging, pod.Namespace)
	if err := os.MkdirAll(staging, 0o700); err != nil {
		return Spilled{}, cfail(ContainerStore, "staging folder: %w", err)
	}
	dir, err := os.MkdirTemp(staging, pod.Name+"-")
	if err != nil {
		return Spilled{}, cfail(ContainerStore, "staging folder: %w", err)
	}
	defer os.RemoveAll(dir)
	dir = filepath.Join(dir, "image")
	var out Spilled
	var unlock func()
	keep := func(ctx context.Context, dir string) error {
		m, err := image.Read(dir)
		if err != nil {
			return err
		}
		if m.Pod.UID == "" || (pod.UID != "" && m.Pod.UID != pod.UID) {
			return fmt.Errorf("the container's pod has uid %q, want %q", m.Pod.UID, pod.UID)
		}
		id := ImageOf(m.Pod.Namespace, m.Pod.Name, m.Pod.UID)
		if unlock, err = c.lock(id); err != nil {
			return err
		}
		if _, err := storage.Stat(ctx, c.Disk, id, key); err == nil {
			return fmt.Errorf("%s holds an image of the pod already: %w", c.Disk, storage.ErrExists)
		}
		man, err := storage.Put(ctx, c.Disk, id, key, dir)
		if err != nil {
			return errors.Join(fmt.Errorf("storing the image: %w", err), storage.Delete(context.WithoutCancel(ctx), c.Disk, id))
		}
		out.Manifest, out.VRAMBytes, out.Pod = man, m.VRAMBytes, m.Pod
		return nil
	}
	res, err := c.Checkpointer.Checkpoint(ctx, checkpoint.Request{
		Pod:         podOf(pod),
		Container:   pod.Container,
		ImageDir:    dir,
		LockTimeout: lockTimeout,
		Keep:        keep,
		Frozen:      frozen,
	})
	if unlock != nil {
		defer unlock()
	}
	if err != nil {
		if out.Manifest.Image.Name != "" {
			// Stored, but the container could not be stopped (and runs on): the image is not needed.
			err = errors.Join(err, storage.Delete(context.WithoutCancel(ctx), c.Disk, out.Manifest.Image))
		}
		metrics.TierMoveFailures.WithLabelValues(metrics.TierHostMemory, metrics.TierDisk, string(ContainerCheckpoint)).Inc()
		return Spilled{}, &ContainerError{Cause: ContainerCheckpoint, Err: fmt.Errorf("spilling pod %s/%s to disk: %w", pod.Namespace, pod.Name, err)}
	}
	out.Tier, out.Location, out.Steps = kv1.TierDisk, c.location(kv1.TierDisk, out.Manifest.Image), res.Steps
	observeMove(metrics.TierHostMemory, metrics.TierDisk, start, out.VRAMBytes)
	klog.FromContext(ctx).V(2).Info("Spilled container to disk", "pod", klog.KRef(pod.Namespace, pod.Name), "image", out.Manifest.Image.String(),
		"bytes", out.Manifest.Size(), "storedBytes", out.Manifest.StoredSize(), "duration", time.Since(start))
	return out, nil
}

// upload copies the pod's image from disk to object storage (verified against the manifest,
// resuming an interrupted copy) and then deletes the disk copy.
func (c *Containers) upload(ctx context.Context, pod PodRef) (Spilled, error) {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	id := ImageOf(pod.Namespace, pod.Name, pod.UID)
	if err := id.Validate(); err != nil {
		return Spilled{}, cfail(ContainerInvalid, "%w", err)
	}
	unlock, err := c.lock(id)
	if err != nil {
		return Spilled{}, err
	}
	defer unlock()
	start := time.Now()
	res, err := storage.Copy(ctx, c.Disk, c.Objects, id)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return Spilled{}, cfail(ContainerNotFound, "pod %s/%s has no image on disk: %w", pod.Namespace, pod.Name, err)
	case errors.Is(err, storage.ErrCorrupt):
		return Spilled{}, cfail(ContainerImageCorrupt, "uploading: %w", err)
	case err != nil && !errors.Is(err, storage.ErrExists):
		metrics.TierMoveFailures.WithLabelValues(metrics.TierDisk, metrics.TierObjectStore, string(ContainerFetchFailed)).Inc()
		return Spilled{}, cfail(ContainerFetchFailed, "uploading to object storage; the image stays on disk: %w", err)
	}
	// The node remembers that the image is there, so that a container's create asks the object
	// store only for a pod it spilled; before the disk copy goes.
	if err := c.markUploaded(id); err != nil {
		return Spilled{}, cfail(ContainerStore, "uploaded, but recording it on the node failed; the image stays on disk: %w", err)
	}
	if err := storage.Delete(ctx, c.Disk, id); err != nil {
		klog.FromContext(ctx).Info("Image uploaded, but deleting its disk copy failed", "image", id.String(), "err", err)
	}
	man := res.Manifest
	observeMove(metrics.TierDisk, metrics.TierObjectStore, start, 0)
	klog.FromContext(ctx).V(2).Info("Uploaded container image to object storage", "pod", klog.KRef(pod.Namespace, pod.Name), "image", id.String(),
		"copied", res.Copied, "resumed", res.Skipped, "duration", time.Since(start))
	return Spilled{Tier: kv1.TierObjectStore, Location: c.location(kv1.TierObjectStore, id), Manifest: man, Pod: podOf(pod),
		Steps: []engine.Step{{Name: "Upload", Duration: time.Since(start), Bytes: man.StoredSize()}}, Upload: res}, nil
}

// lock holds the image against other moves; a second one fails with ContainerBusy.
func (c *Containers) lock(id storage.ImageID) (func(), error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.busy == nil {
		c.busy = map[storage.ImageID]bool{}
	}
	if c.busy[id] {
		return nil, cfail(ContainerBusy, "another move of image %s runs", id)
	}
	c.busy[id] = true
	return func() {
		c.mu.Lock()
		delete(c.busy, id)
		c.mu.Unlock()
	}, nil
}

func (c *Containers) location(t kv1.StorageTier, id storage.ImageID) string {
	if t == kv1.TierObjectStore && c.Objects != nil {
		return c.Objects.String() + id.Namespace + "/" + id.Name + "/"
	}
	return filepath.Join(DiskTierRoot(c.DiskDir), id.Namespace, id.Name)
}

func observeMove(from, to string, start time.Time, bytes int64) {
	metrics.TierMoveDuration.WithLabelValues(from, to, metrics.ResultSuccess).Observe(time.Since(start).Seconds())
	metrics.TierMoveBytes.WithLabelValues(from, to).Add(float64(bytes))
}

func podOf(p PodRef) image.Pod {
	return image.Pod{Namespace: p.Namespace, Name: p.Name, UID: p.UID}
}
