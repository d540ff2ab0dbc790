package tier

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/metrics"
	"github.com/kybernate/kybernate/nodeagent/storage"
)

// Folders under Config.DiskDir: the encrypted images (the disk tier), the plaintext images a
// spill writes before it encrypts them, and those a restore decrypts.
const (
	dirImages  = "images"
	dirStaging = "staging"
	dirRestore = "restore"
)

// DiskTierRoot is where the disk tier keeps its encrypted images under dir.
func DiskTierRoot(dir string) string { return filepath.Join(dir, dirImages) }

// imageID names the image of a pod: its namespace and name with its UID.
func imageID(pod *v1.Pod) storage.ImageID {
	return ImageOf(pod.Namespace, pod.Name, string(pod.UID))
}

// Spill writes the parked memory of a suspended pod into the disk tier and ends its processes.
// On failure nothing is left of what it wrote and the pod stays suspended in host memory.
func (m *Manager) Spill(ctx context.Context, node string, pod *v1.Pod) (err error) {
	n, ok := m.nodes.TierNode(node)
	if !ok {
		return fmt.Errorf("node %s is not served", node)
	}
	if _, held := m.Holds(pod.UID); held {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.MoveTimeout)
	defer cancel()
	logger := klog.FromContext(ctx).WithValues("pod", klog.KObj(pod), "node", node)
	start := m.clock.Now()
	id := imageID(pod)
	var e *entry
	defer func() { m.observe(kv1.TierHostMemory, kv1.TierDisk, start, e, err) }()
	fail := func(cause string, err error) error {
		err = fmt.Errorf("spilling pod %s/%s to disk: %w", pod.Namespace, pod.Name, err)
		metrics.TierMoveFailures.WithLabelValues(metrics.TierHostMemory, metrics.TierDisk, cause).Inc()
		m.recorder.Eventf(pod, v1.EventTypeWarning, EventTierMoveFailed, "Spill to disk failed (%s); the pod stays suspended in host memory: %v", cause, err)
		return err
	}
	key, err := m.keys.Key(ctx, pod.Namespace)
	if err != nil {
		return fail("NoKey", err)
	}
	err = n.Engine.WithParked(ctx, ref(pod), func(parked []engine.Process) (bool, error) {
		var err error
		e, err = m.writeImage(ctx, n, pod, id, key, parked)
		if err != nil {
			return false, err
		}
		if err := n.End(pod.UID); err != nil {
			// The processes live on with their memory: the image is not needed.
			return false, errors.Join(fmt.Errorf("ending the pod's processes: %w", err), storage.Delete(context.WithoutCancel(ctx), m.disk, id))
		}
		return true, nil
	})
	if err != nil {
		e = nil
		if engine.CauseOf(err) == engine.CauseBusy {
			// Another operation (a resume, a concurrent spill) has the pod: nothing failed.
			return err
		}
		return fail("SpillFailed", err)
	}
	e.node = node
	m.mu.Lock()
	m.held[pod.UID] = e
	m.mu.Unlock()
	msg := fmt.Sprintf("Spilled to disk: %s of parked GPU memory written into %s (image of %s, %s stored encrypted with key %s) in %v; host memory freed",
		quantity(e.vram), m.location(kv1.TierDisk, id), quantity(e.size), quantity(e.stored), e.keyID, m.clock.Since(start).Round(1e6))
	if e.simulated {
		msg += " (SIMULATED: the image holds a record of the simulated process, not its memory)"
	}
	m.recorder.Event(pod, v1.EventTypeNormal, EventSpilledToDisk, msg)
	logger.V(2).Info("Spilled pod to disk", "image", id.String(), "bytes", e.vram, "imageBytes", e.size)
	m.record(ctx, e)
	return nil
}

// writeImage writes the pod's checkpoint image into the staging folder, stores it encrypted
// in the disk tier and deletes the plaintext. On failure it deletes what it wrote.
func (m *Manager) writeImage(ctx context.Context, n Node, pod *v1.Pod, id storage.ImageID, key storage.Key, parked []engine.Process) (*entry, error) {
	staging := filepath.Join(m.cfg.DiskDir, dirStaging, id.Namespace, id.Name)
	if err := os.MkdirAll(filepath.Dir(staging), 0o700); err != nil {
		return nil, err
	}
	if err := os.RemoveAll(staging); err != nil {
		return nil, err
	}
	defer os.RemoveAll(staging)
	img, err := n.Images.Checkpoint(ctx, pod, staging)
	if err != nil {
		return nil, fmt.Errorf("writing the checkpoint image: %w", err)
	}
	man, err := storage.Put(ctx, m.disk, id, key, staging)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("storing the image: %w", err), storage.Delete(context.WithoutCancel(ctx), m.disk, id))
	}
	gpus, vram := parkedOnGPUs(parked)
	return &entry{pod: ref(pod), tier: kv1.TierDisk, id: id, simulated: img.Image.Simulated, model: img.Image.GPUModel, vram: vram, size: man.Size(), stored: man.StoredSize(), keyID: man.Encryption.KeyID,
		since: m.clock.Now(), parked: parked, gpus: gpus}, nil
}

// parkedOnGPUs is the GPUs parked processes were on, in order of first appearance, and the
// GPU memory they parked.
func parkedOnGPUs(parked []engine.Process) (gpus []cuda.UUID, vram int64) {
	for _, p := range parked {
		vram += p.Bytes
		if !containsUUID(gpus, p.GPU) {
			gpus = append(gpus, p.GPU)
		}
	}
	return gpus, vram
}

func containsUUID(list []cuda.UUID, u cuda.UUID) bool {
	for _, x := range list {
		if x == u {
			return true
		}
	}
	return false
}

// Upload moves a pod's image from disk to object storage and then deletes the disk copy. On
// failure the image stays on disk and the next try waits (exponential backoff).
func (m *Manager) Upload(ctx context.Context, uid types.UID) error {
	return m.upload(ctx, uid, "")
}

// upload is Upload; why, when not empty, says in the Event why the image moved.
func (m *Manager) upload(ctx context.Context, uid types.UID, why string) (err error) {
	if m.objects == nil {
		return errors.New("no object storage configured")
	}
	e, err := m.take(uid)
	if err != nil {
		return err
	}
	defer m.release(e)
	ctx, cancel := context.WithTimeout(ctx, m.cfg.MoveTimeout)
	defer cancel()
	start := m.clock.Now()
	pod := m.podObject(e)
	res, cerr := m.moveUp(ctx, e)
	if cerr != nil {
		m.moveFailed(ctx, e, pod, kv1.TierDisk, kv1.TierObjectStore, "UploadFailed", cerr,
			"Upload to object storage failed; the image stays on disk and is tried again in %v: %v")
		m.observe(kv1.TierDisk, kv1.TierObjectStore, start, nil, cerr)
		return cerr
	}
	m.mu.Lock()
	e.tier, e.since, e.failures, e.notBefore, e.lastError = kv1.TierObjectStore, m.clock.Now(), 0, start, ""
	m.mu.Unlock()
	m.observe(kv1.TierDisk, kv1.TierObjectStore, start, e, nil)
	if why != "" {
		why = " (" + why + ")"
	}
	m.recorder.Eventf(pod, v1.EventTypeNormal, EventUploadedToObjectStore, "Uploaded to object storage%s: %s (%d files copied, %d resumed) in %v; disk copy deleted",
		why, m.location(kv1.TierObjectStore, e.id), res.Copied, res.Skipped, m.clock.Since(start).Round(1e6))
	m.record(ctx, e)
	return nil
}

// moveUp moves the entry's image from disk to object storage: copied, then its disk copy
// deleted. A real node's container image goes through its Containers, which also records on
// the node that it is there (the shim's FetchSpilled looks in the object store only for such
// images).
func (m *Manager) moveUp(ctx context.Context, e *entry) (storage.CopyResult, error) {
	if e.gate != nil {
		n, ok := m.nodes.TierNode(e.node)
		if !ok || n.Containers == nil {
			return storage.CopyResult{}, fmt.Errorf("node %s has no storage tiers for containers", e.node)
		}
		up, err := n.Containers.upload(ctx, PodRef{Namespace: e.pod.Namespace, Name: e.pod.Name, UID: string(e.pod.UID)})
		return up.Upload, err
	}
	res, err := storage.Copy(ctx, m.disk, m.objects, e.id)
	if err != nil && !errors.Is(err, storage.ErrExists) { // exists: an earlier upload finished, its disk copy was not deleted
		return res, err
	}
	if err := storage.Delete(ctx, m.disk, e.id); err != nil {
		klog.FromContext(ctx).Info("Image uploaded, but deleting its disk copy failed", "image", e.id.String(), "err", err)
	}
	return res, nil
}
