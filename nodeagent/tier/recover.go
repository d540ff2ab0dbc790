package tier

import (
	"context"
	"errors"
	"fmt"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/klog/v2"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/nodeagent/controller"
	"github.com/kybernate/kybernate/nodeagent/storage"
)

// Recover takes over, after an agent restart, the suspended pods an earlier agent moved below
// host memory: their Suspend's status.storage says where the image is. A pod whose image is
// there is held in that tier again (its processes, which the simulation recreated parked from
// the pod's state, are ended); an upload the earlier agent did not finish is resumed by the next
// one (storage.Copy skips what arrived). A pod whose image is not complete in its tier stays
// where it is, in host memory, and its status.storage is cleared. Call it once the served nodes
// exist and before Run.
func (m *Manager) Recover(ctx context.Context) {
	list, err := m.ckpts.List(labels.Everything())
	if err != nil {
		klog.FromContext(ctx).Error(err, "Listing GPUCheckpoints to recover the storage tiers failed")
		return
	}
	for _, ck := range list {
		if st := ck.Status.Storage; st == nil || st.Tier == kv1.TierHostMemory || ck.Spec.Action != kv1.ActionSuspend {
			continue
		}
		if _, ok := m.nodes.TierNode(ck.Status.NodeName); !ok {
			continue
		}
		pod, err := m.pods.Pods(ck.Namespace).Get(ck.Spec.PodName)
		if err != nil || gpupod.StateOf(pod) != kv1.PodSuspended || controller.LastSuspend(list, pod, ck.Status.NodeName) != ck {
			continue
		}
		if err := m.recoverPod(ctx, ck, pod); err != nil {
			klog.FromContext(ctx).Info("Taking over a spilled pod failed; it stays in host memory", "pod", klog.KObj(pod), "err", err)
			m.recorder.Eventf(pod, v1.EventTypeWarning, EventTierMoveFailed, "After an agent restart the pod's image in %s could not be taken over; the pod stays in host memory: %v", ck.Status.Storage.Tier, err)
			m.writeStorage(ctx, &entry{pod: ref(pod), node: ck.Status.NodeName}, nil)
		}
	}
}

func (m *Manager) recoverPod(ctx context.Context, ck *kv1.GPUCheckpoint, pod *v1.Pod) error {
	st := ck.Status.Storage
	n, _ := m.nodes.TierNode(ck.Status.NodeName)
	id := imageID(pod)
	key, err := m.keys.Key(ctx, pod.Namespace)
	if err != nil {
		return err
	}
	from := m.disk
	if st.Tier == kv1.TierObjectStore {
		if m.objects == nil {
			return errors.New("the image is in object storage, but this agent has no --object-store-secret")
		}
		from = m.objects
	}
	man, err := storage.Stat(ctx, from, id, key)
	if err != nil {
		return fmt.Errorf("image %s: %w", id, err)
	}
	e := m.recovered(ck, pod, id, man)
	// A pod with GPUs recorded what its processes had in use: the restore guard's need.
	parked, err := controller.RecordedProcesses(ck.Status.Footprint)
	if err == nil && len(parked) > 0 {
		e.parked = parked
		e.gpus, e.vram = parkedOnGPUs(parked)
	}
	if n.Containers != nil {
		// A real node's spilled container is stopped already: its creates are refused again
		// until the pod's Resume, as before the restart.
		e.gate = newGate()
		m.takeOver(ctx, e)
		return nil
	}
	if err != nil || len(parked) == 0 {
		return fmt.Errorf("status.footprint of %s: %v", ck.Name, err)
	}
	if err := n.End(pod.UID); err != nil {
		return fmt.Errorf("ending the pod's processes: %w", err)
	}
	n.Engine.Forget(pod.UID)
	m.takeOver(ctx, e)
	return nil
}

// recovered is the entry of a pod an earlier agent spilled, from its Suspend's status.storage
// and its image's manifest.
func (m *Manager) recovered(ck *kv1.GPUCheckpoint, pod *v1.Pod, id storage.ImageID, man storage.Manifest) *entry {
	st := ck.Status.Storage
	since := m.clock.Now()
	if st.LastMoveTime != nil {
		since = st.LastMoveTime.Time
	}
	return &entry{pod: ref(pod), node: ck.Status.NodeName, tier: st.Tier, id: id, size: man.Size(), stored: man.StoredSize(),
		keyID: man.Encryption.KeyID, since: since, lastError: st.LastError}
}

// takeOver holds the entry of a pod an earlier agent spilled.
func (m *Manager) takeOver(ctx context.Context, e *entry) {
	m.mu.Lock()
	m.held[e.pod.UID] = e
	m.mu.Unlock()
	m.publish(e.node)
	klog.FromContext(ctx).V(2).Info("Took over a spilled pod", "pod", klog.KRef(e.pod.Namespace, e.pod.Name), "tier", e.tier, "image", e.id.String(),
		"container", e.gate != nil)
}
