package gpushare

import (
	"fmt"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// Demand is what a pod asks of a node's GPUs.
type Demand struct {
	// Count is the number of distinct GPUs.
	Count int
	// Bytes is the VRAM needed on each GPU; 0 means each GPU whole.
	Bytes int64
	// Model, when set, is the only GPU model the pod may get.
	Model string
}

// Whole reports whether the pod takes its GPUs whole.
func (d Demand) Whole() bool { return d.Bytes == 0 }

// On is the VRAM the demand takes on a GPU of the given size.
func (d Demand) On(total int64) int64 {
	if d.Whole() || d.Bytes > total {
		return total
	}
	return d.Bytes
}

// WithModel restricts the demand to GPUs of model, unless it names a model already or model is
// empty.
func (d Demand) WithModel(model string) Demand {
	if d.Model == "" {
		d.Model = model
	}
	return d
}

// PodDemand reads a pod's GPU demand: the kybernate.io/gpu it requests (as the kubelet counts
// it: the larger of the sum over containers and any init container) and its annotations. A pod
// that asks for no GPU has count 0.
func PodDemand(pod *v1.Pod) (Demand, error) {
	var sum, initMax int64
	for i := range pod.Spec.Containers {
		sum += gpuLimit(&pod.Spec.Containers[i])
	}
	for i := range pod.Spec.InitContainers {
		c := &pod.Spec.InitContainers[i]
		if c.RestartPolicy != nil && *c.RestartPolicy == v1.ContainerRestartPolicyAlways {
			sum += gpuLimit(c) // sidecars run beside the app containers
			continue
		}
		initMax = max(initMax, gpuLimit(c))
	}
	count := max(sum, initMax)
	if count == 0 {
		return Demand{}, nil
	}
	d := Demand{Count: int(count)}

	if s, ok := pod.Annotations[kv1.AnnotationGPUMemory]; ok {
		q, err := resource.ParseQuantity(strings.TrimSpace(s))
		if err != nil {
			return Demand{}, fmt.Errorf("annotation %s=%q is not a quantity such as \"40Gi\": %w", kv1.AnnotationGPUMemory, s, err)
		}
		if q.Sign() <= 0 {
			return Demand{}, fmt.Errorf("annotation %s=%q must be positive", kv1.AnnotationGPUMemory, s)
		}
		d.Bytes = q.Value()
	}
	if s, ok := pod.Annotations[kv1.AnnotationGPUModel]; ok {
		d.Model = strings.TrimSpace(s)
		if d.Model == "" {
			return Demand{}, fmt.Errorf("annotation %s is empty: remove it or name a GPU model", kv1.AnnotationGPUModel)
		}
	}
	return d, nil
}

func gpuLimit(c *v1.Container) int64 {
	if q, ok := c.Resources.Limits[kv1.ResourceGPU]; ok {
		return q.Value()
	}
	if q, ok := c.Resources.Requests[kv1.ResourceGPU]; ok {
		return q.Value()
	}
	return 0
}

// AssignedGPUs reads the kybernate.io/gpus annotation written at binding.
func AssignedGPUs(pod *v1.Pod) []string {
	s := pod.Annotations[kv1.AnnotationGPUs]
	if s == "" {
		return nil
	}
	parts := strings.Split(s, ",")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	return parts
}

// Resident reports whether a pod's VRAM is on its GPUs: everything but Suspended and
// Checkpointed, and Checkpointing of a pod whose memory was parked before (its
// kybernate.io/GPUResident condition is False: a suspended pod checkpointed for a migration).
// A pod still Suspending holds its memory until the agent has moved it.
func Resident(pod *v1.Pod) bool {
	switch kv1.PodGPUState(pod.Annotations[kv1.AnnotationState]) {
	case kv1.PodSuspended, kv1.PodCheckpointed:
		return false
	case kv1.PodCheckpointing:
		for _, c := range pod.Status.Conditions {
			if c.Type == kv1.ConditionGPUResident {
				return c.Status != v1.ConditionFalse
			}
		}
	}
	return true
}

// NeverSuspended reports whether a pod opts out of suspension (kybernate.io/preemption: Never):
// it keeps its GPUs until it ends, for preemptions and time-slice turns alike.
func NeverSuspended(pod *v1.Pod) bool {
	return strings.EqualFold(pod.Annotations[kv1.AnnotationPreemption], string(kv1.PreemptionNever))
}
