// Package util holds object builders for tests: MakePod and MakeNode return
// wrappers whose methods set one thing each and chain, in the style of the
// kube-scheduler's testing wrappers, so a test states only what matters to it:
//
//	pod := util.MakePod().Name("p").Namespace(ns).Priority(10).GPU(1).Obj()
//
// The objects are valid for a real API server: a pod has one container with an
// image, a node carries the annotation kwok needs to run its pods.
package util

import (
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

const (
	// ResourceGPU is the extended resource a node agent advertises.
	ResourceGPU          v1.ResourceName = kv1.ResourceGPU
	AnnotationGPUMemory                  = kv1.AnnotationGPUMemory
	AnnotationPreemption                 = kv1.AnnotationPreemption
	AnnotationMinRuntime                 = kv1.AnnotationMinRuntime
	// AnnotationCompleteAfter makes kwok complete a running pod after the given
	// duration (stage manifests/kwok/stages/pod-complete.yaml).
	AnnotationCompleteAfter = "kwok.kybernate.io/complete-after"

	// SchedulerName is the scheduler profile of Kybernate's GPU pods.
	SchedulerName = "kybernate-scheduler"
	// RuntimeClassName is the runtime class of Kybernate's containerd shim.
	RuntimeClassName = "kybernate"

	// DefaultImage is the image of a pod's container unless Image says otherwise;
	// kwok never pulls it.
	DefaultImage = "registry.k8s.io/pause:3.10"
)

// PodWrapper builds a v1.Pod.
type PodWrapper struct{ v1.Pod }

// MakePod returns a pod with one container named "main" running DefaultImage.
func MakePod() *PodWrapper {
	return &PodWrapper{v1.Pod{
		Spec: v1.PodSpec{
			Containers: []v1.Container{{Name: "main", Image: DefaultImage}},
		},
	}}
}

// Obj returns a copy of the pod built so far, so a wrapper can be reused.
func (p *PodWrapper) Obj() *v1.Pod {
	return p.Pod.DeepCopy()
}

// Name sets the pod's name.
func (p *PodWrapper) Name(name string) *PodWrapper {
	p.SetName(name)
	return p
}

// GenerateName lets the API server name the pod with this prefix.
func (p *PodWrapper) GenerateName(prefix string) *PodWrapper {
	p.SetGenerateName(prefix)
	return p
}

// Namespace sets the pod's namespace.
func (p *PodWrapper) Namespace(ns string) *PodWrapper {
	p.SetNamespace(ns)
	return p
}

// UID sets the pod's UID, for tests that do not go through an API server.
func (p *PodWrapper) UID(uid string) *PodWrapper {
	p.SetUID(types.UID(uid))
	return p
}

// Label sets one label.
func (p *PodWrapper) Label(key, value string) *PodWrapper {
	if p.Labels == nil {
		p.Labels = map[string]string{}
	}
	p.Labels[key] = value
	return p
}

// Annotation sets one annotation.
func (p *PodWrapper) Annotation(key, value string) *PodWrapper {
	if p.Annotations == nil {
		p.Annotations = map[string]string{}
	}
	p.Annotations[key] = value
	return p
}

// Priority sets spec.priority. On a real API server the Priority admission plugin
// rejects a pod with a priority but no matching class: use PriorityClassName there.
func (p *PodWrapper) Priority(priority int32) *PodWrapper {
	p.Spec.Priority = &priority
	return p
}

// PriorityClassName sets spec.priorityClassName.
func (p *PodWrapper) PriorityClassName(name string) *PodWrapper {
	p.Spec.PriorityClassName = name
	return p
}

// SchedulerName sets spec.schedulerName.
func (p *PodWrapper) SchedulerName(name string) *PodWrapper {
	p.Spec.SchedulerName = name
	return p
}

// RuntimeClassName sets spec.runtimeClassName.
func (p *PodWrapper) RuntimeClassName(name string) *PodWrapper {
	p.Spec.RuntimeClassName = &name
	return p
}

// Kybernate makes it a Kybernate GPU pod: our scheduler profile and runtime class.
func (p *PodWrapper) Kybernate() *PodWrapper {
	return p.SchedulerName(SchedulerName).RuntimeClassName(RuntimeClassName)
}

// Node binds the pod to a node directly (spec.nodeName), bypassing any scheduler.
func (p *PodWrapper) Node(name string) *PodWrapper {
	p.Spec.NodeName = name
	return p
}

// NodeSelector sets one key of spec.nodeSelector.
func (p *PodWrapper) NodeSelector(key, value string) *PodWrapper {
	if p.Spec.NodeSelector == nil {
		p.Spec.NodeSelector = map[string]string{}
	}
	p.Spec.NodeSelector[key] = value
	return p
}

// Toleration tolerates every taint with this key.
func (p *PodWrapper) Toleration(key string) *PodWrapper {
	p.Spec.Tolerations = append(p.Spec.Tolerations, v1.Toleration{Key: key, Operator: v1.TolerationOpExists})
	return p
}

// Image sets the image of the first container.
func (p *PodWrapper) Image(image string) *PodWrapper {
	p.Spec.Containers[0].Image = image
	return p
}

// Container adds a container running DefaultImage.
func (p *PodWrapper) Container(name string) *PodWrapper {
	p.Spec.Containers = append(p.Spec.Containers, v1.Container{Name: name, Image: DefaultImage})
	return p
}

// Req sets resource requests of the first container, as quantities ("500m", "1Gi").
func (p *PodWrapper) Req(requests map[v1.ResourceName]string) *PodWrapper {
	c := &p.Spec.Containers[0]
	c.Resources.Requests = setQuantities(c.Resources.Requests, requests)
	return p
}

// Lim sets resource limits of the first container.
func (p *PodWrapper) Lim(limits map[v1.ResourceName]string) *PodWrapper {
	c := &p.Spec.Containers[0]
	c.Resources.Limits = setQuantities(c.Resources.Limits, limits)
	return p
}

// GPU asks for n kybernate.io/gpu in the first container. Like any extended
// resource it is set as a limit; the API server copies it to the requests.
func (p *PodWrapper) GPU(n int64) *PodWrapper {
	c := &p.Spec.Containers[0]
	if c.Resources.Limits == nil {
		c.Resources.Limits = v1.ResourceList{}
	}
	c.Resources.Limits[ResourceGPU] = *resource.NewQuantity(n, resource.DecimalSI)
	return p
}

// GPUMemory sets the VRAM the pod needs on each GPU ("40Gi").
func (p *PodWrapper) GPUMemory(quantity string) *PodWrapper {
	resource.MustParse(quantity) // a typo in a test fails here, not in the scheduler
	return p.Annotation(AnnotationGPUMemory, quantity)
}

// Preemption sets kybernate.io/preemption (Suspend or Never).
func (p *PodWrapper) Preemption(policy string) *PodWrapper {
	return p.Annotation(AnnotationPreemption, policy)
}

// MinRuntime sets kybernate.io/min-runtime.
func (p *PodWrapper) MinRuntime(d time.Duration) *PodWrapper {
	return p.Annotation(AnnotationMinRuntime, d.String())
}

// CompleteAfter has kwok complete the pod (phase Succeeded) once it has been
// running for d.
func (p *PodWrapper) CompleteAfter(d time.Duration) *PodWrapper {
	return p.Annotation(AnnotationCompleteAfter, d.String())
}

// ControlledBy adds a controller owner reference ("batch/v1", "Job", name, uid).
func (p *PodWrapper) ControlledBy(apiVersion, kind, name string, uid types.UID) *PodWrapper {
	controller := true
	p.OwnerReferences = append(p.OwnerReferences, metav1.OwnerReference{
		APIVersion: apiVersion, Kind: kind, Name: name, UID: uid, Controller: &controller,
	})
	return p
}

// Phase sets status.phase, for tests that do not go through an API server.
func (p *PodWrapper) Phase(phase v1.PodPhase) *PodWrapper {
	p.Status.Phase = phase
	return p
}

func setQuantities(list v1.ResourceList, values map[v1.ResourceName]string) v1.ResourceList {
	if list == nil {
		list = v1.ResourceList{}
	}
	for name, value := range values {
		list[name] = resource.MustParse(value)
	}
	return list
}
