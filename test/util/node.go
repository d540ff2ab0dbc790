package util

import (
	"strconv"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

const (
	LabelGPUModel = kv1.LabelGPUModel
	LabelGPUCount = kv1.LabelGPUCount
	// AnnotationKwokNode marks a node kwok runs (kwok
	// --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake).
	AnnotationKwokNode = "kwok.x-k8s.io/node"
	// LabelNodeType is "kwok" on the fake nodes of manifests/kwok/node.yaml.
	LabelNodeType = "type"

	// DefaultGPUModel is the GPU model of MakeNode.
	DefaultGPUModel = "NVIDIA-H100-80GB-HBM3"
)

// NodeWrapper builds a v1.Node.
type NodeWrapper struct{ v1.Node }

// MakeNode returns a kwok GPU node like those of manifests/kwok/node.yaml: 8
// DefaultGPUModel GPUs (as labels: advertising kybernate.io/gpu is the node
// agent's job, see GPU), 224 CPUs, 2 TiB memory, 110 pods.
func MakeNode() *NodeWrapper {
	n := &NodeWrapper{}
	n.Annotations = map[string]string{AnnotationKwokNode: "fake"}
	n.Labels = map[string]string{LabelNodeType: "kwok"}
	return n.GPUModel(DefaultGPUModel).GPUCount(8).Capacity(map[v1.ResourceName]string{
		v1.ResourceCPU:    "224",
		v1.ResourceMemory: "2Ti",
		v1.ResourcePods:   "110",
	})
}

// Obj returns a copy of the node built so far, so a wrapper can be reused.
func (n *NodeWrapper) Obj() *v1.Node {
	return n.Node.DeepCopy()
}

// Name sets the node's name and its kubernetes.io/hostname label.
func (n *NodeWrapper) Name(name string) *NodeWrapper {
	n.SetName(name)
	return n.Label(v1.LabelHostname, name)
}

// Label sets one label.
func (n *NodeWrapper) Label(key, value string) *NodeWrapper {
	if n.Labels == nil {
		n.Labels = map[string]string{}
	}
	n.Labels[key] = value
	return n
}

// Annotation sets one annotation.
func (n *NodeWrapper) Annotation(key, value string) *NodeWrapper {
	if n.Annotations == nil {
		n.Annotations = map[string]string{}
	}
	n.Annotations[key] = value
	return n
}

// GPUModel sets the kybernate.io/gpu-model label.
func (n *NodeWrapper) GPUModel(model string) *NodeWrapper {
	return n.Label(LabelGPUModel, model)
}

// GPUCount sets the kybernate.io/gpu-count label.
func (n *NodeWrapper) GPUCount(count int) *NodeWrapper {
	return n.Label(LabelGPUCount, strconv.Itoa(count))
}

// Capacity sets capacity and allocatable of the given resources alike.
func (n *NodeWrapper) Capacity(resources map[v1.ResourceName]string) *NodeWrapper {
	if n.Status.Capacity == nil {
		n.Status.Capacity = v1.ResourceList{}
	}
	if n.Status.Allocatable == nil {
		n.Status.Allocatable = v1.ResourceList{}
	}
	for name, value := range resources {
		q := resource.MustParse(value)
		n.Status.Capacity[name] = q
		n.Status.Allocatable[name] = q
	}
	return n
}

// GPU advertises n kybernate.io/gpu, as a node agent does.
func (n *NodeWrapper) GPU(count int64) *NodeWrapper {
	return n.Capacity(map[v1.ResourceName]string{ResourceGPU: strconv.FormatInt(count, 10)})
}

// Taint adds a taint.
func (n *NodeWrapper) Taint(key, value string, effect v1.TaintEffect) *NodeWrapper {
	n.Spec.Taints = append(n.Spec.Taints, v1.Taint{Key: key, Value: value, Effect: effect})
	return n
}

// Unschedulable cordons the node.
func (n *NodeWrapper) Unschedulable() *NodeWrapper {
	n.Spec.Unschedulable = true
	return n
}

// Ready sets the Ready condition, for tests that do not go through kwok.
func (n *NodeWrapper) Ready() *NodeWrapper {
	n.Status.Conditions = append(n.Status.Conditions, v1.NodeCondition{Type: v1.NodeReady, Status: v1.ConditionTrue})
	return n
}
