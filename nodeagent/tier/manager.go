// Package tier is the node agent's storage tier policy: where the GPU memory of a suspended
// pod is kept. A suspension parks the memory in host memory (the fast tier, and the scarce
// one). Above a high-water mark of parked memory per node (Config.HighWater), and before a
// suspension that would pass it, the least recently suspended pods are spilled: the pod's
// checkpoint image (its parked memory) is written, encrypted with its namespace's key, into the
// disk tier (package storage), and then its processes are ended, which frees the host memory.
// A pod put to sleep for idleness with kybernate.io/sleep Disk is spilled the same way as soon
// as its suspension succeeded, whatever the mark (SleepSpills).
// Images idle on disk longer than Config.DiskIdle move to object storage, and so do the
// longest on disk while the disk tier's filesystem is above Config.DiskHighWater (without an
// object store that is said, never resolved by deleting). Images whose pod no longer exists
// (deleted while no agent ran) are swept from both tiers after Config.OrphanGrace. A resume of a spilled
// pod brings the memory back from wherever it is: the restore guard first (never a restore
// without enough free GPU memory), then object storage -> disk, the image verified and
// decrypted, and restored onto the GPUs.
//
// Every move has a timeout and changes nothing when it fails: a spill that fails deletes what
// it wrote and the pod stays suspended in host memory; a failed upload keeps the image on disk
// and is retried with exponential backoff; a fetch or restore that fails (object storage
// unreachable, a tampered object) leaves the pod suspended with its image where it was and says
// why. Where the memory is, is visible: the status.storage of the pod's last Suspend
// GPUCheckpoint, Events on the pod (SpilledToDisk, UploadedToObjectStore, RestoredFromTier,
// TierMoveFailed) and the agent's tier metrics.
//
// Ending a spilled pod's processes and restoring them from the image in place is what a
// simulated node gives (Node.End, controller.Images). On a real node (Node.Containers) the same
// policy spills a suspended pod by checkpointing its container with CRIU (Containers; its
// memory, parked GPU memory included, is in its processes) and stopping it; the kubelet then
// creates the container again at once, and the shim asks the agent (FetchSpilled) whether to
// restore it: the policy refuses (Admit, a retryable error naming the pod's tier) until the
// pod's Resume, which lets the next create restore the container and waits for it
// (realnode.go).
package tier

import (
	"context"
	"fmt"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	listers "github.com/kybernate/kybernate/apis/kybernate/client/listers/kybernate/v1alpha1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/cuda"
	"github.com/kybernate/kybernate/nodeagent/controller"
	"github.com/kybernate/kybernate/nodeagent/engine"
	"github.com/kybernate/kybernate/nodeagent/podmap"
	"github.com/kybernate/kybernate/nodeagent/storage"
)

// Event reasons on pods.
const (
	EventSpilledToDisk         = "SpilledToDisk"
	EventUploadedToObjectStore = "UploadedToObjectStore"
	EventRestoredFromTier      = "RestoredFromTier"
	EventTierMoveFailed        = "TierMoveFailed"
)

// Node is what the policy needs of a node the agent serves.
type Node struct {
	// Engine is the node's checkpoint engine; on a real node nil where the CUDA driver is not
	// usable (pods with GPUs are not spilled there).
	Engine *engine.Engine
	// Images writes a suspended pod's checkpoint image and restores it in place.
	Images controller.Images
	// End ends the processes of a suspended pod whose memory is in a checkpoint image.
	End func(uid types.UID) error
	// Memory is the node's memory in bytes, for a HighWater given as a share.
	Memory func() int64
	// Containers, on a real node, spills the container of a suspended pod and restores it
	// through the shim; nil on simulated nodes, whose Engine, Images and End the policy uses.
	Containers *Containers
	// Parked lists, on a real node, the suspended pods whose memory is in host memory, with
	// the bytes each holds there.
	Parked func(ctx context.Context) ([]ParkedPod, error)
	// Model, on a real node, is the model of the node's GPU with this UUID ("" when unknown):
	// the image of a spilled container that a migration exports names it.
	Model func(ctx context.Context, uuid string) string
}

// Nodes are the nodes the agent serves.
type Nodes interface {
	TierNode(name string) (Node, bool)
	Names() []string
}

// Keys gives the image key of a namespace.
type Keys interface {
	Key(ctx context.Context, namespace string) (storage.Key, error)
}

// Manager runs the tier policy for every node the agent serves.
type Manager struct {
	cfg      Config
	nodes    Nodes
	disk     storage.Tier
	objects  storage.Tier // nil: no object storage
	keys     Keys
	kube     kubernetes.Interface
	kyb      versioned.Interface
	pods     corelisters.PodLister
	ckpts    listers.GPUCheckpointLister
	recorder record.EventRecorder
	clock    clock.WithTicker
	// fs reports the disk tier's filesystem usage (statfs; tests replace it).
	fs Filesystem

	// poke asks Run for a pass now (a pod put to sleep on disk).
	poke chan struct{}

	mu   sync.Mutex
	held map[types.UID]*entry
	// failedSleeps are the pods whose spill for a deep sleep failed, with the next try.
	failedSleeps map[types.UID]failedMove
	// pressure: the disk tier stayed above DiskHighWater at the last look.
	pressure bool
	// orphans are the images whose pod is gone, by when a sweep first found them so.
	orphans map[orphanKey]time.Time
}

// failedMove is the backoff of a pod of node whose move failed: failures in a row and the next try.
type failedMove struct {
	node      string
	failures  int
	notBefore time.Time
}

// entry is a suspended pod whose memory is in a tier below host memory.
type entry struct {
	pod  podmap.PodRef
	node string
	tier kv1.StorageTier
	id   storage.ImageID
	// vram is the parked GPU memory the image holds; size and stored are the image's
	// plaintext and encrypted bytes (a simulated image holds a record, not the memory); keyID
	// its key's id.
	vram, size, stored int64
	// simulated: the image was written by a simulated node.
	simulated bool
	// model is the GPU model the spill's checkpoint recorded; empty for an entry a restarted
	// agent took over.
	model string
	keyID string
	// since is when the memory arrived in tier.
	since time.Time
	// parked are the processes as they were parked (footprints: what a restore needs free);
	// gpus the GPUs they were on.
	parked []engine.Process
	gpus   []cuda.UUID
	busy   bool
	// failures counts failed moves in a row; notBefore is the next try.
	failures  int
	notBefore time.Time
	lastError string
	// gate is the hold on a real node's spilled container (nil on simulated nodes).
	gate *gate
}

// New returns a Manager. objects may be nil (no object storage).
func New(cfg Config, nodes Nodes, disk, objects storage.Tier, keys Keys, kube kubernetes.Interface, kyb versioned.Interface,
	pods corelisters.PodLister, ckpts listers.GPUCheckpointLister, recorder record.EventRecorder, clk clock.WithTicker) *Manager {
	return &Manager{cfg: cfg, nodes: nodes, disk: disk, objects: objects, keys: keys, kube: kube, kyb: kyb, pods: pods, ckpts: ckpts,
		recorder: recorder, clock: clk, fs: Statfs, poke: make(chan struct{}, 1), held: map[types.UID]*entry{},
		failedSleeps: map[types.UID]failedMove{}, orphans: map[orphanKey]time.Time{}}
}

// Holds reports the tier of a suspended pod whose memory the policy moved out of host memory.
func (m *Manager) Holds(uid types.UID) (kv1.StorageTier, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.held[uid]
	if !ok {
		return "", false
	}
	return e.tier, true
}

// take marks the pod's entry busy; false when there is none or it is busy.
func (m *Manager) take(uid types.UID) (*entry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.held[uid]
	if !ok {
		return nil, fmt.Errorf("pod %s: no image in a storage tier", uid)
	}
	if e.busy {
		return nil, &engine.Error{Op: "move", Pod: e.pod.String(), Cause: engine.CauseBusy, Err: fmt.Errorf("its memory is being moved between tiers")}
	}
	e.busy = true
	return e, nil
}

func (m *Manager) release(e *entry) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e.busy = false
}

// Run applies the policy every Config.Interval, and at once when poked, and sweeps the images
// of pods that are gone at once and every Config.SweepInterval, until ctx ends.
func (m *Manager) Run(ctx context.Context) {
	t := m.clock.NewTicker(m.cfg.Interval)
	defer t.Stop()
	sweep := m.clock.NewTicker(m.cfg.SweepInterval)
	defer sweep.Stop()
	m.sweep(ctx)
	for {
		m.Reconcile(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		case <-m.poke:
		case <-sweep.C():
			m.sweep(ctx)
		}
	}
}

// Poke asks Run for a pass now rather than at the next interval; it never blocks.
func (m *Manager) Poke() {
	select {
	case m.poke <- struct{}{}:
	default: // a pass is asked for already
	}
}

func (m *Manager) sweep(ctx context.Context) {
	if err := m.Sweep(ctx); err != nil {
		klog.FromContext(ctx).Error(err, "Sweeping the images of pods that are gone failed; retried next sweep")
	}
}

// Reconcile applies the policy once to every node: spills above the mark, spills of pods that
// sleep on disk, uploads of idle images.
func (m *Manager) Reconcile(ctx context.Context) {
	for _, name := range m.nodes.Names() {
		if ctx.Err() != nil {
			return
		}
		if _, err := m.MakeRoom(ctx, name, 0); err != nil {
			klog.FromContext(ctx).V(2).Info("Spilling to the disk tier failed", "node", name, "err", err)
		}
		m.spillSleepers(ctx, name)
		m.uploadDue(ctx, name)
		m.publish(name)
	}
	// One disk tier for all the agent's nodes.
	m.relievePressure(ctx)
}

// MakeRoom spills suspended pods of node, least recently suspended first, until the memory
// parked in host memory plus need is at or under the mark. It reports whether it got there.
func (m *Manager) MakeRoom(ctx context.Context, node string, need int64) (bool, error) {
	n, ok := m.nodes.TierNode(node)
	if !ok || !m.cfg.Enabled() {
		return true, nil
	}
	mark := m.cfg.HighWater.Bytes(n.Memory())
	parked, names, err := m.parkedOn(ctx, n)
	if err != nil {
		return false, fmt.Errorf("listing the suspended pods of node %s: %w", node, err)
	}
	plan, enough := SpillPlan(parked, need, mark)
	var errs []error
	for _, uid := range plan {
		u := names[uid]
		pod, err := m.pods.Pods(u.Namespace).Get(u.Name)
		if err != nil || pod.UID != uid {
			errs = append(errs, fmt.Errorf("pod %s/%s: not in the cache: %v", u.Namespace, u.Name, err))
			enough = false
			continue
		}
		if err := m.spillOn(ctx, node, n, pod, bytesOf(parked, uid)); err != nil {
			errs = append(errs, err)
			enough = false
		}
	}
	if len(errs) > 0 {
		return enough, fmt.Errorf("spilling on node %s: %v", node, errs)
	}
	return enough, nil
}

// spillOn spills a suspended pod of node n whose memory, bytes of it, is in host memory.
func (m *Manager) spillOn(ctx context.Context, node string, n Node, pod *v1.Pod, bytes int64) error {
	if n.Containers != nil {
		return m.spillContainer(ctx, node, n, pod, bytes)
	}
	if usageOf(n.Engine.SuspendedPods(), pod.UID) == nil {
		return nil // resumed meanwhile
	}
	return m.Spill(ctx, node, pod)
}

// parkedOn lists the node's suspended pods whose memory is in host memory, for the plan, and
// their names.
func (m *Manager) parkedOn(ctx context.Context, n Node) ([]Parked, map[types.UID]podmap.PodRef, error) {
	var parked []Parked
	names := map[types.UID]podmap.PodRef{}
	if n.Parked != nil {
		list, err := n.Parked(ctx)
		if err != nil {
			return nil, nil, err
		}
		for _, p := range list {
			if _, held := m.Holds(p.Pod.UID); held {
				continue
			}
			parked = append(parked, Parked{UID: p.Pod.UID, Bytes: p.Bytes, Since: m.suspendedAt(p.Pod.Namespace, p.Pod.Name)})
			names[p.Pod.UID] = ref(p.Pod)
		}
		return parked, names, nil
	}
	for _, u := range n.Engine.SuspendedPods() {
		parked = append(parked, Parked{UID: types.UID(u.UID), Bytes: u.Bytes, Since: m.suspendedAt(u.Namespace, u.Name)})
		names[types.UID(u.UID)] = podmap.PodRef{Namespace: u.Namespace, Name: u.Name, UID: types.UID(u.UID)}
	}
	return parked, names, nil
}

func bytesOf(list []Parked, uid types.UID) int64 {
	for _, p := range list {
		if p.UID == uid {
			return p.Bytes
		}
	}
	return 0
}

func usageOf(list []kv1.PodGPUUsage, uid types.UID) *kv1.PodGPUUsage {
	for i := range list {
		if types.UID(list[i].UID) == uid {
			return &list[i]
		}
	}
	return nil
}

// suspendedAt is when the pod was suspended: the last transition of its GPUResident condition
// to False. Unknown is the zero time, which spills first.
func (m *Manager) suspendedAt(ns, name string) time.Time {
	pod, err := m.pods.Pods(ns).Get(name)
	if err != nil {
		return time.Time{}
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == kv1.ConditionGPUResident && c.Status == v1.ConditionFalse {
			return c.LastTransitionTime.Time
		}
	}
	// A pod without GPUs (frozen) has no GPUResident condition: its last Suspend says when.
	if list, err := m.ckpts.GPUCheckpoints(ns).List(labels.Everything()); err == nil {
		if last := controller.LastSuspend(list, pod, pod.Spec.NodeName); last != nil && last.Status.CompletionTime != nil {
			return last.Status.CompletionTime.Time
		}
	}
	return time.Time{}
}

// uploadDue moves the node's images that have been on disk longer than DiskIdle to object
// storage.
func (m *Manager) uploadDue(ctx context.Context, node string) {
	if m.objects == nil {
		return
	}
	m.mu.Lock()
	var disk []OnDisk
	for uid, e := range m.held {
		if e.node == node && e.tier == kv1.TierDisk && !e.busy {
			disk = append(disk, OnDisk{UID: uid, Since: e.since, NotBefore: e.notBefore})
		}
	}
	m.mu.Unlock()
	for _, uid := range UploadsDue(disk, m.clock.Now(), m.cfg.DiskIdle) {
		if err := m.upload(ctx, uid, "idle on disk for "+m.cfg.DiskIdle.String()); err != nil {
			klog.FromContext(ctx).V(2).Info("Upload to object storage failed; the image stays on disk", "node", node, "err", err)
		}
	}
}

// SuspendedPods lists node's suspended pods whose memory is in a tier below host memory, for
// the GPUNode status: residency Disk or ObjectStore, the parked bytes and the GPUs they were on.
func (m *Manager) SuspendedPods(node string) []kv1.PodGPUUsage {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []kv1.PodGPUUsage
	for _, e := range m.held {
		if e.node != node {
			continue
		}
		r := kv1.OnDisk
		if e.tier == kv1.TierObjectStore {
			r = kv1.InObjectStore
		}
		u := kv1.PodGPUUsage{Namespace: e.pod.Namespace, Name: e.pod.Name, UID: string(e.pod.UID), Residency: r, Bytes: e.vram}
		for _, g := range e.gpus {
			u.GPUs = append(u.GPUs, g.String())
		}
		out = append(out, u)
	}
	return out
}
