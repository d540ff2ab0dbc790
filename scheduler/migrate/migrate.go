// Package migrate is the controller in kybernate-scheduler that moves suspended pods to other
// nodes: a pod suspended to make room (reason Preemption or TimeSlice) whose own node has no
// room for it, while another node has, is checkpointed into an image in storage all nodes
// read, replaced by a pod on the other node that is restored from the image, and deleted once
// the replacement runs.
//
// It decides by cost: a pod moves only after it has waited MigrationMinWait and when moving its
// memory at MigrationBytesPerSecond (plus a fixed overhead) takes less than the time it has
// waited so far, the estimate of how much longer it would wait for its own node. Target nodes
// must run the same GPU model and driver as the pod's node (the image records both, and the
// replacement is placed by what the image records), be Ready, and satisfy the pod's required
// node affinity and taints. Only pods without a controlling owner move: a Job, ReplicaSet or
// StatefulSet would count the replacement as one pod too many, or the deleted original as one
// too few, and create a duplicate.
//
// The steps, each an API object that survives restarts of the scheduler and the agents:
//
//  1. The pod is marked Checkpointing with kybernate.io/migrate-to=<node>, and a GPUCheckpoint
//     Checkpoint (reason Migration) asks its node's agent for an image. The pod stays
//     suspended on its node. If the checkpoint fails the agent puts it back to Suspended.
//  2. When the agent reports the image verified (status.image: digest, GPU model, driver), the
//     controller creates the replacement: same spec, a new name (<name>-m<5 characters of the
//     checkpoint's UID>), bound to the target node with kybernate.io/gpus of the free GPUs there,
//     kybernate.io/restore-from=<image>, kybernate.io/state=Restoring, and a GPUCheckpoint
//     Restore for it that the target node's agent carries out once the container is restored.
//  3. When the restore succeeded, the original is deleted. When it failed, the replacement is
//     deleted and the original goes back to Suspended on its node, where it was all along.
//
// So the pod is never gone (the original lives until the replacement runs) and never runs
// twice (the original stays suspended while the replacement restores). Images are never
// deleted here.
package migrate

import (
	"context"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
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

const (
	// Overhead is added to every migration's estimate: the replacement pod's start and the
	// API round trips, on top of moving the bytes.
	Overhead = 5 * time.Second
	// MaxAttempts bounds the migrations tried for one suspension.
	MaxAttempts = 3
	// firstBackoff is the wait after a failed migration; it doubles with each failure.
	firstBackoff = 10 * time.Second
	// rescan is how often suspended pods are looked at again: waiting makes a move worth it.
	rescan = 5 * time.Second
)

// Event reasons, on the pod that moves and on its replacement.
const (
	EventMigrating          = "Migrating"
	EventMigrationRestoring = "MigrationRestoring"
	EventMigrated           = "Migrated"
	EventMigrationFailed    = "MigrationFailed"
	EventMigrationAbandoned = "MigrationAbandoned"
)

const scanKey = "*"

// Controller migrates suspended pods.
type Controller struct {
	client      kubernetes.Interface
	kybernate   versioned.Interface
	pods        cache.Indexer
	podLister   corelisters.PodLister
	nodes       corelisters.NodeLister
	gpuNodes    listers.GPUNodeLister
	checkpoints cache.Indexer
	ckLister    listers.GPUCheckpointLister
	recorder    events.EventRecorder
	queue       *keyqueue.Queue
	args        config.ControllerConfiguration
	now         func() time.Time
	// ledger is the program's record of GPU placements: a replacement's memory is reserved
	// there from its choice until the pod informer shows the replacement.
	ledger *gpupod.Ledger
}

// New wires the controller to informers that the caller starts and to the program's ledger of
// GPU placements; call it before the informers run.
func New(client kubernetes.Interface, kybernate versioned.Interface, pods coreinformers.PodInformer, nodes coreinformers.NodeInformer,
	gpuNodes kinformers.GPUNodeInformer, checkpoints kinformers.GPUCheckpointInformer, recorder events.EventRecorder,
	args config.ControllerConfiguration, ledger *gpupod.Ledger) (*Controller, error) {
	if err := skeleton.Register(pods, checkpoints); err != nil {
		return nil, err
	}
	c := &Controller{
		client:      client,
		kybernate:   kybernate,
		pods:        pods.Informer().GetIndexer(),
		podLister:   pods.Lister(),
		nodes:       nodes.Lister(),
		gpuNodes:    gpuNodes.Lister(),
		checkpoints: checkpoints.Informer().GetIndexer(),
		ckLister:    checkpoints.Lister(),
		recorder:    recorder,
		args:        args,
		now:         time.Now,
		ledger:      ledger,
	}
	c.queue = skeleton.Queue("kybernate-migrate", "Migrating pods failed", c.syncKey)
	podHandler := func(obj interface{}) {
		pod, ok := skeleton.Pod(obj)
		if !ok {
			return
		}
		if from := pod.Annotations[kv1.AnnotationMigratedFrom]; from != "" {
			if ns, name, _, ok := parseMigratedFrom(from); ok {
				c.queue.Add(ns + "/" + name)
			}
		}
		if pod.Annotations[kv1.AnnotationMigrateTo] != "" {
			c.queue.Add(pod.Namespace + "/" + pod.Name)
		}
		c.queue.Add(scanKey)
	}
	if _, err := pods.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(old, obj interface{}) {
			if skeleton.GPUChange(old.(*v1.Pod), obj.(*v1.Pod)) {
				podHandler(obj)
			}
		},
		DeleteFunc: podHandler,
	}); err != nil {
		return nil, err
	}
	if _, err := nodes.Informer().AddEventHandler(c.nodeHandler()); err != nil {
		return nil, err
	}
	if _, err := gpuNodes.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(interface{}) { c.queue.Add(scanKey) },
		UpdateFunc: func(_, _ interface{}) { c.queue.Add(scanKey) },
	}); err != nil {
		return nil, err
	}
	ckHandler := func(obj interface{}) {
		ck, ok := obj.(*kv1.GPUCheckpoint)
		if ok && ck.Spec.Action == kv1.ActionSuspend && ended(ck) {
			c.queue.Add(scanKey) // a suspended pod may move once its suspension is seen ended
		}
		if !ok || ck.Spec.Reason != kv1.ReasonMigration {
			return
		}
		if ck.Spec.Action == kv1.ActionCheckpoint {
			c.queue.Add(ck.Namespace + "/" + ck.Spec.PodName)
		} else if ns, name, _, ok := parseMigratedFrom(ck.Annotations[kv1.AnnotationMigratedFrom]); ok {
			c.queue.Add(ns + "/" + name)
		}
	}
	if _, err := checkpoints.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    ckHandler,
		UpdateFunc: func(_, obj interface{}) { ckHandler(obj) },
	}); err != nil {
		return nil, err
	}
	return c, nil
}

// Run processes the queue until ctx ends (the lease is lost).
func (c *Controller) Run(ctx context.Context, workers int) {
	defer utilruntime.HandleCrashWithContext(ctx)
	logger := klog.FromContext(ctx)
	logger.Info("Starting migration controller", "disabled", c.args.DisableMigration, "minWait", c.args.MigrationMinWait.Duration,
		"bytesPerSecond", c.args.MigrationBytesPerSecond)
	// Migrations in flight before a restart go on.
	for _, obj := range c.checkpoints.List() {
		if ck := obj.(*kv1.GPUCheckpoint); ck.Spec.Reason == kv1.ReasonMigration && ck.Spec.Action == kv1.ActionCheckpoint {
			c.queue.Add(ck.Namespace + "/" + ck.Spec.PodName)
		}
	}
	go wait.UntilWithContext(ctx, func(context.Context) { c.queue.Add(scanKey) }, rescan)
	c.queue.Work(ctx, workers)
	<-ctx.Done()
	logger.Info("Stopping migration controller")
}

// ShutDown stops the queue.
func (c *Controller) ShutDown() { c.queue.ShutDown() }

// syncKey syncs one key: the periodic scan or one pod.
func (c *Controller) syncKey(ctx context.Context, key string) error {
	if key == scanKey {
		return c.scan(ctx)
	}
	ns, name, _ := strings.Cut(key, "/")
	return c.syncPod(ctx, ns, name)
}

// syncPod carries a migration of the pod ns/name forward.
func (c *Controller) syncPod(ctx context.Context, ns, name string) error {
	pod, err := c.podLister.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	} else if err != nil {
		return err
	}
	var ck *kv1.GPUCheckpoint
	for _, x := range index.Checkpoints(c.checkpoints, string(pod.UID)) {
		if x.Spec.Action == kv1.ActionCheckpoint && x.Spec.Reason == kv1.ReasonMigration &&
			(ck == nil || x.CreationTimestamp.After(ck.CreationTimestamp.Time) || (x.CreationTimestamp.Equal(&ck.CreationTimestamp) && x.Name > ck.Name)) {
			ck = x
		}
	}
	if ck == nil || ck.Annotations[kv1.AnnotationMigrationResult] != "" || !ended(ck) {
		return nil
	}
	if ck.Status.Phase == kv1.PhaseFailed {
		return c.checkpointFailed(ctx, pod, ck)
	}
	return c.syncReplacement(ctx, pod, ck)
}

func endedAt(ck *kv1.GPUCheckpoint) time.Time {
	if ck.Status.CompletionTime != nil {
		return ck.Status.CompletionTime.Time
	}
	return ck.CreationTimestamp.Time
}

func ended(ck *kv1.GPUCheckpoint) bool {
	return ck.Status.Phase == kv1.PhaseSucceeded || ck.Status.Phase == kv1.PhaseFailed
}
