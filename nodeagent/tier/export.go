package tier

import (
	"context"
	"errors"
	"fmt"
	"os"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/controller"
	"github.com/kybernate/kybernate/nodeagent/image"
	"github.com/kybernate/kybernate/nodeagent/storage"
)

// Export writes the checkpoint image of a spilled pod into dir, which must not exist (a
// migration's image, which another node restores from): read from the tier that holds it,
// object storage included, its manifest and every file checked and decrypted; dir appears only
// when every file passed. The pod stays spilled and its stored image is kept: the original
// lives until its replacement runs (a real node's container stays held: its creates are
// refused). A simulated node's image is described with the GPU model the spill's checkpoint
// recorded; one recovered by a restarted agent has none and is refused. A real node's
// container image is the CRIU image of the container, which the shim of the replacement's node
// restores from kybernate.io/restore-from; its GPU model is that of the GPU its metadata names.
func (m *Manager) Export(ctx context.Context, pod *v1.Pod, dir string) (controller.ImageResult, error) {
	e, err := m.take(pod.UID)
	if err != nil {
		return controller.ImageResult{}, err
	}
	defer m.release(e)
	fail := func(cause string, err error) (controller.ImageResult, error) {
		return controller.ImageResult{}, &controller.ImageError{Cause: cause, RolledBack: true,
			Err: fmt.Errorf("writing the image of pod %s/%s from %s: %w", pod.Namespace, pod.Name, e.tier, err)}
	}
	if e.gate == nil && e.model == "" {
		return fail("ImageUnverified", errors.New("the GPU model of its memory is not known (the image was taken over by a restarted agent): a migration could not place it"))
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.MoveTimeout)
	defer cancel()
	from := m.disk
	if e.tier == kv1.TierObjectStore {
		from = m.objects
	}
	key, err := m.keys.Key(ctx, pod.Namespace)
	if err != nil {
		return fail("NoKey", err)
	}
	start := m.clock.Now()
	if _, err := storage.Restore(ctx, from, e.id, key, dir); err != nil {
		return fail(string(readCause(err)), err)
	}
	desc, meta, err := controller.Describe(dir, e.model)
	if err == nil && e.gate != nil {
		desc.GPUModel, err = m.containerModel(ctx, e.node, meta)
	}
	if err != nil {
		return fail("ImageUnverified", errors.Join(err, os.RemoveAll(dir)))
	}
	desc.Simulated = e.simulated
	klog.FromContext(ctx).V(2).Info("Wrote the image of a spilled pod from its tier", "pod", klog.KObj(pod), "tier", e.tier, "image", dir,
		"bytes", desc.SizeBytes, "duration", m.clock.Since(start))
	return controller.ImageResult{Image: desc}, nil
}

// containerModel is the model of the GPU a real node's container image names: the node's own
// GPU, which NVML lists. An image without GPU memory has none.
func (m *Manager) containerModel(ctx context.Context, node string, meta image.Metadata) (string, error) {
	if len(meta.GPUs) == 0 {
		return "", nil
	}
	if n, ok := m.nodes.TierNode(node); ok && n.Model != nil {
		if model := n.Model(ctx, meta.GPUs[0]); model != "" {
			return model, nil
		}
	}
	return "", fmt.Errorf("the model of GPU %s, whose memory the image holds, is not known on node %s: a migration could not place it", meta.GPUs[0], node)
}

// readCause is ImageCorrupt for a damaged or tampered image (or one under another key),
// FetchFailed for any other failure to read it back.
func readCause(err error) ContainerCause {
	if errors.Is(err, storage.ErrCorrupt) || errors.Is(err, storage.ErrWrongKey) {
		return ContainerImageCorrupt
	}
	return ContainerFetchFailed
}
