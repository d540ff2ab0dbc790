package sim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/nodeagent/inventory"
	"github.com/kybernate/kybernate/nodeagent/status"
)

// NodeNameIndex is the name of the pod informer index by spec.nodeName the Fleet needs.
const NodeNameIndex = "spec.nodeName"

// AddNodeNameIndex indexes a pod informer by spec.nodeName. Call it before the informer starts.
func AddNodeNameIndex(informer cache.SharedIndexInformer) error {
	err := informer.AddIndexers(cache.Indexers{NodeNameIndex: func(obj interface{}) ([]string, error) {
		pod, ok := obj.(*v1.Pod)
		if !ok || pod.Spec.NodeName == "" {
			return nil, nil
		}
		return []string{pod.Spec.NodeName}, nil
	}})
	if err != nil {
		return fmt.Errorf("adding pod node name index: %w", err)
	}
	return nil
}

// defaultHostMemory is the simulated host memory of a node that does not say.
const defaultHostMemory = 1 << 40

// FleetConfig configures a Fleet.
type FleetConfig struct {
	// Selector picks the nodes to simulate, e.g. type=kwok.
	Selector labels.Selector
	// ProgressPeriod is how often progress annotations are written.
	ProgressPeriod time.Duration
	// ProgressTick is how often progress is accounted: the resolution of the counter.
	ProgressTick time.Duration
}

// Fleet simulates the GPU machines of the nodes its selector picks: it creates a Machine per
// node from the node's labels, keeps the machine's processes in line with the pods bound to the
// node, registers the machine with the status Reporter and publishes the pods' progress.
type Fleet struct {
	cfg      FleetConfig
	kube     kubernetes.Interface
	reporter *status.Reporter
	nodes    corelisters.NodeLister
	pods     cache.Indexer
	clock    clock.WithTicker
	queue    workqueue.TypedRateLimitingInterface[string]

	mu       sync.Mutex
	machines map[string]*fleetMachine
	// onMachine is called when a node's machine appears or goes (nil), e.g. to start
	// controllers for it.
	onMachine func(node string, m *Machine)
}

type fleetMachine struct {
	m     *Machine // nil when the node's labels name no machine
	model string
	count string
}

// NewFleet returns a Fleet. pods must be indexed with AddNodeNameIndex; both listers must be
// on informers that run, and the Fleet's EventHandlers registered on them.
func NewFleet(cfg FleetConfig, kube kubernetes.Interface, reporter *status.Reporter, nodes corelisters.NodeLister, pods cache.Indexer, clk clock.WithTicker) *Fleet {
	return &Fleet{
		cfg:      cfg,
		kube:     kube,
		reporter: reporter,
		nodes:    nodes,
		pods:     pods,
		clock:    clk,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "kybernate_simulated_nodes", Clock: clk}),
		machines: map[string]*fleetMachine{},
	}
}

// OnMachine sets a function called (from the Fleet's workers) when a node's machine is created
// (m set) or removed (m nil). Set it before Run.
func (f *Fleet) OnMachine(fn func(node string, m *Machine)) { f.onMachine = fn }

// Machine returns the simulated machine of a node.
func (f *Fleet) Machine(node string) (*Machine, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fm, ok := f.machines[node]
	if !ok || fm.m == nil {
		return nil, false
	}
	return fm.m, true
}

// NodeEventHandler queues nodes that change.
func (f *Fleet) NodeEventHandler() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj interface{}) { f.queueObject(obj) },
		UpdateFunc: func(_, obj interface{}) { f.queueObject(obj) },
		DeleteFunc: func(obj interface{}) { f.queueObject(obj) },
	}
}

// PodEventHandler queues the node of pods that change.
func (f *Fleet) PodEventHandler() cache.ResourceEventHandler {
	node := func(obj interface{}) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		if pod, ok := obj.(*v1.Pod); ok && pod.Spec.NodeName != "" {
			f.queue.Add(pod.Spec.NodeName)
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc: node,
		UpdateFunc: func(old, obj interface{}) {
			// Progress annotations change often and change nothing here.
			if o, n := old.(*v1.Pod), obj.(*v1.Pod); o.Status.Phase == n.Status.Phase && o.Spec.NodeName == n.Spec.NodeName &&
				o.DeletionTimestamp.Equal(n.DeletionTimestamp) && o.Annotations[kv1.AnnotationGPUs] == n.Annotations[kv1.AnnotationGPUs] &&
				o.Annotations[kv1.AnnotationGPUMemory] == n.Annotations[kv1.AnnotationGPUMemory] {
				return
			}
			node(obj)
		},
		DeleteFunc: node,
	}
}

func (f *Fleet) queueObject(obj interface{}) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	if n, ok := obj.(*v1.Node); ok {
		f.queue.Add(n.Name)
	}
}

// Run runs workers and the progress loop until ctx ends.
func (f *Fleet) Run(ctx context.Context, workers int) {
	defer f.queue.ShutDown()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			wait.UntilWithContext(ctx, func(ctx context.Context) {
				for f.next(ctx) {
				}
			}, time.Second)
		})
	}
	wg.Go(func() { f.tickLoop(ctx) })
	<-ctx.Done()
	f.queue.ShutDown()
	wg.Wait()
}

func (f *Fleet) next(ctx context.Context) bool {
	name, quit := f.queue.Get()
	if quit {
		return false
	}
	defer f.queue.Done(name)
	if err := f.SyncNode(klog.NewContext(ctx, klog.FromContext(ctx).WithValues("node", name, "simulated", true)), name); err != nil {
		klog.FromContext(ctx).Error(err, "Simulating node failed; retrying", "node", name, "simulated", true)
		f.queue.AddRateLimited(name)
		return true
	}
	f.queue.Forget(name)
	return true
}

// SyncAll syncs every node the node lister has, one after the other. Call it once the
// informers have synced and before Run and anything that acts on the nodes' pods: the
// machines (and through OnMachine the nodes' engines) and the simulated processes of the
// pods bound there, suspended ones included, exist when it returns. Without it a restarted
// agent's controller could take the GPUCheckpoints of a node whose machine its fleet had not
// made yet for another agent's, and leave them untouched.
func (f *Fleet) SyncAll(ctx context.Context) error {
	nodes, err := f.nodes.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("listing nodes from cache: %w", err)
	}
	var errs []error
	for _, n := range nodes {
		if err := f.SyncNode(klog.NewContext(ctx, klog.FromContext(ctx).WithValues("node", n.Name, "simulated", true)), n.Name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// SyncNode brings a node's machine in line with the node and its pods.
func (f *Fleet) SyncNode(ctx context.Context, name string) error {
	logger := klog.FromContext(ctx)
	node, err := f.nodes.Get(name)
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("getting node %s from cache: %w", name, err)
	}
	if node == nil || node.DeletionTimestamp != nil || !f.cfg.Selector.Matches(labels.Set(node.Labels)) {
		f.remove(ctx, name)
		return nil
	}

	model, count := node.Labels[kv1.LabelGPUModel], node.Labels[kv1.LabelGPUCount]
	f.mu.Lock()
	fm, ok := f.machines[name]
	f.mu.Unlock()
	if !ok || fm.model != model || fm.count != count {
		if ok {
			f.remove(ctx, name) // the labels changed: a different machine
		}
		fm = &fleetMachine{model: model, count: count}
		n, err := strconv.Atoi(count)
		if err != nil {
			err = fmt.Errorf("node label %s=%q is not a number of GPUs", kv1.LabelGPUCount, count)
		} else {
			fm.m, err = NewMachine(name, model, n, f.clock)
		}
		src := status.Node{HostMemory: status.FixedMemory(nodeMemory(node))}
		if err != nil {
			// The GPUNode says what is wrong (Ready=False, InventoryFailed).
			logger.Error(err, "Cannot simulate node's GPUs")
			src.Inventory = &inventory.Static{Err: fmt.Errorf("simulating node %s from its labels: %w", name, err)}
		} else {
			src.Inventory, src.Pods, src.Suspended = fm.m.Inventory(), fm.m, fm.m
			fm.m.SetHostMemory(nodeMemory(node))
			src.HostMemory = fm.m
			logger.V(2).Info("Simulating node's GPUs", "model", model, "gpus", n, "gpuUUIDs", fm.m.GPUs())
		}
		f.mu.Lock()
		f.machines[name] = fm
		f.mu.Unlock()
		f.reporter.Add(name, src)
		if fm.m != nil && f.onMachine != nil {
			f.onMachine(name, fm.m)
		}
	}
	if fm.m == nil {
		return nil
	}

	objs, err := f.pods.ByIndex(NodeNameIndex, name)
	if err != nil {
		return fmt.Errorf("listing pods of node %s: %w", name, err)
	}
	pods := make([]*v1.Pod, 0, len(objs))
	for _, o := range objs {
		if pod, ok := o.(*v1.Pod); ok {
			pods = append(pods, pod)
		}
	}
	changed, errs := fm.m.SyncPods(pods)
	for _, err := range errs {
		logger.Error(err, "Cannot simulate pod's GPU processes")
	}
	// After the pods: a new machine (an agent restart) recreates the parked processes of
	// suspended pods first, which need no room on the GPUs.
	if foreign, err := ParseForeignMemory(node.Annotations[AnnotationForeignMemory], len(fm.m.GPUs())); err != nil {
		logger.Error(err, "Ignoring node annotation", "annotation", AnnotationForeignMemory)
	} else if err := fm.m.SetForeignMemory(foreign); err != nil {
		logger.Error(err, "Cannot simulate foreign GPU memory")
	}
	if changed {
		logger.V(4).Info("Simulated GPU processes changed")
		f.reporter.Trigger(name)
	}
	return nil
}

func (f *Fleet) remove(ctx context.Context, name string) {
	f.mu.Lock()
	fm, ok := f.machines[name]
	delete(f.machines, name)
	f.mu.Unlock()
	if !ok {
		return
	}
	f.reporter.Remove(name)
	if fm.m != nil && f.onMachine != nil {
		f.onMachine(name, nil)
	}
	klog.FromContext(ctx).V(2).Info("Stopped simulating node")
}

// Nodes returns the names of the simulated nodes.
func (f *Fleet) Nodes() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, 0, len(f.machines))
	for n := range f.machines {
		out = append(out, n)
	}
	return out
}

func (f *Fleet) tickLoop(ctx context.Context) {
	tick := f.clock.NewTicker(f.cfg.ProgressTick)
	defer tick.Stop()
	lastPublish := f.clock.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C():
		}
		f.Tick()
		if now := f.clock.Now(); now.Sub(lastPublish) >= f.cfg.ProgressPeriod {
			lastPublish = now
			f.PublishProgress(ctx)
		}
	}
}

// Tick advances the progress of all machines' pods.
func (f *Fleet) Tick() {
	f.mu.Lock()
	ms := make([]*Machine, 0, len(f.machines))
	for _, fm := range f.machines {
		if fm.m != nil {
			ms = append(ms, fm.m)
		}
	}
	f.mu.Unlock()
	for _, m := range ms {
		m.Tick()
	}
}

// PublishProgress writes the progress annotation of every simulated pod whose value changed.
func (f *Fleet) PublishProgress(ctx context.Context) {
	logger := klog.FromContext(ctx)
	f.mu.Lock()
	ms := make([]*Machine, 0, len(f.machines))
	for _, fm := range f.machines {
		if fm.m != nil {
			ms = append(ms, fm.m)
		}
	}
	f.mu.Unlock()
	for _, m := range ms {
		for ref, progress := range m.Progress() {
			value := FormatProgress(progress)
			obj, exists, err := f.pods.GetByKey(ref.Namespace + "/" + ref.Name)
			if err == nil && exists {
				if pod, ok := obj.(*v1.Pod); ok && (pod.UID != ref.UID || pod.Annotations[AnnotationProgress] == value) {
					continue
				}
			}
			patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{
				"uid":         ref.UID, // a precondition: never write onto a new pod of the same name
				"annotations": map[string]string{AnnotationProgress: value},
			}})
			_, err = f.kube.CoreV1().Pods(ref.Namespace).Patch(ctx, ref.Name, types.MergePatchType, patch, metav1.PatchOptions{})
			if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
				logger.Error(err, "Writing simulated progress failed", "pod", klog.KRef(ref.Namespace, ref.Name), "simulated", true)
			}
		}
	}
}

// nodeMemory is the host memory of a simulated node: its allocatable memory.
func nodeMemory(node *v1.Node) int64 {
	if q, ok := node.Status.Allocatable[v1.ResourceMemory]; ok && q.Value() > 0 {
		return q.Value()
	}
	if q, ok := node.Status.Capacity[v1.ResourceMemory]; ok && q.Value() > 0 {
		return q.Value()
	}
	return defaultHostMemory
}
