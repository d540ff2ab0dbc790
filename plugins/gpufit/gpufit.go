// Package gpufit is kube-scheduler's NodeResourcesFit for kybernate-scheduler's profile: the
// in-tree plugin, with the pod's kybernate.io/gpu request left to GPUShare, which accounts
// each GPU's slots and memory.
//
// The in-tree Filter checks every extended resource a pod requests on every node it filters,
// and first asks whether the name is an extended resource name, a regular-expression
// validation, for each node of each cycle. With 1000 nodes that check alone took about a fifth
// of kybernate-scheduler's CPU time under make bench-scheduler, for a resource whose node
// capacity (GPUs x slots, which the agent advertises) GPUShare already enforces GPU by GPU.
// The profile runs this plugin in NodeResourcesFit's place; CPU, memory, pods, ephemeral
// storage and other extended resources are checked and scored as before.
package gpufit

import (
	"context"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/apis/config"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	plfeature "k8s.io/kubernetes/pkg/scheduler/framework/plugins/feature"
	"k8s.io/kubernetes/pkg/scheduler/framework/plugins/noderesources"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// Name is the plugin's name in a KubeSchedulerConfiguration.
const Name = "NodeResourcesFitGPU"

// Fit is the in-tree NodeResourcesFit; only PreFilter sees the pod without kybernate.io/gpu.
type Fit struct {
	*noderesources.Fit
}

var (
	_ framework.PreFilterPlugin   = &Fit{}
	_ framework.FilterPlugin      = &Fit{}
	_ framework.EnqueueExtensions = &Fit{}
	_ framework.PreScorePlugin    = &Fit{}
	_ framework.ScorePlugin       = &Fit{}
)

// New builds the plugin with NodeResourcesFit's args (Args): without any, its defaults
// (LeastAllocated on CPU and memory, weight 1 each, nothing ignored).
func New(ctx context.Context, obj runtime.Object, h framework.Handle) (framework.Plugin, error) {
	args, err := Args(obj)
	if err != nil {
		return nil, err
	}
	// kube-scheduler's feature gates, as its in-tree registry reads them.
	fts := plfeature.NewSchedulerFeaturesFromGates(utilfeature.DefaultFeatureGate)
	return NewWithArgs(ctx, args, h, fts)
}

// NewWithArgs builds the plugin on NodeResourcesFit with the given args and features.
func NewWithArgs(ctx context.Context, args *config.NodeResourcesFitArgs, h framework.Handle, fts plfeature.Features) (*Fit, error) {
	p, err := noderesources.NewFit(ctx, args, h, fts)
	if err != nil {
		return nil, err
	}
	return &Fit{Fit: p.(*noderesources.Fit)}, nil
}

// Name returns the plugin's name.
func (f *Fit) Name() string { return Name }

// PreFilter computes the pod's requests as NodeResourcesFit does, without kybernate.io/gpu:
// Filter then checks everything else.
func (f *Fit) PreFilter(ctx context.Context, state fwk.CycleState, pod *v1.Pod, nodes []fwk.NodeInfo) (*framework.PreFilterResult, *fwk.Status) {
	return f.Fit.PreFilter(ctx, state, withoutGPU(pod), nodes)
}

// withoutGPU returns the pod itself when it asks for no kybernate.io/gpu, else a copy without it.
func withoutGPU(pod *v1.Pod) *v1.Pod {
	if !asksGPU(pod.Spec.Containers) && !asksGPU(pod.Spec.InitContainers) && !podLevelGPU(pod) {
		return pod
	}
	p := pod.DeepCopy()
	strip := func(r *v1.ResourceRequirements) {
		delete(r.Requests, kv1.ResourceGPU)
		delete(r.Limits, kv1.ResourceGPU)
	}
	for i := range p.Spec.Containers {
		strip(&p.Spec.Containers[i].Resources)
	}
	for i := range p.Spec.InitContainers {
		strip(&p.Spec.InitContainers[i].Resources)
	}
	if p.Spec.Resources != nil {
		strip(p.Spec.Resources)
	}
	return p
}

func asksGPU(cs []v1.Container) bool {
	for i := range cs {
		if has(cs[i].Resources) {
			return true
		}
	}
	return false
}

func podLevelGPU(pod *v1.Pod) bool { return pod.Spec.Resources != nil && has(*pod.Spec.Resources) }

func has(r v1.ResourceRequirements) bool {
	_, req := r.Requests[kv1.ResourceGPU]
	_, lim := r.Limits[kv1.ResourceGPU]
	return req || lim
}
