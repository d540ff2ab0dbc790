package tier

import (
	"context"
	"errors"
	"fmt"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/metrics"
)

// On a real node a spill ends the pod's container, and the kubelet creates it again at once
// (and again after each failed create, backing off). The shim asks the agent at every create
// whether the container has a spilled image (FetchSpilled): the policy answers "not yet"
// (Admit: ContainerNotYet, a retryable error that names the pod's tier) until the pod's
// Resume, so the pod stays Suspended with its memory in the tier. A create waits up to
// Config.CreateHold for a Resume before it is refused, so a Resume that comes while a create
// waits restores at once instead of after the kubelet's back-off. The Resume opens the gate and
// waits, up to Config.RecreateTimeout, for the create that restores the container (Restored).

// EventKeptInHostMemory: a suspended pod the policy does not spill, because its container would
// not be created again (Recreated).
const EventKeptInHostMemory = "KeptInHostMemory"

// Recreated reports whether the kubelet creates a pod's container again after a spill stopped
// it (a killed container exits non-zero): under restartPolicy Always or OnFailure. A pod with
// restartPolicy Never would end Failed instead, so the policy leaves it in host memory.
func Recreated(pod *v1.Pod) bool {
	return pod.Spec.RestartPolicy != v1.RestartPolicyNever
}

// StepRecreate is the step of a resume from a tier on a real node: from the Resume to the end
// of the shim's restore in the container's next create.
const StepRecreate = "Recreate"

// ParkedPod is a suspended pod of a real node whose memory is in host memory.
type ParkedPod struct {
	Pod *v1.Pod
	// Bytes is the memory it holds there: parked GPU memory, or for a frozen pod without GPUs
	// the resident memory of its processes.
	Bytes int64
}

// gate holds the creates of a spilled container until the pod's Resume.
type gate struct {
	// open: a Resume asked for the container back; creates restore it.
	open bool
	// wake is closed when the gate opens or the pod is gone, to end creates waiting.
	wake chan struct{}
	// done receives how the restore the open gate let through ended.
	done chan bool
	// gone is closed when the pod is deleted: a Resume waiting for its create ends.
	gone chan struct{}
	// woken, isGone: wake and gone are closed.
	woken, isGone bool
}

func newGate() *gate { return &gate{wake: make(chan struct{}), gone: make(chan struct{})} }

// The gate's methods are called with Manager.mu held.

// wakeAll ends the creates waiting at the gate.
func (g *gate) wakeAll() {
	if !g.woken {
		g.woken = true
		close(g.wake)
	}
}

// podGone ends the waits of a deleted pod's gate: creates waiting for a Resume, and a Resume
// waiting for a create.
func (g *gate) podGone() {
	g.wakeAll()
	if !g.isGone {
		g.isGone = true
		close(g.gone)
	}
}

// spillContainer spills a suspended pod of a real node: its container is checkpointed with
// CRIU, stored encrypted on disk and stopped. A pod without GPUs is frozen already; a pod with
// GPUs has its GPU memory parked in its processes' host memory, so the image holds it, and the
// engine holds the pod meanwhile (no resume can start) and forgets its parked processes once
// the container is stopped. The gate is closed before the container stops, so that the
// kubelet's create right after finds it.
func (m *Manager) spillContainer(ctx context.Context, node string, n Node, pod *v1.Pod, bytes int64) error {
	start := m.clock.Now()
	e := &entry{pod: ref(pod), node: node, tier: kv1.TierDisk, id: imageID(pod), vram: bytes, since: start, busy: true, gate: newGate()}
	m.mu.Lock()
	if _, held := m.held[pod.UID]; held {
		m.mu.Unlock()
		return nil
	}
	m.held[pod.UID] = e
	m.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, m.cfg.MoveTimeout)
	defer cancel()
	out, err := m.checkpointContainer(ctx, n, pod, e)
	if err != nil {
		m.mu.Lock()
		if m.held[pod.UID] == e {
			delete(m.held, pod.UID)
		}
		e.gate.wakeAll()
		m.mu.Unlock()
		if engine.CauseOf(err) == engine.CauseBusy {
			return err // another operation (a resume) has the pod: nothing failed
		}
		cause := string(ContainerCauseOf(err))
		if cause == "" {
			cause = string(engine.CauseOf(err))
		}
		m.recorder.Eventf(pod, v1.EventTypeWarning, EventTierMoveFailed, "Spill to disk failed (%s); the pod stays suspended in host memory: %v", cause, err)
		return fmt.Errorf("spilling pod %s/%s to disk: %w", pod.Namespace, pod.Name, err)
	}
	m.mu.Lock()
	e.size, e.stored, e.keyID, e.busy = out.Manifest.Size(), out.Manifest.StoredSize(), out.Manifest.Encryption.KeyID, false
	m.mu.Unlock()
	what := "the container (" + quantity(bytes) + " in host memory)"
	if e.vram > 0 && len(e.gpus) > 0 {
		what = fmt.Sprintf("the container (%s of parked GPU memory from GPUs %s, %s in host memory)", quantity(e.vram), uuidList(e.gpus), quantity(bytes))
	}
	m.recorder.Eventf(pod, v1.EventTypeNormal, EventSpilledToDisk,
		"Spilled to disk: %s checkpointed with CRIU into %s (%s, stored encrypted with key %s) in %v and stopped; host memory freed. "+
			"The pod stays Suspended: the kubelet's creates of the container are refused until the pod is resumed, which restores it from the image",
		what, m.location(kv1.TierDisk, e.id), quantity(e.size), e.keyID, m.clock.Since(start).Round(time.Millisecond))
	klog.FromContext(ctx).V(2).Info("Spilled container to disk", "pod", klog.KObj(pod), "node", node, "image", e.id.String(), "bytes", bytes, "imageBytes", e.size, "gpus", e.gpus)
	m.record(ctx, e)
	return nil
}

// Admit implements Gate: a create of a spilled pod's container may restore it only once the
// pod's Resume opened the gate. It waits up to Config.CreateHold for that, then refuses.
func (m *Manager) Admit(ctx context.Context, pod PodRef) error {
	m.mu.Lock()
	e, ok := m.held[types.UID(pod.UID)]
	if !ok || e.gate == nil || e.gate.open {
		m.mu.Unlock()
		return nil // not held by the policy (a Spill RPC's image): restored at once
	}
	wake, tier, since := e.gate.wake, e.tier, e.since
	m.mu.Unlock()
	t := m.clock.NewTimer(m.cfg.CreateHold)
	defer t.Stop()
	select {
	case <-wake:
		m.mu.Lock()
		open := e.gate.open && m.held[e.pod.UID] == e
		m.mu.Unlock()
		if open {
			return nil
		}
	case <-t.C():
	case <-ctx.Done():
	}
	metrics.SpilledCreatesRefused.WithLabelValues(string(tier)).Inc()
	return &ContainerError{Cause: ContainerNotYet, Err: fmt.Errorf(
		"pod %s/%s is Suspended with its memory spilled to %s (image %s) since %s: its container is restored from that image when the pod is resumed "+
			"(GPUCheckpoint action Resume), never started afresh; no resume came within %s, the kubelet tries again",
		pod.Namespace, pod.Name, tier, e.id, since.UTC().Format(time.RFC3339), m.cfg.CreateHold)}
}

// Restored implements Gate: the shim's restore that an open gate let through ended.
func (m *Manager) Restored(pod PodRef, restored bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.held[types.UID(pod.UID)]
	if !ok || e.gate == nil || !e.gate.open || e.gate.done == nil {
		return
	}
	select {
	case e.gate.done <- restored:
	default: // one answer is enough
	}
}

// restoreContainer resumes a spilled pod of a real node: it opens the gate and waits for the
// kubelet's next create of the container, in which the shim fetches the image and restores the
// container from it. On failure or timeout the gate closes again and the pod stays spilled.
func (m *Manager) restoreContainer(ctx context.Context, n Node, e *entry, pod *v1.Pod, to []cuda.UUID) (engine.Result, error) {
	start := m.clock.Now()
	from := e.tier
	target, err := m.checkContainerTarget(ctx, n, e, pod, to)
	if err != nil {
		return engine.Result{}, err
	}
	m.mu.Lock()
	e.gate.open, e.gate.done = true, make(chan bool, 1)
	e.gate.wakeAll()
	done, gone := e.gate.done, e.gate.gone
	m.mu.Unlock()
	t := m.clock.NewTimer(m.cfg.RecreateTimeout)
	defer t.Stop()
	select {
	case ok := <-done:
		if !ok {
			err = errors.New("the shim could not restore the container from its image (its log and the kubelet's Events say why)")
		}
	case <-gone:
		return engine.Result{}, &engine.Error{Op: "resume", Pod: pod.Namespace + "/" + pod.Name, Cause: engine.CauseWrongState,
			Err: errors.New("the pod was deleted while its container was spilled")}
	case <-t.C():
		err = fmt.Errorf("the kubelet did not create the container within %s (its restart back-off is up to 5m)", m.cfg.RecreateTimeout)
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		m.mu.Lock()
		e.gate = newGate()
		m.mu.Unlock()
		return m.restoreFailed(ctx, e, pod, from, err)
	}
	took := m.clock.Since(start)
	now := metav1.NewTime(m.clock.Now())
	res := engine.Result{Steps: []engine.Step{{Name: StepRecreate, Duration: took, Bytes: e.size}}, GPUs: target,
		Storage: &kv1.CheckpointStorage{Tier: from, Location: m.location(from, e.id), SizeBytes: e.size, StoredBytes: e.stored, KeyID: e.keyID, LastMoveTime: &now}}
	if len(target) > 0 {
		res.Bytes = e.vram
	}
	m.mu.Lock()
	delete(m.held, pod.UID)
	m.mu.Unlock()
	m.observe(from, "GPU", start, e, nil)
	m.recorder.Eventf(pod, v1.EventTypeNormal, EventRestoredFromTier, "Restored from %s (%s): the kubelet created the container again and the shim restored it from its image %v after the resume; the image is deleted",
		from, m.location(from, e.id), took.Round(time.Millisecond))
	m.clear(ctx, e)
	klog.FromContext(ctx).V(2).Info("Restored container from tier", "pod", klog.KObj(pod), "tier", from, "took", took)
	return res, nil
}
