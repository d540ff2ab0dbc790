// Package extender is Kybernate's HTTP scheduler extender: a stock kube-scheduler, configured
// with it in its KubeSchedulerConfiguration, places GPU pods (kybernate.io/gpu, a managed
// resource the scheduler ignores) on individual GPUs and makes room by suspension.
//
// It speaks k8s.io/kube-scheduler/extender/v1 with nodeCacheCapable: filter and prioritize
// account each node's GPUs with gpupod.Accounting and choose GPUs by the same rules as the
// GPUShare plugin; bind chooses the GPUs again under the lock of the program's gpupod.Ledger,
// against everything bound or reserved there (by earlier binds, and by the resume and migration
// controllers kybernate-extender runs beside it), and binds with them in the Binding's
// annotations (the API server copies them onto the pod), so no GPU is given twice however many
// cycles run before the informers catch up.
//
// Preemption keeps progress: when no node fits, filter selects victims with
// gpupod.SelectVictims (the rules of CheckpointPreemption) and requests their suspension
// through GPUCheckpoints; the preemptor fits once their memory is free, and until it is bound
// other pods of lower priority see its demand on that node. The preempt verb never hands
// kube-scheduler a GPU pod to delete: candidate nodes whose victims hold GPUs are dropped.
package extender

import (
	"context"
	"errors"
	"fmt"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/klog/v2"

	"github.com/kybernate/kybernate/apis/config"
	listers "github.com/kybernate/kybernate/apis/kybernate/client/listers/kybernate/v1alpha1"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
	"github.com/kybernate/kybernate/scheduler/internal/index"
)

// Options are the extender's placement and preemption settings.
type Options struct {
	// Strategy is how GPUs are chosen and nodes scored: MostAllocated (bin-pack, the default)
	// or LeastAllocated (spread), as GPUShare's scoringStrategy.
	Strategy config.ScoringStrategyType
	// DefaultMinRuntime protects a pod from suspension for this long after its last resume,
	// unless it says otherwise (kybernate.io/min-runtime), as CheckpointPreemption's.
	DefaultMinRuntime time.Duration
}

// API is what the extender changes in the cluster; a field so unit tests see the calls.
type API struct {
	Bind             func(ctx context.Context, b *v1.Binding) error
	GetPod           func(ctx context.Context, namespace, name string) (*v1.Pod, error)
	CreateCheckpoint func(ctx context.Context, ck *kv1.GPUCheckpoint) error
}

// Extender answers kube-scheduler's extender calls.
type Extender struct {
	opts        Options
	api         API
	pods        cache.Indexer
	podLister   corelisters.PodLister
	gpuNodes    listers.GPUNodeLister
	checkpoints listers.GPUCheckpointLister
	// checkpointIndexer is the store behind checkpoints.
	checkpointIndexer cache.Indexer
	recorder          events.EventRecorder
	now               func() time.Time

	// ledger holds the GPUs of pods bound until the pod informer shows them, and those the
	// controllers reserved; its lock makes each bind's choice see every earlier placement.
	ledger *gpupod.Ledger
}

// New builds an extender on informers the caller starts; pods must carry the
// scheduler/internal/index pod indexes (AddIndexes adds them). ledger is the program's record
// of GPU placements, shared with its controllers and kept up to date from pods by the program
// (gpupod.Ledger.Watch); with nil the extender keeps one of its own.
func New(opts Options, api API, pods cache.SharedIndexInformer, gpuNodes listers.GPUNodeLister, checkpoints cache.Indexer, recorder events.EventRecorder,
	ledger *gpupod.Ledger) (*Extender, error) {
	if opts.Strategy == "" {
		opts.Strategy = config.MostAllocated
	}
	if opts.Strategy != config.MostAllocated && opts.Strategy != config.LeastAllocated {
		return nil, fmt.Errorf("strategy %q: want %s or %s", opts.Strategy, config.MostAllocated, config.LeastAllocated)
	}
	e := &Extender{
		opts: opts, api: api, pods: pods.GetIndexer(), podLister: corelisters.NewPodLister(pods.GetIndexer()),
		gpuNodes: gpuNodes, checkpoints: listers.NewGPUCheckpointLister(checkpoints), checkpointIndexer: checkpoints, recorder: recorder, now: time.Now, ledger: ledger,
	}
	if ledger == nil {
		e.ledger = gpupod.NewLedger()
		if err := e.ledger.Watch(pods); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// AddIndexes adds the pod indexes the extender reads; call it before the informer starts.
func AddIndexes(pods cache.SharedIndexInformer) error {
	if err := index.AddPodIndexes(pods); err != nil {
		return err
	}
	if _, ok := pods.GetIndexer().GetIndexers()[byUID]; ok {
		return nil
	}
	return pods.AddIndexers(cache.Indexers{
		byUID: func(obj interface{}) ([]string, error) { return []string{string(obj.(*v1.Pod).UID)}, nil },
	})
}

// accounting accounts a node's GPUs for pod: the pods bound to it as the ledger corrects them
// (pods bound or resumed there that the informer does not show yet), and preemptors waiting for
// suspensions on the node whose priority is not below pod's (they are placed where they would
// go). nil with a reason when the node has no GPUNode.
func (e *Extender) accounting(node string, pod *v1.Pod) (*gpupod.Accounting, string, error) {
	gn, err := e.gpuNodes.Get(node)
	if apierrors.IsNotFound(err) {
		return nil, "node has no GPUNode: no kybernate agent reports GPUs on it", nil
	}
	if err != nil {
		return nil, "", err
	}
	objs, err := e.pods.ByIndex(index.PodsByNode, node)
	if err != nil {
		return nil, "", err
	}
	listed := make([]*v1.Pod, 0, len(objs))
	for _, o := range objs {
		listed = append(listed, o.(*v1.Pod))
	}
	// A reservation kept after an unclear bind counts until the pod shows up bound (on another
	// node, the ledger drops it).
	pods := make([]*v1.Pod, 0, len(listed))
	seen := make(map[types.UID]bool, len(listed))
	for _, p := range e.ledger.Pods(node, listed) {
		if p.UID == pod.UID {
			continue
		}
		seen[p.UID] = true
		pods = append(pods, p)
	}
	for _, w := range e.waitingPreemptors(node) {
		if w.UID != pod.UID && !seen[w.UID] && corev1helpers.PodPriority(w) >= corev1helpers.PodPriority(pod) {
			pods = append(pods, w)
		}
	}
	return gpupod.NewAccounting(gn, pods), "", nil
}

// waitingPreemptors are the unbound pods that suspensions on the node were requested for.
func (e *Extender) waitingPreemptors(node string) []*v1.Pod {
	return index.WaitingPreemptors(e.checkpointIndexer, e.pods, node)
}

// suspensionsOf returns the Suspend GPUCheckpoints requested for the preemptor, in flight and
// failed.
func (e *Extender) suspensionsOf(pod *v1.Pod) (inFlight int, failed map[types.UID]bool) {
	failed = map[types.UID]bool{}
	cks, err := e.checkpoints.List(preemptorSelector(pod.UID))
	if err != nil {
		return 0, failed
	}
	for _, ck := range cks {
		switch ck.Status.Phase {
		case kv1.PhaseFailed:
			failed[types.UID(ck.Spec.PodUID)] = true
		case kv1.PhaseSucceeded:
		default:
			inFlight++
		}
	}
	return inFlight, failed
}

// bind chooses the pod's GPUs on the node and binds it with them.
func (e *Extender) bind(ctx context.Context, namespace, name string, uid types.UID, node string) error {
	logger := klog.FromContext(ctx)
	pod, err := e.podLister.Pods(namespace).Get(name)
	if err != nil || pod.UID != uid {
		// The informer may lag behind the scheduler's; ask the API server.
		if pod, err = e.api.GetPod(ctx, namespace, name); err != nil {
			return fmt.Errorf("getting pod %s/%s: %w", namespace, name, err)
		}
	}
	if pod.UID != uid {
		return fmt.Errorf("pod %s/%s has UID %s, not %s: it was replaced", namespace, name, pod.UID, uid)
	}
	d, err := gpupod.PodDemand(pod)
	if err != nil {
		return err
	}
	binding := &v1.Binding{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, UID: uid},
		Target:     v1.ObjectReference{Kind: "Node", Name: node},
	}
	if d.Count == 0 {
		return e.api.Bind(ctx, binding)
	}
	chosen, err := e.reserve(ctx, pod, d, node)
	if err != nil {
		return err
	}
	binding.Annotations = map[string]string{kv1.AnnotationGPUs: gpupod.FormatGPUs(chosen)}
	if err := e.api.Bind(ctx, binding); err != nil {
		// Only an answer of the API server says the binding was not made; after a timeout it
		// may have been, so the GPUs stay reserved until the pod is bound again or deleted.
		var status apierrors.APIStatus
		if errors.As(err, &status) {
			e.ledger.Release(pod.UID)
		}
		return fmt.Errorf("binding pod %s to node %s with GPUs %v: %w", klog.KObj(pod), node, chosen, err)
	}
	logger.V(2).Info("Bound pod to GPUs", "pod", klog.KObj(pod), "node", node, "gpus", chosen)
	return nil
}

// reserve chooses the pod's GPUs on the node and reserves them, under the ledger's lock that
// makes each choice see every earlier one; the API call that binds runs outside it.
func (e *Extender) reserve(ctx context.Context, pod *v1.Pod, d gpupod.Demand, node string) ([]string, error) {
	e.ledger.Lock()
	defer e.ledger.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("the scheduler gave up on binding pod %s: %w", klog.KObj(pod), err)
	}
	acc, why, err := e.accounting(node, pod)
	if err != nil {
		return nil, err
	}
	if acc == nil {
		return nil, fmt.Errorf("node %s: %s", node, why)
	}
	chosen := acc.Choose(d, e.opts.Strategy)
	if chosen == nil {
		return nil, fmt.Errorf("node %s has too few free GPUs %s now: another pod took them since filtering", node, describe(d))
	}
	placed := pod.DeepCopy()
	placed.Spec.NodeName = node
	if placed.Annotations == nil {
		placed.Annotations = map[string]string{}
	}
	placed.Annotations[kv1.AnnotationGPUs] = gpupod.FormatGPUs(chosen)
	e.ledger.Reserve(gpupod.OwnerScheduler, placed, 0)
	return chosen, nil
}

func describe(d gpupod.Demand) string {
	s := fmt.Sprintf("(pod needs %d", d.Count)
	if d.Model != "" {
		s += " " + d.Model
	}
	if d.Whole() {
		return s + " whole GPUs)"
	}
	return s + " with " + gpupod.GiB(d.Bytes) + " each)"
}
