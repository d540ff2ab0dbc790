// Package spread is the controller in kybernate-scheduler that spreads pods over their node's
// GPUs: a pod that shares its GPU's compute with other resident pods moves onto a GPU of its
// node that nothing uses, by the rule of gpupod.Spread (the cheapest move first: the pod with
// the fewest bytes), when the node's host memory can hold the pod's memory between the suspend
// and the resume (GPUNode status.hostMemory.parkableBytes).
//
// GPUShare and the resume controller bin-pack (MostAllocated), so that large GPUs stay whole
// for large pods. Once nothing waits on the node any more (the queue has drained, pods have
// finished), that packing only slows the pods down: pods resident together on one GPU share its
// compute while another GPU stands idle. The controller acts only on a settled node: no pod
// waits there for GPU memory (suspended to make room or for a turn, nominated to the node, or
// a preemptor waiting for its victims), no move of the agent is in flight there, no pod there
// is being deleted, no placement of the program (a bind, a resume, a restore) is still held in
// its ledger for a pod there, every pod there has stayed where it is for spreadingDelay
// (resident that long, no move of it ended since), and the node is not cordoned. A GPU is
// unused when no pod holds it (resident or suspended) and no other process's memory is on it.
//
// The move is a suspension through a GPUCheckpoint (action Suspend, reason Spread) that the
// node's agent carries out; the resume controller then resumes the pod onto the emptiest GPU
// of its node that holds it (the agent remaps the process). Pods with kybernate.io/preemption:
// Never, pods on several GPUs, and pods inside their kybernate.io/min-runtime stay. A failed
// suspension leaves the pod where it is; it is not tried again during that stay on its GPU.
package spread

import (
	"context"
	"fmt"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	coreinformers "k8s.io/client-go/informers/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"

	"github.com/kybernate/kybernate/apis/config"
	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	kinformers "github.com/kybernate/kybernate/apis/kybernate/client/informers/externalversions/kybernate/v1alpha1"
	listers "github.com/kybernate/kybernate/apis/kybernate/client/listers/kybernate/v1alpha1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/scheduler/internal/index"
	"github.com/kybernate/kybernate/scheduler/internal/keyqueue"
	"github.com/kybernate/kybernate/scheduler/internal/skeleton"
)

// EventSpreading is the reason of the Event on a pod the controller moves.
const EventSpreading = "Spreading"

// heldRecheck is when a node is looked at again after a pod was passed over because the ledger
// still held a placement of it.
const heldRecheck = time.Second

// Controller moves pods off shared GPUs onto unused GPUs of their node.
type Controller struct {
	kybernate   versioned.Interface
	pods        cache.Indexer
	nodes       corelisters.NodeLister
	gpuNodes    listers.GPUNodeLister
	checkpoints cache.Indexer
	recorder    events.EventRecorder
	queue       *keyqueue.Queue
	// ledger holds placements the pod informer does not show yet (GPUShare's binds, the resume
	// and migration controllers' moves): a GPU with one is not unused.
	ledger *gpupod.Ledger
	// defaultMinRuntime applies to pods without kybernate.io/min-runtime.
	defaultMinRuntime time.Duration
	// delay is how long the node's pods must have stayed where they are (spreadingDelay).
	delay time.Duration
	now   func() time.Time
}

// New wires the controller to informers that the caller starts and to the program's ledger of
// GPU placements; call it before the informers run.
func New(kybernate versioned.Interface, pods coreinformers.PodInformer, nodes coreinformers.NodeInformer,
	gpuNodes kinformers.GPUNodeInformer, checkpoints kinformers.GPUCheckpointInformer, recorder events.EventRecorder,
	cfg config.ControllerConfiguration, ledger *gpupod.Ledger) (*Controller, error) {
	if err := skeleton.Register(pods, checkpoints); err != nil {
		return nil, err
	}
	c := &Controller{
		kybernate:         kybernate,
		pods:              pods.Informer().GetIndexer(),
		nodes:             nodes.Lister(),
		gpuNodes:          gpuNodes.Lister(),
		checkpoints:       checkpoints.Informer().GetIndexer(),
		recorder:          recorder,
		ledger:            ledger,
		defaultMinRuntime: cfg.DefaultMinRuntime.Duration,
		delay:             cfg.SpreadingDelay.Duration,
		now:               time.Now,
	}
	// A node's pods must stay put for spreadingDelay before any spreads, so a node's events
	// wait up to a second and are synced once: a pod bound, started and reported by the agent
	// cost one sync, not three.
	c.queue = skeleton.Queue("kybernate-spread", "Spreading pods failed", c.sync).Coalescing(min(time.Second, c.delay))
	if err := skeleton.QueueNodesOfPods(pods, c.queue); err != nil {
		return nil, err
	}
	if _, err := gpuNodes.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj interface{}) { c.queue.Add(obj.(*kv1.GPUNode).Name) },
		UpdateFunc: func(_, obj interface{}) { c.queue.Add(obj.(*kv1.GPUNode).Name) },
	}); err != nil {
		return nil, err
	}
	if _, err := nodes.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(old, obj interface{}) {
			if o, n := old.(*v1.Node), obj.(*v1.Node); o.Spec.Unschedulable != n.Spec.Unschedulable {
				c.queue.Add(n.Name)
			}
		},
	}); err != nil {
		return nil, err
	}
	if _, err := checkpoints.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, obj interface{}) {
			if ck := obj.(*kv1.GPUCheckpoint); ck.Status.NodeName != "" && ended(ck) {
				c.queue.Add(ck.Status.NodeName)
			}
		},
	}); err != nil {
		return nil, err
	}
	return c, nil
}

// Run processes nodes until ctx ends (the lease is lost); it may run again later.
func (c *Controller) Run(ctx context.Context, workers int) {
	defer utilruntime.HandleCrashWithContext(ctx)
	logger := klog.FromContext(ctx)
	logger.Info("Starting spreading controller")
	for _, obj := range c.pods.List() {
		if pod := obj.(*v1.Pod); pod.Spec.NodeName != "" {
			c.queue.Add(pod.Spec.NodeName)
		}
	}
	c.queue.Work(ctx, workers)
	<-ctx.Done()
	logger.Info("Stopping spreading controller")
}

// ShutDown stops the queue; Run must not be called after it.
func (c *Controller) ShutDown() { c.queue.ShutDown() }

// sync moves the pods of one node that the rule moves now.
func (c *Controller) sync(ctx context.Context, node string) error {
	logger := klog.FromContext(ctx)
	gn, err := c.gpuNodes.Get(node)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if n, err := c.nodes.Get(node); err == nil && n.Spec.Unschedulable {
		return nil // being drained: the migration controller moves its pods
	}
	onNode, err := index.Pods(c.pods, index.PodsByNode, node)
	if err != nil {
		return err
	}
	nominated, err := index.Pods(c.pods, index.PodsByNominatedNode, node)
	if err != nil {
		return err
	}
	waiters := append(nominated, index.WaitingPreemptors(c.checkpoints, c.pods, node)...)
	now := c.now()
	v := c.view(gn, c.ledger.Pods(node, onNode), waiters, now)
	if !v.recheck.IsZero() {
		c.queue.AddAfter(node, max(v.recheck.Sub(now), 100*time.Millisecond))
	}
	if v.unsettled != "" {
		logger.V(5).Info("Node not settled: nothing spreads", "node", node, "why", v.unsettled)
		return nil
	}
	// The memory of a moving pod waits in host memory between its suspend and its resume.
	parkable := gn.Status.HostMemory.ParkableBytes
	for _, m := range gpupod.Spread(v.gpus, v.pods, false) {
		from, bytes := v.pods[m.Pod].GPU, v.pods[m.Pod].Bytes
		if bytes > parkable {
			logger.V(4).Info("Not spreading: the node cannot park the pod's memory", "pod", klog.KObj(v.owners[m.Pod]), "node", node,
				"bytes", bytes, "parkable", parkable)
			continue
		}
		parkable -= bytes
		if err := c.move(ctx, v.owners[m.Pod], v.uuids[from], v.uuids[m.GPU], v.sharing[from]); err != nil {
			return err
		}
	}
	return nil
}

// move asks the agent to suspend the pod, for the resume controller to bring it back onto the
// unused GPU.
func (c *Controller) move(ctx context.Context, pod *v1.Pod, from, to string, sharing int) error {
	ck := &kv1.GPUCheckpoint{
		ObjectMeta: metav1.ObjectMeta{
			Name:            checkpointName(pod),
			Namespace:       pod.Namespace,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID}},
		},
		Spec: kv1.GPUCheckpointSpec{
			PodName: pod.Name,
			PodUID:  string(pod.UID),
			Action:  kv1.ActionSuspend,
			Reason:  kv1.ReasonSpread,
		},
	}
	_, err := c.kybernate.KybernateV1alpha1().GPUCheckpoints(ck.Namespace).Create(ctx, ck, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil // requested already
	}
	if err != nil {
		return fmt.Errorf("requesting the suspension of pod %s to spread it: %w", klog.KObj(pod), err)
	}
	moves.Inc()
	klog.FromContext(ctx).V(2).Info("Spreading pod onto an unused GPU", "pod", klog.KObj(pod), "node", pod.Spec.NodeName,
		"from", from, "to", to, "sharing", sharing)
	c.recorder.Eventf(pod, ck, v1.EventTypeNormal, EventSpreading, "Suspend",
		"GPU %s of node %s is shared by %d resident pods while GPU %s is unused: suspending the pod to resume it there",
		from, pod.Spec.NodeName, sharing, to)
	return nil
}

// checkpointName is the same for every request to move the pod during one stay on its GPU, so
// that a retry creates no second suspension.
func checkpointName(pod *v1.Pod) string {
	return strings.ToLower(gpupod.CheckpointName(pod, fmt.Sprintf("-spread-%d", gpupod.ResidentSince(pod).Unix())))
}

func ended(ck *kv1.GPUCheckpoint) bool {
	return ck.Status.Phase == kv1.PhaseSucceeded || ck.Status.Phase == kv1.PhaseFailed
}
