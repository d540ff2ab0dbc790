// Package status keeps the GPUNode object of each node the agent serves true to what is on the
// node, and the node's kybernate.io/gpu capacity in line with it.
//
// The Reporter creates a node's GPUNode when it is missing (spec.slotsPerGPU from the agent's
// configuration, owned by the Node so that it goes with it), and rewrites its status when what
// it observes differs from what the object says; unchanged observations write nothing. Writes
// are driven by events (Trigger: NVML polls, pod, node and GPUNode changes, simulated GPU
// changes) through a work queue that coalesces them, and each node is written at most once per
// Config.MinInterval. The node's status capacity and allocatable get kybernate.io/gpu = GPUs x
// slotsPerGPU through the nodes/status subresource.
package status

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"

	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	listers "github.com/kybernate/kybernate/apis/kybernate/client/listers/kybernate/v1alpha1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/inventory"
	"github.com/kybernate/kybernate/nodeagent/metrics"
	"github.com/kybernate/kybernate/nodeagent/podmap"
)

// DefaultSlotsPerGPU is the agent's default spec.slotsPerGPU: one pod running on a GPU and one
// parked in host memory. Suspended pods keep their slot, so with 1 a GPU whose pod is
// suspended could take no other pod and suspension would free nothing to schedule on.
const DefaultSlotsPerGPU = 2

// Config is how the Reporter writes.
type Config struct {
	// SlotsPerGPU is written to each GPUNode's spec and multiplies the node's GPUs into
	// kybernate.io/gpu capacity.
	SlotsPerGPU int32
	// HostMemoryReserve is host memory never offered for parking GPU memory.
	HostMemoryReserve int64
	// HostMemoryStep is the least change of parkable host memory that is written.
	HostMemoryStep int64
	// MinInterval is the least time between two writes for one node.
	MinInterval time.Duration
	// Simulated marks every GPUNode with the Simulated condition.
	Simulated bool
	// RestoreMargin is the agent's --restore-margin, written to status.restoreMarginBytes so
	// that the controllers place restores only where the agent will make them.
	RestoreMargin int64
}

// PodResolver maps the PID of a GPU process to its pod.
type PodResolver interface {
	PodOfPID(ctx context.Context, pid int32) (podmap.PodRef, error)
}

// SuspendedLister lists a node's pods whose GPU memory is parked in host memory.
type SuspendedLister interface {
	SuspendedPods() []kv1.PodGPUUsage
}

// Node is what the Reporter reads about one node.
type Node struct {
	Inventory inventory.Source
	// Pods maps GPU processes to pods; nil reports no pods on the GPUs.
	Pods PodResolver
	// Suspended may be nil: no pod is suspended.
	Suspended  SuspendedLister
	HostMemory HostMemory
	// Busy, when set, reports that memory is being moved on the node. The observation waits
	// until it is done: no read helps a checkpoint, and with NVML polled every 2 s checkpoints
	// ran up to 22% slower on one H100 (test/gpu/results/2026-11-23-h100-agent-poll.md, where a
	// second host could not tell the difference from noise). The operation triggers the node
	// when it ends.
	Busy func() bool
}

// busyRetry is how soon a node whose memory is being moved is looked at again.
const busyRetry = time.Second

// Reporter writes the GPUNode status and node capacity of the nodes added to it.
type Reporter struct {
	cfg      Config
	kube     kubernetes.Interface
	kyb      versioned.Interface
	gpuNodes listers.GPUNodeLister
	nodes    corelisters.NodeLister
	clock    clock.Clock
	queue    workqueue.TypedRateLimitingInterface[string]

	mu      sync.Mutex
	entries map[string]*entry
}

type entry struct {
	src Node // guarded by Reporter.mu
	// forget asks the next Sync to drop last: the GPUNode was deleted.
	forget atomic.Bool

	// The rest is used by Sync only, which the queue runs once at a time per node.
	lastWrite time.Time
	// last is the GPUNode as the agent last wrote it. superseded holds the resourceVersions
	// of the versions it replaced ("" for none, after a create): while the lister shows one of
	// them it has not caught up with the write, and last is the truth.
	last       *kv1.GPUNode
	superseded sets.Set[string]
	// capacity is the kybernate.io/gpu last patched onto the node, and nodeSuperseded the
	// node's resourceVersions from before the patch, likewise.
	capacity       *int64
	nodeSuperseded sets.Set[string]
}

// current returns what the GPUNode is, from the lister's copy and the agent's last write.
func (e *entry) current(listed *kv1.GPUNode) *kv1.GPUNode {
	rv := ""
	if listed != nil {
		rv = listed.ResourceVersion
	}
	if e.last == nil {
		return listed
	}
	if e.superseded.Has(rv) {
		return e.last
	}
	if rv == e.last.ResourceVersion {
		e.superseded = nil // caught up
	}
	return listed
}

// wrote records a write of gn over prev (nil after a create).
func (e *entry) wrote(prev, gn *kv1.GPUNode) {
	if e.superseded == nil {
		e.superseded = sets.New[string]()
	}
	if prev == nil {
		e.superseded.Insert("")
	} else {
		e.superseded.Insert(prev.ResourceVersion)
	}
	e.last = gn
}

// capacityPatched reports whether the node has (or is about to show) want kybernate.io/gpu.
func (e *entry) capacityPatched(node *v1.Node, want int64) bool {
	if e.capacity == nil || *e.capacity != want {
		return false
	}
	if e.nodeSuperseded.Has(node.ResourceVersion) {
		return true
	}
	e.capacity, e.nodeSuperseded = nil, nil // the lister has caught up: it is the truth
	return false
}

// New returns a Reporter. The listers must be on informers that run.
func New(cfg Config, kube kubernetes.Interface, kyb versioned.Interface, gpuNodes listers.GPUNodeLister, nodes corelisters.NodeLister, clk clock.WithTicker) *Reporter {
	if cfg.SlotsPerGPU <= 0 {
		cfg.SlotsPerGPU = DefaultSlotsPerGPU
	}
	return &Reporter{
		cfg:      cfg,
		kube:     kube,
		kyb:      kyb,
		gpuNodes: gpuNodes,
		nodes:    nodes,
		clock:    clk,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](cfg.MinInterval, 2*time.Minute),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "kybernate_gpunode_status", Clock: clk}),
		entries: map[string]*entry{},
	}
}

// Add starts reporting for a node.
func (r *Reporter) Add(name string, src Node) {
	r.mu.Lock()
	if e, ok := r.entries[name]; ok {
		e.src = src
	} else {
		r.entries[name] = &entry{src: src}
	}
	r.mu.Unlock()
	// The node's error series exists from the start, at zero, for dashboards and alerts.
	metrics.InventoryErrors.WithLabelValues(name)
	r.queue.Add(name)
}

// Remove stops reporting for a node. Its GPUNode stays; it goes with its Node.
func (r *Reporter) Remove(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.entries, name)
	// A node no longer served has no series.
	// Delete, not DeleteLabelValues: it is a no-op while the metrics are not registered.
	metrics.InventoryErrors.Delete(map[string]string{"node": name})
	metrics.ParkedBytes.Delete(map[string]string{"node": name})
}

// Trigger asks for a node's status to be checked and written if it changed. Unknown nodes are
// ignored.
func (r *Reporter) Trigger(name string) {
	r.mu.Lock()
	_, ok := r.entries[name]
	r.mu.Unlock()
	if ok {
		r.queue.Add(name)
	}
}

// TriggerAll triggers every node.
func (r *Reporter) TriggerAll() {
	for _, name := range r.Nodes() {
		r.queue.Add(name)
	}
}

// Nodes returns the names of the nodes reported.
func (r *Reporter) Nodes() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	names := make([]string, 0, len(r.entries))
	for name := range r.entries {
		names = append(names, name)
	}
	return names
}

// EventHandler triggers the node an object is named after (Nodes, GPUNodes) on any change.
// A deleted GPUNode is created again.
func (r *Reporter) EventHandler() cache.ResourceEventHandler {
	name := func(obj interface{}) string {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		if m, err := meta.Accessor(obj); err == nil {
			return m.GetName()
		}
		return ""
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj interface{}) { r.Trigger(name(obj)) },
		UpdateFunc: func(_, obj interface{}) { r.Trigger(name(obj)) },
		DeleteFunc: func(obj interface{}) {
			n := name(obj)
			if _, ok := obj.(*kv1.GPUNode); ok {
				r.mu.Lock()
				if e, ok := r.entries[n]; ok {
					e.forget.Store(true)
				}
				r.mu.Unlock()
			}
			r.Trigger(n)
		},
	}
}

// Run processes the queue with workers goroutines until ctx ends.
func (r *Reporter) Run(ctx context.Context, workers int) {
	defer r.queue.ShutDown()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() { wait.UntilWithContext(ctx, r.worker, time.Second) })
	}
	<-ctx.Done()
	r.queue.ShutDown()
	wg.Wait()
}

func (r *Reporter) worker(ctx context.Context) {
	for r.next(ctx) {
	}
}

func (r *Reporter) next(ctx context.Context) bool {
	name, quit := r.queue.Get()
	if quit {
		return false
	}
	defer r.queue.Done(name)
	logger := klog.FromContext(ctx).WithValues("node", name)
	after, err := r.Sync(klog.NewContext(ctx, logger), name)
	switch {
	case err != nil:
		logger.Error(err, "Writing GPU status failed; retrying")
		r.queue.AddRateLimited(name)
	case after > 0:
		r.queue.Forget(name)
		r.queue.AddAfter(name, after)
	default:
		r.queue.Forget(name)
	}
	return true
}

// Sync observes a node and writes its GPUNode and capacity where they differ from the
// observation. When a write is due before MinInterval has passed since the last one, it writes
// nothing and returns how long to wait.
func (r *Reporter) Sync(ctx context.Context, name string) (time.Duration, error) {
	logger := klog.FromContext(ctx)
	r.mu.Lock()
	e, ok := r.entries[name]
	var src Node
	if ok {
		src = e.src
	}
	r.mu.Unlock()
	if !ok {
		return 0, nil
	}
	if src.Busy != nil && src.Busy() {
		return busyRetry, nil
	}
	if e.forget.Swap(false) {
		e.last, e.superseded = nil, nil
	}

	obs := observe(ctx, src)
	if obs.invErr != nil {
		metrics.InventoryErrors.WithLabelValues(name).Inc()
		logger.Error(obs.invErr, "Reading GPU inventory failed")
	}
	if obs.memErr != nil {
		logger.Error(obs.memErr, "Reading host memory failed")
	}
	metrics.ParkedBytes.WithLabelValues(name).Set(float64(sumBytes(obs.suspended)))

	cur, err := r.gpuNodes.Get(name)
	if apierrors.IsNotFound(err) {
		cur = nil
	} else if err != nil {
		return 0, fmt.Errorf("getting gpunode %s from cache: %w", name, err)
	}
	cur = e.current(cur)
	node, err := r.nodes.Get(name)
	if apierrors.IsNotFound(err) {
		// A GPUNode without its Node would be garbage; wait for the Node.
		logger.V(2).Info("Node not found; not reporting its GPUs yet")
		return 0, nil
	} else if err != nil {
		return 0, fmt.Errorf("getting node %s from cache: %w", name, err)
	}

	now := r.clock.Now()
	spec := cur == nil || cur.Spec.SlotsPerGPU == nil || *cur.Spec.SlotsPerGPU != r.cfg.SlotsPerGPU
	want := desiredStatus(cur, obs, r.cfg, metav1.NewTime(now))
	statusChanged := cur == nil || !equality.Semantic.DeepEqual(cur.Status, want)
	wantCapacity := int64(len(want.GPUs)) * int64(r.cfg.SlotsPerGPU)
	capacity := capacityChanged(node, wantCapacity) && !e.capacityPatched(node, wantCapacity)
	if !spec && !statusChanged && !capacity {
		return 0, nil
	}
	if wait := e.lastWrite.Add(r.cfg.MinInterval).Sub(now); wait > 0 {
		logger.V(5).Info("Deferring write", "wait", wait)
		return wait, nil
	}
	e.lastWrite = now

	if cur == nil {
		if cur, err = r.create(ctx, node); err != nil {
			return 0, err
		}
		e.wrote(nil, cur)
		want = desiredStatus(cur, obs, r.cfg, metav1.NewTime(now))
		statusChanged = !equality.Semantic.DeepEqual(cur.Status, want)
	} else if spec {
		upd := cur.DeepCopy()
		upd.Spec.SlotsPerGPU = ptr.To(r.cfg.SlotsPerGPU)
		updated, err := r.kyb.KybernateV1alpha1().GPUNodes().Update(ctx, upd, metav1.UpdateOptions{})
		if err != nil {
			metrics.StatusWrites.WithLabelValues(metrics.WriteGPUNode, metrics.ResultFailure).Inc()
			return 0, fmt.Errorf("updating gpunode %s spec: %w", name, err)
		}
		metrics.StatusWrites.WithLabelValues(metrics.WriteGPUNode, metrics.ResultSuccess).Inc()
		e.wrote(cur, updated)
		cur = updated
		logger.V(2).Info("Updated GPUNode spec", "slotsPerGPU", r.cfg.SlotsPerGPU)
		want = desiredStatus(cur, obs, r.cfg, metav1.NewTime(now)) // for the new generation
		statusChanged = !equality.Semantic.DeepEqual(cur.Status, want)
	}
	if statusChanged {
		if err := r.writeStatus(ctx, e, cur, want); err != nil {
			return 0, err
		}
	}
	if capacity {
		if err := r.patchCapacity(ctx, name, wantCapacity); err != nil {
			return 0, err
		}
		e.capacity = ptr.To(wantCapacity)
		if e.nodeSuperseded == nil {
			e.nodeSuperseded = sets.New[string]()
		}
		e.nodeSuperseded.Insert(node.ResourceVersion)
	}
	return 0, nil
}

func (r *Reporter) create(ctx context.Context, node *v1.Node) (*kv1.GPUNode, error) {
	logger := klog.FromContext(ctx)
	gn := &kv1.GPUNode{
		ObjectMeta: metav1.ObjectMeta{
			Name: node.Name,
			// Goes with the node: the garbage collector deletes it when the Node is deleted.
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1",
				Kind:       "Node",
				Name:       node.Name,
				UID:        node.UID,
			}},
		},
		Spec: kv1.GPUNodeSpec{SlotsPerGPU: ptr.To(r.cfg.SlotsPerGPU)},
	}
	created, err := r.kyb.KybernateV1alpha1().GPUNodes().Create(ctx, gn, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		// The cache has not seen it yet.
		created, err = r.kyb.KybernateV1alpha1().GPUNodes().Get(ctx, node.Name, metav1.GetOptions{})
	}
	if err != nil {
		metrics.StatusWrites.WithLabelValues(metrics.WriteGPUNode, metrics.ResultFailure).Inc()
		return nil, fmt.Errorf("creating gpunode %s: %w", node.Name, err)
	}
	metrics.StatusWrites.WithLabelValues(metrics.WriteGPUNode, metrics.ResultSuccess).Inc()
	logger.V(2).Info("Created GPUNode", "slotsPerGPU", r.cfg.SlotsPerGPU, "simulated", r.cfg.Simulated)
	return created, nil
}

func (r *Reporter) writeStatus(ctx context.Context, e *entry, cur *kv1.GPUNode, want kv1.GPUNodeStatus) error {
	upd := cur.DeepCopy()
	upd.Status = want
	written, err := r.kyb.KybernateV1alpha1().GPUNodes().UpdateStatus(ctx, upd, metav1.UpdateOptions{})
	if err != nil {
		metrics.StatusWrites.WithLabelValues(metrics.WriteGPUNode, metrics.ResultFailure).Inc()
		return fmt.Errorf("updating gpunode %s status: %w", cur.Name, err)
	}
	metrics.StatusWrites.WithLabelValues(metrics.WriteGPUNode, metrics.ResultSuccess).Inc()
	e.wrote(cur, written)
	ready := meta.FindStatusCondition(want.Conditions, kv1.GPUNodeReady)
	klog.FromContext(ctx).V(2).Info("Updated GPUNode status", "gpus", len(want.GPUs), "suspendedPods", len(want.SuspendedPods),
		"parkableBytes", want.HostMemory.ParkableBytes, "parkedBytes", want.HostMemory.ParkedBytes,
		"ready", ready.Status, "simulated", r.cfg.Simulated)
	return nil
}

// capacityChanged reports whether the node advertises other than want kybernate.io/gpu.
func capacityChanged(node *v1.Node, want int64) bool {
	c, okc := node.Status.Capacity[kv1.ResourceGPU]
	a, oka := node.Status.Allocatable[kv1.ResourceGPU]
	return !okc || !oka || c.Value() != want || a.Value() != want
}

func (r *Reporter) patchCapacity(ctx context.Context, name string, n int64) error {
	q := resource.NewQuantity(n, resource.DecimalSI).String()
	patch, err := json.Marshal(map[string]any{"status": map[string]any{
		"capacity":    map[string]string{kv1.ResourceGPU: q},
		"allocatable": map[string]string{kv1.ResourceGPU: q},
	}})
	if err != nil {
		return fmt.Errorf("encoding capacity patch: %w", err)
	}
	if _, err := r.kube.CoreV1().Nodes().Patch(ctx, name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
		metrics.StatusWrites.WithLabelValues(metrics.WriteNode, metrics.ResultFailure).Inc()
		return fmt.Errorf("patching node %s capacity %s=%s: %w", name, kv1.ResourceGPU, q, err)
	}
	metrics.StatusWrites.WithLabelValues(metrics.WriteNode, metrics.ResultSuccess).Inc()
	klog.FromContext(ctx).V(2).Info("Patched node capacity", "resource", kv1.ResourceGPU, "quantity", q)
	return nil
}

// MarkStopped sets Ready=False (AgentStopped) on every reported node's GPUNode, so that a
// stopped agent does not leave a status that looks fresh. Call it on shutdown with a context
// that is still live.
func (r *Reporter) MarkStopped(ctx context.Context) {
	logger := klog.FromContext(ctx)
	for _, name := range r.Nodes() {
		cur, err := r.kyb.KybernateV1alpha1().GPUNodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			if !apierrors.IsNotFound(err) {
				logger.Error(err, "Marking GPUNode stopped failed", "node", name)
			}
			continue
		}
		upd := cur.DeepCopy()
		setCondition(&upd.Status.Conditions, metav1.Condition{
			Type: kv1.GPUNodeReady, Status: metav1.ConditionFalse, Reason: ReasonAgentStopped,
			Message: messageStopped, ObservedGeneration: cur.Generation,
		}, metav1.NewTime(r.clock.Now()))
		if _, err := r.kyb.KybernateV1alpha1().GPUNodes().UpdateStatus(ctx, upd, metav1.UpdateOptions{}); err != nil {
			logger.Error(err, "Marking GPUNode stopped failed", "node", name)
		}
	}
}

func sumBytes(pods []kv1.PodGPUUsage) int64 {
	var n int64
	for _, p := range pods {
		n += p.Bytes
	}
	return n
}
