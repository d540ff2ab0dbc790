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
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
	"k8s.io/klog/v2"

	"github.com/kybernate/kybernate/apis/config"
	"github.com/kybernate/kybernate/apis/kybernate/client/clientset/versioned"
	kinformers "github.com/kybernate/kybernate/apis/kybernate/client/informers/externalversions/kybernate/v1alpha1"
	listers "github.com/kybernate/kybernate/apis/kybernate/client/listers/kybernate/v1alpha1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/scheduler/internal/index"
	"github.com/kybernate/kybernate/scheduler/internal/keyqueue"
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
}

// New wires the controller to informers that the caller starts; call it before they run.
func New(client kubernetes.Interface, kybernate versioned.Interface, pods coreinformers.PodInformer, nodes coreinformers.NodeInformer,
	gpuNodes kinformers.GPUNodeInformer, checkpoints kinformers.GPUCheckpointInformer, recorder events.EventRecorder,
	args config.ControllerConfiguration) (*Controller, error) {
	if err := index.AddPodIndexes(pods.Informer()); err != nil {
		return nil, err
	}
	if err := index.AddCheckpointIndexes(checkpoints.Informer()); err != nil {
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
	}
	c.queue = keyqueue.New("kybernate-migrate", "Migrating pods failed", c.syncKey)
	podHandler := func(obj interface{}) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		pod, ok := obj.(*v1.Pod)
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
			o, p := old.(*v1.Pod), obj.(*v1.Pod)
			if o.Annotations[kv1.AnnotationState] != p.Annotations[kv1.AnnotationState] || o.Status.Phase != p.Status.Phase ||
				o.Spec.NodeName != p.Spec.NodeName || o.Annotations[kv1.AnnotationGPUs] != p.Annotations[kv1.AnnotationGPUs] ||
				!o.DeletionTimestamp.Equal(p.DeletionTimestamp) {
				podHandler(p)
			}
		},
		DeleteFunc: podHandler,
	}); err != nil {
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

// candidate is a suspended pod that may move.
type candidate struct {
	pod        *v1.Pod
	demand     gpupod.Demand
	suspension *kv1.GPUCheckpoint
	waited     time.Duration
	bytes      int64
	attempt    int
}

// scan starts the migrations that are worth it now.
func (c *Controller) scan(ctx context.Context) error {
	if c.args.DisableMigration {
		return nil
	}
	logger := klog.FromContext(ctx)
	var cands []candidate
	for _, obj := range c.pods.List() {
		if cand, ok := c.candidate(obj.(*v1.Pod)); ok {
			cands = append(cands, cand)
		}
	}
	if len(cands) == 0 {
		return nil
	}
	slices.SortFunc(cands, func(a, b candidate) int {
		if pa, pb := corev1helpers.PodPriority(a.pod), corev1helpers.PodPriority(b.pod); pa != pb {
			return int(pb) - int(pa)
		}
		return int(b.waited - a.waited)
	})
	accs := map[string]*gpupod.Accounting{}
	for _, cand := range cands {
		from := cand.pod.Spec.NodeName
		src, err := c.gpuNodes.Get(from)
		if err != nil {
			continue
		}
		accA, err := c.accounting(from, accs)
		if err != nil {
			return err
		}
		gpus := gpupod.AssignedGPUs(cand.pod)
		if accA.FitsSlotHeld(cand.demand, gpus) {
			continue // the resume controller brings it back where it is
		}
		accA.Release(gpus)
		fitsHome := accA.Choose(cand.demand, config.MostAllocated) != nil
		accA.Hold(gpus)
		if fitsHome {
			continue
		}
		estimate := Estimate(cand.bytes, c.args.MigrationBytesPerSecond)
		if cand.waited < c.args.MigrationMinWait.Duration || estimate > cand.waited {
			logger.V(5).Info("Suspended pod waits on its node", "pod", klog.KObj(cand.pod), "waited", cand.waited, "estimate", estimate)
			continue
		}
		want := Requirements{Model: modelOf(src, gpus), DriverVersion: src.Status.DriverVersion,
			CUDADriverVersion: src.Status.CUDADriverVersion, Simulated: simulated(src)}
		target, uuids, err := c.target(cand.pod, cand.demand, want, accs)
		if err != nil {
			return err
		}
		if target == "" {
			logger.V(4).Info("No other node has room for the suspended pod", "pod", klog.KObj(cand.pod), "model", want.Model)
			continue
		}
		if err := c.start(ctx, cand, target, estimate); err != nil {
			return err
		}
		accs[target].Take(cand.demand.WithModel(want.Model), uuids)
	}
	return nil
}

// Estimate is how long moving bytes takes at rate bytes per second, with the Overhead.
func Estimate(bytes, rate int64) time.Duration {
	if rate <= 0 {
		return Overhead
	}
	return Overhead + time.Duration(float64(bytes)/float64(rate)*float64(time.Second))
}

// candidate reports whether pod is a suspended pod that may move now.
func (c *Controller) candidate(pod *v1.Pod) (candidate, bool) {
	if kv1.PodGPUState(pod.Annotations[kv1.AnnotationState]) != kv1.PodSuspended || pod.DeletionTimestamp != nil ||
		pod.Spec.NodeName == "" || pod.Status.Phase != v1.PodRunning {
		return candidate{}, false
	}
	// A controlling owner (Job, ReplicaSet, StatefulSet, ...) would replace the deleted
	// original itself, or count the replacement as one pod too many.
	if metav1.GetControllerOf(pod) != nil || len(pod.Spec.Containers) != 1 {
		return candidate{}, false
	}
	d, err := gpupod.PodDemand(pod)
	if err != nil || d.Count == 0 || len(gpupod.AssignedGPUs(pod)) != d.Count {
		return candidate{}, false
	}
	cks := index.Checkpoints(c.checkpoints, string(pod.UID))
	var suspension *kv1.GPUCheckpoint
	for _, ck := range cks {
		if ck.Spec.Action == kv1.ActionSuspend && ck.Status.Phase == kv1.PhaseSucceeded &&
			(suspension == nil || endedAt(ck).After(endedAt(suspension))) {
			suspension = ck
		}
	}
	if suspension == nil || (suspension.Spec.Reason != kv1.ReasonPreemption && suspension.Spec.Reason != kv1.ReasonTimeSlice) {
		return candidate{}, false
	}
	attempt, last := 0, time.Time{}
	for _, ck := range cks {
		if !ended(ck) && ck.Spec.Action != kv1.ActionSuspend {
			return candidate{}, false // a resume or a migration in flight
		}
		if ck.Spec.Action != kv1.ActionCheckpoint || ck.Spec.Reason != kv1.ReasonMigration || ck.CreationTimestamp.Time.Before(endedAt(suspension)) {
			continue
		}
		if ck.Annotations[kv1.AnnotationMigrationResult] == "" && ck.Status.Phase == kv1.PhaseSucceeded {
			return candidate{}, false // being finished by syncPod
		}
		attempt++
		if t := endedAt(ck); t.After(last) {
			last = t
		}
	}
	if attempt >= MaxAttempts || (attempt > 0 && c.now().Before(last.Add(firstBackoff<<(attempt-1)))) {
		return candidate{}, false
	}
	bytes := suspension.Status.BytesMoved
	if bytes == 0 {
		bytes = d.Bytes * int64(d.Count)
	}
	return candidate{pod: pod, demand: d, suspension: suspension, waited: c.now().Sub(endedAt(suspension)), bytes: bytes, attempt: attempt}, true
}

// Requirements are what a target node must have to restore an image.
type Requirements struct {
	Model             string
	DriverVersion     string
	CUDADriverVersion int32
	Simulated         bool
}

// Compatible reports whether a node's GPUNode meets the requirements (the GPU model is checked
// per GPU by the accounting) and says why not.
func (r Requirements) Compatible(gn *kv1.GPUNode) (bool, string) {
	switch {
	case !meta.IsStatusConditionTrue(gn.Status.Conditions, kv1.GPUNodeReady):
		return false, "not Ready"
	case gn.Status.DriverVersion != r.DriverVersion || gn.Status.CUDADriverVersion != r.CUDADriverVersion:
		return false, fmt.Sprintf("driver %s (CUDA %d), the image needs %s (CUDA %d)", gn.Status.DriverVersion, gn.Status.CUDADriverVersion, r.DriverVersion, r.CUDADriverVersion)
	case simulated(gn) != r.Simulated:
		return false, "simulated and real nodes do not share images"
	}
	return true, ""
}

// target picks the node and GPUs a pod moves to: the first node by name that meets want,
// admits the pod and has room now; "" when none.
func (c *Controller) target(pod *v1.Pod, d gpupod.Demand, want Requirements, accs map[string]*gpupod.Accounting) (string, []string, error) {
	gns, err := c.gpuNodes.List(labels.Everything())
	if err != nil {
		return "", nil, err
	}
	slices.SortFunc(gns, func(a, b *kv1.GPUNode) int { return strings.Compare(a.Name, b.Name) })
	affinity := nodeaffinity.GetRequiredNodeAffinity(pod)
	for _, gn := range gns {
		if gn.Name == pod.Spec.NodeName {
			continue
		}
		if ok, _ := want.Compatible(gn); !ok {
			continue
		}
		node, err := c.nodes.Get(gn.Name)
		if err != nil || node.DeletionTimestamp != nil || node.Spec.Unschedulable {
			continue
		}
		if ok, _ := affinity.Match(node); !ok {
			continue
		}
		if _, untolerated := corev1helpers.FindMatchingUntoleratedTaint(node.Spec.Taints, pod.Spec.Tolerations, func(t *v1.Taint) bool {
			return t.Effect == v1.TaintEffectNoSchedule || t.Effect == v1.TaintEffectNoExecute
		}); untolerated {
			continue
		}
		acc, err := c.accounting(gn.Name, accs)
		if err != nil {
			return "", nil, err
		}
		if uuids := acc.Choose(d.WithModel(want.Model), config.MostAllocated); uuids != nil {
			return gn.Name, uuids, nil
		}
	}
	return "", nil, nil
}

// accounting returns the GPU accounting of a node: its pods, the GPUs nominated preemptors
// will take, and the pods on their way there (migrations in flight).
func (c *Controller) accounting(node string, accs map[string]*gpupod.Accounting) (*gpupod.Accounting, error) {
	if acc, ok := accs[node]; ok {
		return acc, nil
	}
	gn, err := c.gpuNodes.Get(node)
	if err != nil {
		return nil, err
	}
	onNode, err := index.Pods(c.pods, index.PodsByNode, node)
	if err != nil {
		return nil, err
	}
	acc := gpupod.NewAccounting(gn, onNode)
	nominated, err := index.Pods(c.pods, index.PodsByNominatedNode, node)
	if err != nil {
		return nil, err
	}
	for _, p := range nominated {
		if p.Spec.NodeName != "" {
			continue
		}
		if d, err := gpupod.PodDemand(p); err == nil && d.Count > 0 {
			if uuids := acc.Choose(d, config.MostAllocated); uuids != nil {
				acc.Take(d, uuids)
			}
		}
	}
	for _, obj := range c.pods.List() {
		p := obj.(*v1.Pod)
		if p.Annotations[kv1.AnnotationMigrateTo] != node || p.DeletionTimestamp != nil {
			continue
		}
		if s := kv1.PodGPUState(p.Annotations[kv1.AnnotationState]); s != kv1.PodCheckpointing && s != kv1.PodCheckpointed {
			continue
		}
		if d, err := gpupod.PodDemand(p); err == nil && d.Count > 0 {
			if uuids := acc.Choose(d, config.MostAllocated); uuids != nil {
				acc.Take(d, uuids)
			}
		}
	}
	accs[node] = acc
	return acc, nil
}

// start marks the pod Checkpointing and asks its agent for an image.
func (c *Controller) start(ctx context.Context, cand candidate, target string, estimate time.Duration) error {
	logger := klog.FromContext(ctx)
	pod := cand.pod
	mark := map[string]string{kv1.AnnotationMigrateTo: target}
	if err := gpupod.SetState(mark, gpupod.StateOf(pod), kv1.PodCheckpointing); err != nil {
		return fmt.Errorf("pod %s: %w", klog.KObj(pod), err)
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
		// The pod must still be the one we looked at: a conflict means someone else acted.
		"resourceVersion": pod.ResourceVersion,
		"annotations":     mark,
	}})
	if err != nil {
		return err
	}
	if _, err := c.client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("marking pod %s Checkpointing: %w", klog.KObj(pod), err)
	}
	ck := &kv1.GPUCheckpoint{
		ObjectMeta: metav1.ObjectMeta{
			Name:        checkpointName(pod, cand.suspension, cand.attempt),
			Namespace:   pod.Namespace,
			Labels:      map[string]string{kv1.LabelMigrationOf: string(pod.UID)},
			Annotations: map[string]string{kv1.AnnotationMigrateTo: target},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID,
			}},
		},
		Spec: kv1.GPUCheckpointSpec{
			PodName: pod.Name,
			PodUID:  string(pod.UID),
			Action:  kv1.ActionCheckpoint,
			Reason:  kv1.ReasonMigration,
		},
	}
	created, err := c.kybernate.KybernateV1alpha1().GPUCheckpoints(pod.Namespace).Create(ctx, ck, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		if uerr := c.backToSuspended(ctx, pod, kv1.PodCheckpointing); uerr != nil {
			logger.Error(uerr, "Could not undo the Checkpointing mark", "pod", klog.KObj(pod))
		}
		return fmt.Errorf("requesting the checkpoint of pod %s: %w", klog.KObj(pod), err)
	}
	if created == nil {
		created = ck
	}
	migrations.WithLabelValues("Started").Inc()
	logger.V(2).Info("Migrating pod", "pod", klog.KObj(pod), "from", pod.Spec.NodeName, "to", target, "bytes", cand.bytes,
		"waited", cand.waited, "estimate", estimate, "attempt", cand.attempt+1)
	c.recorder.Eventf(pod, created, v1.EventTypeNormal, EventMigrating, "Migrate",
		"No room on node %s after %s suspended; node %s has room: checkpointing %s to move it there (estimated %s)",
		pod.Spec.NodeName, cand.waited.Round(time.Second), target, quantity(cand.bytes), estimate.Round(time.Second))
	return nil
}

// syncPod carries a migration of the pod ns/name forward.
func (c *Controller) syncPod(ctx context.Context, ns, name string) error {
	logger := klog.FromContext(ctx)
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
	target := ck.Annotations[kv1.AnnotationMigrateTo]
	if ck.Status.Phase == kv1.PhaseFailed {
		// The agent put the pod back to Suspended (its rollback); nothing else was made.
		c.recorder.Eventf(pod, ck, v1.EventTypeWarning, EventMigrationFailed, "Migrate",
			"Checkpoint for the move to node %s failed; the pod stays suspended on node %s: %s", target, pod.Spec.NodeName, ck.Status.Message)
		migrations.WithLabelValues("CheckpointFailed").Inc()
		if kv1.PodGPUState(pod.Annotations[kv1.AnnotationState]) == kv1.PodCheckpointing {
			// The agent never took it on; release the mark.
			if err := c.backToSuspended(ctx, pod, kv1.PodCheckpointing); err != nil {
				return err
			}
		}
		return c.markResult(ctx, ck, kv1.MigrationFailed)
	}

	replName := replacementName(pod, ck)
	restoreName := replName + "-restore"
	restore, err := c.ckLister.GPUCheckpoints(ns).Get(restoreName)
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	repl, err := c.podLister.Pods(ns).Get(replName)
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	if repl != nil && repl.Annotations[kv1.AnnotationMigratedFrom] != gpupod.FormatMigratedFrom(pod) {
		return c.abandon(ctx, pod, ck, fmt.Sprintf("a pod %s/%s that is not its replacement exists", ns, replName))
	}

	switch {
	case restore != nil && restore.Status.Phase == kv1.PhaseSucceeded && repl != nil:
		// The replacement runs: the original goes.
		uid := pod.UID
		c.recorder.Eventf(repl, restore, v1.EventTypeNormal, EventMigrated, "Migrate",
			"Restored on node %s from %s: replaces pod %s, which was suspended on node %s", repl.Spec.NodeName, ck.Status.ImageLocation, pod.Name, pod.Spec.NodeName)
		c.recorder.Eventf(pod, ck, v1.EventTypeNormal, EventMigrated, "Migrate",
			"Moved to node %s as pod %s; deleting this pod", repl.Spec.NodeName, repl.Name)
		if err := c.client.CoreV1().Pods(ns).Delete(ctx, pod.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("deleting the migrated pod %s: %w", klog.KObj(pod), err)
		}
		migrations.WithLabelValues(kv1.MigrationSucceeded).Inc()
		duration.Observe(c.now().Sub(ck.CreationTimestamp.Time).Seconds())
		movedBytes.Add(float64(ck.Status.BytesMoved))
		logger.V(2).Info("Migrated pod", "pod", klog.KObj(pod), "replacement", klog.KObj(repl), "node", repl.Spec.NodeName,
			"duration", c.now().Sub(ck.CreationTimestamp.Time))
		if err := c.markResult(ctx, ck, kv1.MigrationSucceeded); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		return nil

	case restore != nil && (restore.Status.Phase == kv1.PhaseFailed || repl == nil) ||
		repl != nil && (repl.Status.Phase == v1.PodFailed || repl.DeletionTimestamp != nil):
		// The restore failed (or the replacement went): the original, still suspended where
		// it was, stays.
		msg := "the replacement pod went away"
		if restore != nil && restore.Status.Phase == kv1.PhaseFailed {
			msg = restore.Status.Message
		}
		if repl != nil {
			ruid := repl.UID
			if err := c.client.CoreV1().Pods(ns).Delete(ctx, repl.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &ruid}}); err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("deleting replacement %s after its restore failed: %w", klog.KObj(repl), err)
			}
		}
		if err := c.backToSuspended(ctx, pod, gpupod.StateOf(pod)); err != nil {
			return err
		}
		c.recorder.Eventf(pod, ck, v1.EventTypeWarning, EventMigrationFailed, "Migrate",
			"Restore on node %s failed, replacement %s deleted; the pod stays suspended on node %s (image kept at %s): %s",
			target, replName, pod.Spec.NodeName, ck.Status.ImageLocation, msg)
		migrations.WithLabelValues("RestoreFailed").Inc()
		return c.markResult(ctx, ck, kv1.MigrationFailed)

	case repl != nil && restore == nil:
		return c.createRestore(ctx, pod, repl, ck, restoreName)

	case repl != nil:
		return nil // restoring
	}

	// The image is there: place the replacement.
	if kv1.PodGPUState(pod.Annotations[kv1.AnnotationState]) != kv1.PodCheckpointed || pod.DeletionTimestamp != nil {
		return c.abandon(ctx, pod, ck, fmt.Sprintf("the pod is %s, not Checkpointed", pod.Annotations[kv1.AnnotationState]))
	}
	img := ck.Status.Image
	if img == nil || img.Digest == "" || ck.Status.ImageLocation == "" {
		return c.abandon(ctx, pod, ck, "the agent reported no verified image")
	}
	d, err := gpupod.PodDemand(pod)
	if err != nil {
		return c.abandon(ctx, pod, ck, err.Error())
	}
	want := Requirements{Model: img.GPUModel, DriverVersion: img.DriverVersion, CUDADriverVersion: img.CUDADriverVersion, Simulated: img.Simulated}
	accs := map[string]*gpupod.Accounting{}
	node, uuids := "", []string(nil)
	// The node chosen at the start first; any other that meets the image's needs else.
	if gn, err := c.gpuNodes.Get(target); err == nil {
		if ok, _ := want.Compatible(gn); ok {
			if acc, err := c.accountingWithout(target, pod, accs); err == nil {
				if uuids = acc.Choose(d.WithModel(want.Model), config.MostAllocated); uuids != nil {
					node = target
				}
			}
		}
	}
	if node == "" {
		if node, uuids, err = c.target(pod, d, want, accs); err != nil {
			return err
		}
	}
	if node == "" {
		return c.abandon(ctx, pod, ck, fmt.Sprintf("no node with %s GPUs and driver %s has room any more", want.Model, want.DriverVersion))
	}
	r := Replacement(pod, replName, node, uuids, ck.Status.ImageLocation)
	created, err := c.client.CoreV1().Pods(ns).Create(ctx, r, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil // the informer brings it
	}
	if err != nil {
		return fmt.Errorf("creating replacement %s/%s: %w", ns, replName, err)
	}
	logger.V(2).Info("Created replacement pod", "pod", klog.KObj(pod), "replacement", klog.KObj(created), "node", node, "gpus", uuids, "image", ck.Status.ImageLocation)
	c.recorder.Eventf(pod, ck, v1.EventTypeNormal, EventMigrationRestoring, "Migrate",
		"Image %s verified (%s, digest %s); replacement %s restores it on node %s, GPUs %s", ck.Status.ImageLocation,
		quantity(img.SizeBytes), img.Digest, created.Name, node, strings.Join(uuids, ","))
	return c.createRestore(ctx, pod, created, ck, restoreName)
}

// accountingWithout is the accounting of node without the pod's own migration mark.
func (c *Controller) accountingWithout(node string, pod *v1.Pod, accs map[string]*gpupod.Accounting) (*gpupod.Accounting, error) {
	// The pod itself is counted on its target by accounting (migrations in flight); give its
	// GPUs back by computing without it.
	gn, err := c.gpuNodes.Get(node)
	if err != nil {
		return nil, err
	}
	onNode, err := index.Pods(c.pods, index.PodsByNode, node)
	if err != nil {
		return nil, err
	}
	acc := gpupod.NewAccounting(gn, onNode)
	for _, obj := range c.pods.List() {
		p := obj.(*v1.Pod)
		if p.UID == pod.UID || p.Annotations[kv1.AnnotationMigrateTo] != node || p.DeletionTimestamp != nil {
			continue
		}
		if s := kv1.PodGPUState(p.Annotations[kv1.AnnotationState]); s != kv1.PodCheckpointing && s != kv1.PodCheckpointed {
			continue
		}
		if d, err := gpupod.PodDemand(p); err == nil && d.Count > 0 {
			if uuids := acc.Choose(d, config.MostAllocated); uuids != nil {
				acc.Take(d, uuids)
			}
		}
	}
	accs[node] = acc
	return acc, nil
}

// createRestore asks the replacement's agent to restore its GPU memory from the image.
func (c *Controller) createRestore(ctx context.Context, pod, repl *v1.Pod, ck *kv1.GPUCheckpoint, name string) error {
	rck := &kv1.GPUCheckpoint{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Namespace:   pod.Namespace,
			Labels:      map[string]string{kv1.LabelMigrationOf: string(pod.UID)},
			Annotations: map[string]string{kv1.AnnotationMigratedFrom: gpupod.FormatMigratedFrom(pod)},
			// Owned by the original: it outlives a failed replacement, so that the failure is
			// remembered, and goes with the original once the move is done.
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID}},
		},
		Spec: kv1.GPUCheckpointSpec{
			PodName:    repl.Name,
			PodUID:     string(repl.UID),
			Action:     kv1.ActionRestore,
			Reason:     kv1.ReasonMigration,
			Image:      ck.Status.ImageLocation,
			TargetGPUs: gpupod.AssignedGPUs(repl),
		},
	}
	if _, err := c.kybernate.KybernateV1alpha1().GPUCheckpoints(pod.Namespace).Create(ctx, rck, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("requesting the restore of %s: %w", klog.KObj(repl), err)
	}
	return nil
}

// abandon gives a migration up after its image was written: the pod stays suspended on its
// node; the image stays too.
func (c *Controller) abandon(ctx context.Context, pod *v1.Pod, ck *kv1.GPUCheckpoint, why string) error {
	if err := c.backToSuspended(ctx, pod, gpupod.StateOf(pod)); err != nil {
		return err
	}
	c.recorder.Eventf(pod, ck, v1.EventTypeWarning, EventMigrationAbandoned, "Migrate",
		"Move to node %s given up, the pod stays suspended on node %s: %s", ck.Annotations[kv1.AnnotationMigrateTo], pod.Spec.NodeName, why)
	klog.FromContext(ctx).V(2).Info("Migration abandoned", "pod", klog.KObj(pod), "reason", why)
	migrations.WithLabelValues(kv1.MigrationAbandoned).Inc()
	return c.markResult(ctx, ck, kv1.MigrationAbandoned)
}

// backToSuspended puts a pod that was marked for a migration (in state from) back to
// Suspended and removes the mark. A pod that is Suspended already, or in a state from which
// the state machine does not lead back to Suspended, only loses the mark.
func (c *Controller) backToSuspended(ctx context.Context, pod *v1.Pod, from kv1.PodGPUState) error {
	ann := map[string]any{kv1.AnnotationMigrateTo: nil}
	state := map[string]string{}
	if err := gpupod.SetState(state, from, kv1.PodSuspended); err == nil {
		ann[kv1.AnnotationState] = state[kv1.AnnotationState]
	} else if from != kv1.PodSuspended {
		klog.FromContext(ctx).Info("Leaving the pod's GPU state as it is", "pod", klog.KObj(pod), "err", err)
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
		"uid":         pod.UID,
		"annotations": ann,
	}})
	if err != nil {
		return err
	}
	if _, err := c.client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("putting pod %s back to Suspended: %w", klog.KObj(pod), err)
	}
	return nil
}

func (c *Controller) markResult(ctx context.Context, ck *kv1.GPUCheckpoint, result string) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{kv1.AnnotationMigrationResult: result}}})
	if err != nil {
		return err
	}
	_, err = c.kybernate.KybernateV1alpha1().GPUCheckpoints(ck.Namespace).Patch(ctx, ck.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("recording migration result %s on %s: %w", result, klog.KObj(ck), err)
	}
	return nil
}

// Replacement is the pod that replaces pod on node: the same spec, bound to node with the GPUs
// gpus, restored from image. Labels and annotations are kept but for Kybernate's outputs;
// a controlling owner is never copied (such pods do not move).
func Replacement(pod *v1.Pod, name, node string, gpus []string, image string) *v1.Pod {
	r := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Namespace:   pod.Namespace,
			Labels:      map[string]string{},
			Annotations: map[string]string{},
		},
		Spec: *pod.Spec.DeepCopy(),
	}
	for k, v := range pod.Labels {
		if k != kv1.LabelTimeSlice {
			r.Labels[k] = v
		}
	}
	for k, v := range pod.Annotations {
		if !gpupod.IsOutput(k) {
			r.Annotations[k] = v
		}
	}
	for _, o := range pod.OwnerReferences {
		if o.Controller == nil || !*o.Controller {
			r.OwnerReferences = append(r.OwnerReferences, o)
		}
	}
	r.Annotations[kv1.AnnotationRestoreFrom] = image
	r.Annotations[kv1.AnnotationGPUs] = gpupod.FormatGPUs(gpus)
	// The replacement continues the checkpointed pod: Checkpointed -> Restoring, which the
	// state machine allows (gpupod's table test).
	_ = gpupod.SetState(r.Annotations, kv1.PodCheckpointed, kv1.PodRestoring)
	r.Annotations[kv1.AnnotationMigratedFrom] = gpupod.FormatMigratedFrom(pod)
	r.Spec.NodeName = node
	r.Spec.EphemeralContainers = nil
	r.Spec.SchedulingGates = nil
	r.Spec.Hostname = ""
	return r
}

func parseMigratedFrom(s string) (ns, name string, uid types.UID, ok bool) {
	ns, name, uid, err := gpupod.ParseMigratedFrom(s)
	return ns, name, uid, err == nil
}

// replacementName is <name>-m<5 characters of the checkpoint's UID>, within 63 characters
// (the pod's hostname).
func replacementName(pod *v1.Pod, ck *kv1.GPUCheckpoint) string {
	uid := strings.ReplaceAll(string(ck.UID), "-", "")
	if len(uid) > 5 {
		uid = uid[:5]
	}
	suffix := "-m" + uid
	name := pod.Name
	if limit := 63 - len(suffix); len(name) > limit {
		name = strings.TrimRight(name[:limit], "-.")
	}
	return name + suffix
}

func checkpointName(pod *v1.Pod, suspension *kv1.GPUCheckpoint, attempt int) string {
	uid := string(suspension.UID)
	if len(uid) > 8 {
		uid = uid[:8]
	}
	suffix := fmt.Sprintf("-migrate-%s-%d", uid, attempt+1)
	name := pod.Name
	if limit := 253 - len(suffix); len(name) > limit {
		name = name[:limit]
	}
	return name + suffix
}

// modelOf is the model of the pod's GPUs on its node.
func modelOf(gn *kv1.GPUNode, gpus []string) string {
	for _, g := range gn.Status.GPUs {
		if len(gpus) > 0 && g.UUID == gpus[0] {
			return g.Model
		}
	}
	return ""
}

func simulated(gn *kv1.GPUNode) bool {
	return meta.IsStatusConditionTrue(gn.Status.Conditions, kv1.GPUNodeSimulated)
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
