package gpupod

import (
	"fmt"
	"math"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	resourcehelper "k8s.io/component-helpers/resource"

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
	// Headroom is free VRAM that must be left on each GPU beyond Bytes: the agent's restore
	// margin, for a pod whose memory comes back from a checkpoint (Restoring). Zero for a pod
	// that starts afresh.
	Headroom int64
}

// Restoring is the demand of a pod whose GPU memory comes back from a checkpoint onto the
// node's GPUs: the agent restores only onto GPUs with its restore margin free beyond the
// memory (GPUNode status restoreMarginBytes).
func (d Demand) Restoring(gn *kv1.GPUNode) Demand {
	d.Headroom = max(gn.Status.RestoreMarginBytes, 0)
	return d
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

// AtLeast raises the VRAM per GPU to bytes when that is more: a suspended pod needs its
// recorded footprint (GPUCheckpoint status.footprint) free to be restored, whatever it declared.
// A demand for whole GPUs stays whole.
func (d Demand) AtLeast(bytes int64) Demand {
	if !d.Whole() && bytes > d.Bytes {
		d.Bytes = bytes
	}
	return d
}

// WithoutGPUs reports whether the pod asks for no GPU and was placed on none: a pod the agent
// suspends by freezing its containers.
func WithoutGPUs(pod *v1.Pod) bool {
	d, err := PodDemand(pod)
	return err == nil && d.Count == 0 && len(AssignedGPUs(pod)) == 0
}

// PodDemand reads a pod's GPU demand: the kybernate.io/gpu it requests, counted as the
// scheduler and the kubelet count requests (k8s.io/component-helpers' PodRequests: containers
// and sidecars summed, init containers at their peak), and its kybernate.io/gpu-memory and
// kybernate.io/gpu-model annotations. A pod that asks for no GPU has count 0.
func PodDemand(pod *v1.Pod) (Demand, error) {
	count, err := GPURequest(pod)
	if count == 0 || err != nil {
		return Demand{}, err
	}
	d := Demand{Count: int(count)}
	if d.Bytes, err = GPUMemory(pod); err != nil {
		return Demand{}, err
	}
	if d.Model, err = GPUModel(pod); err != nil {
		return Demand{}, err
	}
	return d, nil
}

// MaxGPUsPerPod bounds the kybernate.io/gpu a pod may request: more GPUs than any node has
// is refused as an error instead of wrapping past int64.
const MaxGPUsPerPod = 1024

// GPURequest is the number of kybernate.io/gpu the pod requests (a fraction rounds up), or an
// error for a request checkGPUs refuses or one past MaxGPUsPerPod.
func GPURequest(pod *v1.Pod) (int64, error) {
	if err := checkGPUs(pod); err != nil {
		return 0, err
	}
	var q resource.Quantity
	if len(pod.Spec.InitContainers) == 0 {
		// Without init containers PodRequests is the sum over the containers (request, else
		// limit, as the API server defaults an extended resource's request): summed here
		// without its allocations, since the scheduler asks this of every pod on every node
		// it filters.
		for i := range pod.Spec.Containers {
			r := &pod.Spec.Containers[i].Resources
			c, ok := r.Requests[kv1.ResourceGPU]
			if !ok {
				c = r.Limits[kv1.ResourceGPU]
			}
			q.Add(c)
		}
	} else {
		reqs := resourcehelper.PodRequests(withDefaultedRequests(pod), resourcehelper.PodResourcesOptions{
			ExcludeOverhead:       true,
			SkipPodLevelResources: true, // pod-level resources cannot name extended resources
		})
		q = reqs[kv1.ResourceGPU]
	}
	if q.Cmp(*resource.NewQuantity(MaxGPUsPerPod, resource.DecimalSI)) > 0 {
		return 0, &FieldError{Field: string(kv1.ResourceGPU), Value: q.String(), Resource: true,
			Reason: fmt.Sprintf("is more than %d GPUs", MaxGPUsPerPod)}
	}
	return q.Value(), nil
}

// checkGPUs refuses a kybernate.io/gpu in any container that is negative, more than
// MaxGPUsPerPod or less than a thousandth of a GPU (the API server refuses each of them, but a
// pod built by a client library or a test may carry one). It looks at each value's magnitude
// only, so that no value makes the exact arithmetic that follows slow: comparing "1e9808000"
// with 1024 exactly takes seconds.
func checkGPUs(pod *v1.Pod) error {
	for _, cs := range [][]v1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range cs {
			r := &cs[i].Resources
			if err := checkGPUQuantity(r.Requests[kv1.ResourceGPU]); err != nil {
				return err
			}
			if err := checkGPUQuantity(r.Limits[kv1.ResourceGPU]); err != nil {
				return err
			}
		}
	}
	return nil
}

func checkGPUQuantity(q resource.Quantity) error {
	reason := ""
	switch f := q.AsApproximateFloat64(); {
	case q.Sign() == 0:
		return nil
	case q.Sign() < 0:
		reason = "is negative"
	case math.IsNaN(f) || f > MaxGPUsPerPod:
		reason = fmt.Sprintf("is more than %d GPUs", MaxGPUsPerPod)
	case f < 1e-3:
		reason = "is less than a thousandth of a GPU"
	default:
		return nil
	}
	return &FieldError{Field: string(kv1.ResourceGPU), Value: q.String(), Resource: true, Reason: reason}
}

// withDefaultedRequests returns the pod with the GPU requests the API server defaults from the
// limits (an extended resource's request equals its limit), copying only when one is missing,
// so that pods that did not pass the API server (tests, simulations) count the same.
func withDefaultedRequests(pod *v1.Pod) *v1.Pod {
	missing := func(cs []v1.Container) bool {
		for i := range cs {
			_, lim := cs[i].Resources.Limits[kv1.ResourceGPU]
			_, req := cs[i].Resources.Requests[kv1.ResourceGPU]
			if lim && !req {
				return true
			}
		}
		return false
	}
	if !missing(pod.Spec.Containers) && !missing(pod.Spec.InitContainers) {
		return pod
	}
	p := &v1.Pod{ObjectMeta: pod.ObjectMeta, Spec: *pod.Spec.DeepCopy()}
	for _, cs := range [][]v1.Container{p.Spec.Containers, p.Spec.InitContainers} {
		for i := range cs {
			lim, ok := cs[i].Resources.Limits[kv1.ResourceGPU]
			if _, req := cs[i].Resources.Requests[kv1.ResourceGPU]; ok && !req {
				if cs[i].Resources.Requests == nil {
					cs[i].Resources.Requests = v1.ResourceList{}
				}
				cs[i].Resources.Requests[kv1.ResourceGPU] = lim
			}
		}
	}
	return p
}

// GPUMemory decodes kybernate.io/gpu-memory: the VRAM the pod needs on each GPU, 0 without the
// annotation (whole GPUs).
func GPUMemory(pod *v1.Pod) (int64, error) {
	s, ok := pod.Annotations[kv1.AnnotationGPUMemory]
	if !ok {
		return 0, nil
	}
	q, err := ParseQuantity(s)
	if err != nil {
		return 0, &FieldError{Field: kv1.AnnotationGPUMemory, Value: s, Reason: `is not a quantity such as "40Gi"`, Err: err}
	}
	if q.Sign() <= 0 {
		return 0, fieldError(kv1.AnnotationGPUMemory, s, "must be positive")
	}
	// Value() of a quantity past int64 (e.g. "10E") is not the quantity: refuse it.
	b, exact := q.AsInt64()
	if !exact {
		if b = q.Value(); b <= 0 || q.Cmp(*resource.NewQuantity(b, resource.BinarySI)) > 0 {
			return 0, fieldError(kv1.AnnotationGPUMemory, s, "is too large")
		}
	}
	return b, nil
}

// GPUModel decodes kybernate.io/gpu-model: the only GPU model the pod may get, "" without the
// annotation.
func GPUModel(pod *v1.Pod) (string, error) {
	s, ok := pod.Annotations[kv1.AnnotationGPUModel]
	if !ok {
		return "", nil
	}
	if m := strings.TrimSpace(s); m != "" {
		return m, nil
	}
	return "", fieldError(kv1.AnnotationGPUModel, s, "is empty: remove it or name a GPU model")
}
