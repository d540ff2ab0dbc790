// Package gpushare is the scheduler plugin that places GPU pods on individual GPUs.
//
// A pod asks for kybernate.io/gpu (GPUs) and may annotate kybernate.io/gpu-memory (VRAM on each
// GPU; the whole GPU without it) and kybernate.io/gpu-model. The plugin reads each node's GPUs
// from its GPUNode (written by the node agent), accounts the VRAM and slots taken by the pods on
// the node (suspended pods keep their slot but hold no VRAM), filters and scores nodes by the
// GPUs the pod would get, reserves those GPUs, and binds the pod with their UUIDs in its
// kybernate.io/gpus annotation. The containerd shim exposes exactly those GPUs.
package gpushare

import (
	"context"
	"errors"
	"fmt"
	"strings"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework"

	"github.com/kybernate/kybernate/apis/config"
	"github.com/kybernate/kybernate/apis/config/validation"
	listers "github.com/kybernate/kybernate/apis/kybernate/client/listers/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/apis/kybernate/connect"
	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
	"github.com/kybernate/kybernate/gpupod"
)

// Name is the plugin's name in a KubeSchedulerConfiguration.
const Name = "GPUShare"

// GPUShare places GPU pods on individual GPUs.
type GPUShare struct {
	handle   framework.Handle
	strategy config.ScoringStrategyType
	gpuNodes listers.GPUNodeLister
	// ledger holds the GPUs reserved for pods until their kybernate.io/gpus is in the
	// snapshot: the scheduler assumes a pod onto its node before binding, so the next cycles
	// see the pod there but not yet its GPUs. The program shares it with the controllers that
	// resume and restore pods, so their placements count here too (and ours there).
	ledger *gpupod.Ledger
	// cache keeps each node's accounting between cycles while the node is unchanged.
	cache *accountings
	// bind creates a Binding; a field so tests can see it.
	bind func(ctx context.Context, binding *v1.Binding) error
}

var (
	_ framework.PreFilterPlugin     = &GPUShare{}
	_ framework.FilterPlugin        = &GPUShare{}
	_ framework.PreScorePlugin      = &GPUShare{}
	_ framework.ScorePlugin         = &GPUShare{}
	_ framework.ReservePlugin       = &GPUShare{}
	_ framework.BindPlugin          = &GPUShare{}
	_ framework.EnqueueExtensions   = &GPUShare{}
	_ framework.PreFilterExtensions = &GPUShare{}
)

// New builds the plugin from its args, with an informer on GPUNodes and a ledger of its own.
// A program that places GPU memory elsewhere too (kybernate-scheduler's controllers) registers
// NewFactory with the ledger it shares instead.
func New(ctx context.Context, obj runtime.Object, h framework.Handle) (framework.Plugin, error) {
	return newPlugin(ctx, obj, h, nil, &connect.Shared{})
}

// NewFactory returns the plugin's factory on the program's ledger, which the program keeps up
// to date from its pod informer (gpupod.Ledger.Watch), and on the kybernate.io informer factory
// the program shares between its plugins and controllers (kybernate-scheduler).
func NewFactory(ledger *gpupod.Ledger, shared *connect.Shared) func(context.Context, runtime.Object, framework.Handle) (framework.Plugin, error) {
	return func(ctx context.Context, obj runtime.Object, h framework.Handle) (framework.Plugin, error) {
		return newPlugin(ctx, obj, h, ledger, shared)
	}
}

// newPlugin builds the plugin on the program's ledger; with nil, on one of its own that it
// keeps up to date itself.
func newPlugin(ctx context.Context, obj runtime.Object, h framework.Handle, ledger *gpupod.Ledger, shared *connect.Shared) (framework.Plugin, error) {
	args, ok := obj.(*config.GPUShareArgs)
	if !ok {
		return nil, fmt.Errorf("want args of type GPUShareArgs, got %T", obj)
	}
	if err := validation.ValidateGPUShareArgs(field.NewPath("args"), args); err != nil {
		return nil, err
	}
	_, factory, err := shared.Get(h.KubeConfig())
	if err != nil {
		return nil, err
	}
	gpuNodes := factory.Kybernate().V1alpha1().GPUNodes()
	pl := NewWithLister(h, args, gpuNodes.Lister())
	// Registered before Start: every GPUNode event invalidates its node's cached accounting.
	if _, err := gpuNodes.Informer().AddEventHandler(pl.GPUNodeHandler()); err != nil {
		return nil, fmt.Errorf("watching GPUNodes for the accounting cache: %w", err)
	}
	if err := connect.StartInformers(ctx, factory); err != nil {
		return nil, err
	}

	if ledger != nil {
		pl.ledger = ledger
	}
	if h.ClientSet() != nil {
		pl.bind = func(ctx context.Context, binding *v1.Binding) error {
			return h.ClientSet().CoreV1().Pods(binding.Namespace).Bind(ctx, binding, metav1.CreateOptions{})
		}
	}
	if f := h.SharedInformerFactory(); f != nil && ledger == nil {
		if err := pl.ledger.Watch(f.Core().V1().Pods().Informer()); err != nil {
			return nil, err
		}
	}
	return pl, nil
}

// NewWithLister builds the plugin on a GPUNode lister the caller keeps in sync, handing every
// change to the handler of GPUNodeHandler as an informer does; New uses it with its own
// informer, tests with a fixed one. args must be valid.
func NewWithLister(h framework.Handle, args *config.GPUShareArgs, gpuNodes listers.GPUNodeLister) *GPUShare {
	return &GPUShare{handle: h, strategy: args.ScoringStrategy, gpuNodes: gpuNodes, ledger: gpupod.NewLedger(), cache: newAccountings()}
}

// Name returns the plugin's name.
func (pl *GPUShare) Name() string { return Name }

// EventsToRegister returns the events that may make a pod this plugin rejected fit, each with a
// hint that tells the queue whether it does.
func (pl *GPUShare) EventsToRegister(_ context.Context) ([]fwk.ClusterEventWithHint, error) {
	return []fwk.ClusterEventWithHint{
		{Event: fwk.ClusterEvent{Resource: gpuNodeResource, ActionType: fwk.Add | fwk.Update}, QueueingHintFn: isSchedulableAfterGPUNodeChange},
		{Event: fwk.ClusterEvent{Resource: gpuCheckpointResource, ActionType: fwk.Add | fwk.Update}, QueueingHintFn: isSchedulableAfterGPUCheckpointChange},
		{Event: fwk.ClusterEvent{Resource: fwk.Pod, ActionType: fwk.Add}, QueueingHintFn: isWaitableAfterPodAdded},
		{Event: fwk.ClusterEvent{Resource: fwk.Pod, ActionType: fwk.Delete}, QueueingHintFn: isSchedulableAfterPodDeleted},
		{Event: fwk.ClusterEvent{Resource: fwk.Pod, ActionType: fwk.Update}, QueueingHintFn: isSchedulableAfterPodUpdated},
	}, nil
}

// PreFilter parses the pod's demand once. Pods that ask for no GPU skip the plugin.
func (pl *GPUShare) PreFilter(ctx context.Context, state fwk.CycleState, pod *v1.Pod, _ []fwk.NodeInfo) (*framework.PreFilterResult, *fwk.Status) {
	d, err := gpupod.PodDemand(pod)
	if err != nil {
		return nil, fwk.NewStatus(fwk.UnschedulableAndUnresolvable, err.Error())
	}
	if d.Count == 0 {
		return nil, fwk.NewStatus(fwk.Skip)
	}
	state.Write(stateKey, &preFilterState{demand: d})
	return nil, nil
}

// PreFilterExtensions returns the plugin itself: the accounting is derived from the NodeInfo the
// framework hands to Filter, so added and removed pods need no extra bookkeeping here.
func (pl *GPUShare) PreFilterExtensions() framework.PreFilterExtensions { return pl }

// AddPod needs no bookkeeping: Filter reads the pods from the NodeInfo it is given.
func (pl *GPUShare) AddPod(context.Context, fwk.CycleState, *v1.Pod, fwk.PodInfo, fwk.NodeInfo) *fwk.Status {
	return nil
}

// RemovePod needs no bookkeeping: Filter reads the pods from the NodeInfo it is given.
func (pl *GPUShare) RemovePod(context.Context, fwk.CycleState, *v1.Pod, fwk.PodInfo, fwk.NodeInfo) *fwk.Status {
	return nil
}

// Filter passes a node when some of its GPUs can hold the pod now.
func (pl *GPUShare) Filter(ctx context.Context, state fwk.CycleState, pod *v1.Pod, nodeInfo fwk.NodeInfo) *fwk.Status {
	s, err := getPreFilterState(state)
	if err != nil {
		return fwk.AsStatus(err)
	}
	c, status := pl.nodeGPUs(nodeInfo)
	if status != nil {
		return status
	}
	v := c.judge(s.demand, pl.strategy)
	if !v.possible {
		return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, neverFits(s.demand))
	}
	if !v.fits {
		return fwk.NewStatus(fwk.Unschedulable, notNow(s.demand))
	}
	return nil
}

// PreScore skips Score for pods that ask for no GPU: PreFilter left them no demand, and the
// framework calls Score on every plugin that does not skip it here.
func (pl *GPUShare) PreScore(_ context.Context, state fwk.CycleState, _ *v1.Pod, _ []fwk.NodeInfo) *fwk.Status {
	if _, err := state.Read(stateKey); err != nil {
		return fwk.NewStatus(fwk.Skip)
	}
	return nil
}

// Score rates a node by how full (MostAllocated) or empty (LeastAllocated) the GPUs the pod
// would get are, from 0 to MaxNodeScore.
func (pl *GPUShare) Score(ctx context.Context, state fwk.CycleState, pod *v1.Pod, nodeInfo fwk.NodeInfo) (int64, *fwk.Status) {
	s, err := getPreFilterState(state)
	if err != nil {
		return 0, fwk.AsStatus(err)
	}
	c, status := pl.nodeGPUs(nodeInfo)
	if status != nil {
		return 0, status
	}
	v := c.judge(s.demand, pl.strategy)
	score, ok := v.score, v.fits
	if !ok {
		return 0, fwk.NewStatus(fwk.Unschedulable, notNow(s.demand))
	}
	return score * framework.MaxNodeScore / 100, nil
}

// ScoreExtensions returns nil: scores are already in [0, MaxNodeScore].
func (pl *GPUShare) ScoreExtensions() framework.ScoreExtensions { return nil }

// Reserve picks the pod's GPUs on the chosen node and records them in the ledger, so that the
// next scheduling cycles and the controllers count them before the pod is bound. The choice is
// made under the ledger's lock, against every placement recorded there: the snapshot may not
// show a pod a controller has just resumed or created. A pod that asks for no GPU has nothing
// to reserve (the framework runs Reserve even for plugins whose PreFilter skipped the pod).
func (pl *GPUShare) Reserve(ctx context.Context, state fwk.CycleState, pod *v1.Pod, nodeName string) *fwk.Status {
	if _, err := state.Read(stateKey); errors.Is(err, fwk.ErrNotFound) {
		return nil
	}
	s, err := getPreFilterState(state)
	if err != nil {
		return fwk.AsStatus(err)
	}
	nodeInfo, err := pl.handle.SnapshotSharedLister().NodeInfos().Get(nodeName)
	if err != nil {
		return fwk.AsStatus(fmt.Errorf("getting node %q from the snapshot: %w", nodeName, err))
	}
	pl.ledger.Lock()
	defer pl.ledger.Unlock()
	c, status := pl.nodeGPUs(nodeInfo)
	if status != nil {
		return status
	}
	chosen := c.accounting.Choose(s.demand, pl.strategy)
	if chosen == nil {
		return fwk.NewStatus(fwk.Unschedulable, notNow(s.demand))
	}
	pl.ledger.Reserve(gpupod.OwnerScheduler, placed(pod, nodeName, chosen), 0)
	klog.FromContext(ctx).V(4).Info("Reserved GPUs", "pod", klog.KObj(pod), "node", nodeName, "gpus", chosen)
	return nil
}

// Unreserve forgets the pod's GPUs.
func (pl *GPUShare) Unreserve(ctx context.Context, _ fwk.CycleState, pod *v1.Pod, _ string) {
	pl.ledger.Release(pod.UID)
}

// placed is the pod as Bind will place it: on the node, with its GPUs.
func placed(pod *v1.Pod, node string, gpus []string) *v1.Pod {
	p := pod.DeepCopy()
	p.Spec.NodeName = node
	if p.Annotations == nil {
		p.Annotations = map[string]string{}
	}
	p.Annotations[kv1.AnnotationGPUs] = gpupod.FormatGPUs(gpus)
	return p
}

// Bind binds the pod and writes its GPUs in one API call: the API server copies a Binding's
// annotations onto the pod, so kybernate.io/gpus arrives with spec.nodeName and no pod is
// ever bound without its GPUs. Pods without a reservation are left to DefaultBinder.
func (pl *GPUShare) Bind(ctx context.Context, _ fwk.CycleState, pod *v1.Pod, nodeName string) *fwk.Status {
	node, gpus, ok := pl.ledger.Placed(pod.UID)
	if !ok || node != nodeName {
		return fwk.NewStatus(fwk.Skip)
	}
	binding := &v1.Binding{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:   pod.Namespace,
			Name:        pod.Name,
			UID:         pod.UID,
			Annotations: map[string]string{kv1.AnnotationGPUs: gpupod.FormatGPUs(gpus)},
		},
		Target: v1.ObjectReference{Kind: "Node", Name: nodeName},
	}
	if err := pl.bind(ctx, binding); err != nil {
		return fwk.AsStatus(fmt.Errorf("binding pod %s to node %s with GPUs %v: %w", klog.KObj(pod), nodeName, gpus, err))
	}
	klog.FromContext(ctx).V(2).Info("Bound pod to GPUs", "pod", klog.KObj(pod), "node", nodeName, "gpus", gpus)
	return nil
}

// nodeGPUs accounts the GPUs of a node; a node without a GPUNode can never take a GPU pod. The
// accounting is kept for later cycles and shared between goroutines: callers only read it.
func (pl *GPUShare) nodeGPUs(nodeInfo fwk.NodeInfo) (*cachedAccounting, *fwk.Status) {
	node := nodeInfo.Node()
	if node == nil {
		return nil, fwk.NewStatus(fwk.Error, "node not found")
	}
	generation := nodeInfo.GetGeneration()
	c, events := pl.cache.get(node.Name)
	if c != nil && c.generation == generation && pl.ledger.Current(node.Name, c.ledger) {
		return c, nil
	}
	gn, err := pl.gpuNodes.Get(node.Name)
	if err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fwk.NewStatus(fwk.UnschedulableAndUnresolvable, "node has no GPUNode: no kybernate agent reports GPUs on it")
		}
		return nil, fwk.AsStatus(err)
	}
	podInfos := nodeInfo.GetPods()
	pods := make([]*v1.Pod, len(podInfos))
	for i, p := range podInfos {
		pods[i] = p.GetPod()
	}
	corrected, version := pl.ledger.NodePods(node.Name, pods)
	c = &cachedAccounting{events: events, generation: generation, ledger: version, accounting: gpupod.NewAccounting(gn, corrected)}
	pl.cache.put(node.Name, c)
	return c, nil
}

func neverFits(d gpupod.Demand) string {
	return "node has too few GPUs " + describe(d)
}

func notNow(d gpupod.Demand) string {
	return "node has too few free GPUs " + describe(d)
}

func describe(d gpupod.Demand) string {
	var b strings.Builder
	fmt.Fprintf(&b, "(pod needs %d", d.Count)
	if d.Model != "" {
		fmt.Fprintf(&b, " %s", d.Model)
	}
	if d.Whole() {
		b.WriteString(" whole GPUs)")
	} else {
		fmt.Fprintf(&b, " with %s each)", formatBytes(d.Bytes))
	}
	return b.String()
}

func formatBytes(n int64) string {
	const gi = 1 << 30
	if n%gi == 0 {
		return fmt.Sprintf("%dGi", n/gi)
	}
	return fmt.Sprintf("%d bytes", n)
}
