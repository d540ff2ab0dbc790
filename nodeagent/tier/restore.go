package tier

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/storage"
)

// Steps of a resume from a tier, before those of the restore itself.
const (
	StepFetch   = "Fetch"
	StepDecrypt = "Decrypt"
)

// Restore brings a spilled pod's memory back onto to (the GPUs it was on when empty, else one
// per GPU it was on, in order): the restore guard first, then from object storage to disk when
// it is there, the image verified and decrypted, and restored in place. On failure the pod
// stays suspended with its image where it was; the error is an *engine.Error whose cause says
// why (InsufficientGPUMemory, FetchFailed, ImageCorrupt, or the restore's own).
func (m *Manager) Restore(ctx context.Context, node string, pod *v1.Pod, to []cuda.UUID) (engine.Result, error) {
	fail := func(cause engine.Cause, err error) (engine.Result, error) {
		return engine.Result{}, &engine.Error{Op: "resume", Pod: pod.Namespace + "/" + pod.Name, Cause: cause, Err: err}
	}
	n, ok := m.nodes.TierNode(node)
	if !ok {
		return fail(engine.CauseInternal, fmt.Errorf("node %s is not served", node))
	}
	e, err := m.take(pod.UID)
	if err != nil {
		return engine.Result{}, err
	}
	defer m.release(e)
	if e.gate != nil {
		return m.restoreContainer(ctx, n, e, pod, to)
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.MoveTimeout)
	defer cancel()
	start := m.clock.Now()
	from := e.tier
	// Before anything is read: a pod that cannot go back onto the GPUs stays where it is.
	if err := n.Engine.CheckRestore(ctx, e.pod, e.parked, e.gpus, to); err != nil {
		return engine.Result{}, err
	}
	if len(to) == 0 {
		to = e.gpus
	}
	var steps []engine.Step
	if from == kv1.TierObjectStore {
		t := m.clock.Now()
		_, err := storage.Copy(ctx, m.objects, m.disk, e.id)
		if err != nil && !errors.Is(err, storage.ErrExists) {
			return m.restoreFailed(ctx, e, pod, from, fmt.Errorf("fetching the image from object storage: %w", err))
		}
		steps = append(steps, engine.Step{Name: StepFetch, Duration: m.clock.Since(t), Bytes: e.stored})
	}
	key, err := m.keys.Key(ctx, pod.Namespace)
	if err != nil {
		return m.restoreFailed(ctx, e, pod, from, err)
	}
	dir := filepath.Join(m.cfg.DiskDir, dirRestore, e.id.Namespace, e.id.Name)
	if err := os.RemoveAll(dir); err != nil {
		return m.restoreFailed(ctx, e, pod, from, err)
	}
	defer os.RemoveAll(dir)
	t := m.clock.Now()
	if _, err := storage.Restore(ctx, m.disk, e.id, key, dir); err != nil {
		return m.restoreFailed(ctx, e, pod, from, fmt.Errorf("verifying and decrypting the image: %w", err))
	}
	steps = append(steps, engine.Step{Name: StepDecrypt, Duration: m.clock.Since(t), Bytes: e.size})
	res, err := n.Images.Restore(ctx, pod, dir, uuidStrings(to))
	if err != nil {
		// Back to the tier: processes the restore started are ended again; the image is kept.
		rbErr := n.End(pod.UID)
		n.Engine.Forget(pod.UID)
		if rbErr != nil {
			err = fmt.Errorf("%w; ending the restored processes failed too: %w", err, rbErr)
		}
		if engine.CauseOf(err) == engine.CauseInsufficientGPUMemory {
			return engine.Result{}, err
		}
		return m.restoreFailed(ctx, e, pod, from, err)
	}
	now := metav1.NewTime(m.clock.Now())
	res.Steps = append(steps, res.Steps...)
	res.Storage = &kv1.CheckpointStorage{Tier: from, Location: m.location(from, e.id), SizeBytes: e.size, StoredBytes: e.stored,
		KeyID: e.keyID, LastMoveTime: &now}
	m.mu.Lock()
	delete(m.held, pod.UID)
	m.mu.Unlock()
	m.deleteImage(ctx, e)
	m.observe(from, "GPU", start, e, nil)
	m.recorder.Eventf(pod, v1.EventTypeNormal, EventRestoredFromTier, "Restored from %s (%s): %s of GPU memory onto GPUs %s in %v; the image is deleted",
		from, m.location(from, e.id), quantity(e.vram), uuidList(to), m.clock.Since(start).Round(1e6))
	m.clear(ctx, e)
	klog.FromContext(ctx).V(2).Info("Restored pod from tier", "pod", klog.KObj(pod), "tier", from, "bytes", e.vram)
	return res, nil
}

// restoreFailed records a failed fetch or restore: the pod stays suspended in its tier.
func (m *Manager) restoreFailed(ctx context.Context, e *entry, pod *v1.Pod, from kv1.StorageTier, err error) (engine.Result, error) {
	cause := engine.CauseFetchFailed
	if errors.Is(err, storage.ErrCorrupt) || errors.Is(err, storage.ErrWrongKey) {
		cause = engine.CauseImageCorrupt
	} else if c := engine.CauseOf(err); c != engine.CauseInternal {
		cause = c
	}
	m.observe(from, "GPU", m.clock.Now(), nil, err)
	m.moveFailed(ctx, e, pod, from, "GPU", string(cause), err, "Restore from "+string(from)+" failed; the pod stays suspended and its image is kept (retry in %v): %v")
	return engine.Result{}, &engine.Error{Op: "resume", Pod: pod.Namespace + "/" + pod.Name, Cause: cause, Err: err}
}

// deleteImage deletes a restored pod's image from the tiers that hold it.
func (m *Manager) deleteImage(ctx context.Context, e *entry) {
	logger := klog.FromContext(ctx)
	if err := storage.Delete(ctx, m.disk, e.id); err != nil {
		logger.Info("Deleting an image from the disk tier failed", "image", e.id.String(), "err", err)
	}
	if m.objects != nil && e.tier == kv1.TierObjectStore {
		if err := storage.Delete(ctx, m.objects, e.id); err != nil {
			logger.Info("Deleting an image from object storage failed", "image", e.id.String(), "err", err)
		}
	}
}

// Forget drops a pod that is gone and deletes its images.
func (m *Manager) Forget(ctx context.Context, pod *v1.Pod) {
	m.mu.Lock()
	e, ok := m.held[pod.UID]
	free := ok && !e.busy
	if ok && e.gate != nil {
		e.gate.podGone() // creates waiting for a resume, or a resume waiting for a create, end
	}
	if free || ok && e.gate != nil { // a busy container's images: the sweep deletes them
		delete(m.held, pod.UID)
	}
	delete(m.failedSleeps, pod.UID)
	m.mu.Unlock()
	if free {
		m.deleteImage(ctx, e)
		m.publish(e.node)
	}
}

func uuidStrings(u []cuda.UUID) []string {
	out := make([]string, len(u))
	for i := range u {
		out[i] = u[i].String()
	}
	return out
}
